//! ContentAddressableStorage over gRPC: FindMissingBlobs, BatchUpdateBlobs, BatchReadBlobs, GetTree,
//! and every way a client can get a request wrong.

mod common;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use common::*;
use prost::Message;
use reapi::batch_update_blobs_request::Request as UpdateRequest;
use tonic::Code;

fn update(instance: &str, requests: Vec<UpdateRequest>) -> reapi::BatchUpdateBlobsRequest {
    reapi::BatchUpdateBlobsRequest { instance_name: instance.into(), requests, digest_function: 0 }
}

fn read(instance: &str, digests: Vec<reapi::Digest>) -> reapi::BatchReadBlobsRequest {
    reapi::BatchReadBlobsRequest { instance_name: instance.into(), digests, acceptable_compressors: vec![], digest_function: 0 }
}

#[tokio::test]
async fn upload_find_and_read_back() {
    let server = TestServer::start().await;
    let mut cas = server.cas().await;
    let small = content(1, 100);
    let medium = content(2, 40_000); // past the memory tier's size class: disk only
    let absent = content(3, 10);
    assert_eq!(missing(&mut cas, "", vec![sha256(&small), sha256(&medium)]).await.len(), 2);
    upload(&mut cas, "", &[&small, &medium]).await;
    let missing_now = missing(&mut cas, "", vec![sha256(&small), sha256(&medium), sha256(&absent), sha256(b"")]).await;
    assert_eq!(missing_now, vec![sha256(&absent)], "only the absent blob is missing; the empty blob always exists");

    let resp = cas.batch_read_blobs(read("", vec![sha256(&small), sha256(&absent), sha256(&medium), sha256(b"")])).await.unwrap().into_inner();
    let codes: Vec<i32> = resp.responses.iter().map(|r| r.status.as_ref().unwrap().code).collect();
    assert_eq!(codes, vec![0, Code::NotFound as i32, 0, 0]);
    assert_eq!(resp.responses[0].data, small);
    assert_eq!(resp.responses[2].data, medium);
    assert!(resp.responses[3].data.is_empty());

    // Blobs from 64 KiB on leave the server as stored, between the pieces of the rest of the answer.
    let large = content(4, 300_000);
    upload(&mut cas, "", &[&large]).await;
    let asked = vec![sha256(&small), sha256(&large), sha256(&absent), sha256(&large), sha256(&medium)];
    let resp = cas.batch_read_blobs(read("", asked.clone())).await.unwrap().into_inner();
    let digests: Vec<reapi::Digest> = resp.responses.iter().map(|r| r.digest.clone().unwrap()).collect();
    assert_eq!(digests, asked, "one answer per digest asked, in order");
    let datas: Vec<&[u8]> = resp.responses.iter().map(|r| r.data.as_slice()).collect();
    assert_eq!(datas, vec![&small[..], &large[..], &[][..], &large[..], &medium[..]]);

    // Storage is shared by instances on the same stack, so another instance sees the blob.
    assert!(missing(&mut cas, "team/a", vec![sha256(&small)]).await.is_empty());
}

#[tokio::test]
async fn blake3_blobs_are_a_separate_keyspace() {
    let server = TestServer::start().await;
    let mut cas = server.cas().await;
    let data = content(4, 500);
    let req = reapi::BatchUpdateBlobsRequest {
        instance_name: String::new(),
        requests: vec![UpdateRequest { digest: Some(blake3(&data)), data: data.clone(), compressor: 0 }],
        digest_function: 9,
    };
    let resp = cas.batch_update_blobs(req).await.unwrap().into_inner();
    assert_eq!(resp.responses[0].status.as_ref().unwrap().code, 0);
    let found = cas
        .find_missing_blobs(reapi::FindMissingBlobsRequest { instance_name: String::new(), blob_digests: vec![blake3(&data)], digest_function: 9 })
        .await
        .unwrap()
        .into_inner();
    assert!(found.missing_blob_digests.is_empty());
    // The same bytes under SHA-256 were never uploaded.
    assert_eq!(missing(&mut cas, "", vec![sha256(&data)]).await.len(), 1);
    // A SHA-256 request with the BLAKE3 hash does not find it either.
    assert_eq!(missing(&mut cas, "", vec![blake3(&data)]).await.len(), 1);
}

#[tokio::test]
async fn bad_blobs_in_a_batch_get_their_own_status_and_are_not_stored() {
    let server = TestServer::start().await;
    let mut cas = server.cas().await;
    let good = content(5, 64);
    let wrong_hash = content(6, 64);
    let wrong_size = content(7, 64);
    let mut short = sha256(&wrong_size);
    short.size_bytes = 63;
    let requests = vec![
        UpdateRequest { digest: Some(sha256(&good)), data: good.clone(), compressor: 0 },
        UpdateRequest { digest: Some(sha256(&good)), data: wrong_hash.clone(), compressor: 0 },
        UpdateRequest { digest: Some(short.clone()), data: wrong_size.clone(), compressor: 0 },
        UpdateRequest { digest: Some(reapi::Digest { hash: "xyz".into(), size_bytes: 3 }), data: b"abc".to_vec(), compressor: 0 },
        UpdateRequest { digest: Some(reapi::Digest { hash: sha256(b"abc").hash, size_bytes: -3 }), data: b"abc".to_vec(), compressor: 0 },
        UpdateRequest { digest: None, data: b"abc".to_vec(), compressor: 0 },
        UpdateRequest { digest: Some(sha256(&wrong_hash)), data: wrong_hash.clone(), compressor: 2 },
    ];
    let resp = cas.batch_update_blobs(update("", requests)).await.unwrap().into_inner();
    let statuses: Vec<_> = resp.responses.iter().map(|r| r.status.clone().unwrap()).collect();
    assert_eq!(statuses[0].code, 0);
    for s in &statuses[1..] {
        assert_eq!(s.code, Code::InvalidArgument as i32, "{s:?}");
        assert!(!s.message.is_empty());
    }
    assert!(statuses[1].message.contains("hashes to"), "{}", statuses[1].message);
    assert!(statuses[2].message.contains("received 64 bytes"), "{}", statuses[2].message);
    assert!(statuses[6].message.contains("compressor"), "{}", statuses[6].message);
    let gone = missing(&mut cas, "", vec![sha256(&wrong_hash), short, sha256(&wrong_size), sha256(b"abc")]).await;
    assert_eq!(gone.len(), 4, "nothing from a failed entry was stored");
}

#[tokio::test]
async fn batches_over_the_advertised_limit_are_refused_whole() {
    let server = TestServer::start().await;
    let mut cas = server.cas().await;
    let a = content(8, 600 * 1024);
    let b = content(9, 600 * 1024);
    let requests = vec![
        UpdateRequest { digest: Some(sha256(&a)), data: a.clone(), compressor: 0 },
        UpdateRequest { digest: Some(sha256(&b)), data: b.clone(), compressor: 0 },
    ];
    let err = cas.batch_update_blobs(update("", requests)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("max_batch_total_size_bytes"), "{}", err.message());
    assert_eq!(missing(&mut cas, "", vec![sha256(&a), sha256(&b)]).await.len(), 2);

    let big = reapi::Digest { hash: sha256(&a).hash, size_bytes: 2 << 20 };
    let err = cas.batch_read_blobs(read("", vec![big])).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn malformed_requests_are_invalid_arguments() {
    let server = TestServer::start().await;
    let mut cas = server.cas().await;
    let bad = reapi::Digest { hash: "ABC".into(), size_bytes: 1 };
    let err = cas
        .find_missing_blobs(reapi::FindMissingBlobsRequest { instance_name: String::new(), blob_digests: vec![sha256(b"x"), bad.clone()], digest_function: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("blob_digests[1]"), "{}", err.message());

    let err = cas.batch_read_blobs(read("", vec![bad])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = cas
        .find_missing_blobs(reapi::FindMissingBlobsRequest { instance_name: String::new(), blob_digests: vec![], digest_function: 3 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "MD5 is not supported");

    let err = cas
        .find_missing_blobs(reapi::FindMissingBlobsRequest { instance_name: "nope".into(), blob_digests: vec![], digest_function: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("unknown instance name \"nope\""), "{}", err.message());

    let err = cas.split_blob(reapi::SplitBlobRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
}

fn file_node(name: &str, data: &[u8]) -> reapi::FileNode {
    reapi::FileNode { name: name.into(), digest: Some(sha256(data)), is_executable: false, node_properties: None }
}

fn dir_node(name: &str, dir: &reapi::Directory) -> reapi::DirectoryNode {
    reapi::DirectoryNode { name: name.into(), digest: Some(sha256(&dir.encode_to_vec())) }
}

async fn get_tree(
    cas: &mut bazel_remote_apis::build::bazel::remote::execution::v2::content_addressable_storage_client::ContentAddressableStorageClient<tonic::transport::Channel>,
    root: reapi::Digest,
    page_size: i32,
    page_token: String,
) -> Result<Vec<reapi::GetTreeResponse>, tonic::Status> {
    let mut stream = cas
        .get_tree(reapi::GetTreeRequest { instance_name: String::new(), root_digest: Some(root), page_size, page_token, digest_function: 0 })
        .await?
        .into_inner();
    let mut pages = Vec::new();
    while let Some(page) = stream.message().await? {
        pages.push(page);
    }
    Ok(pages)
}

#[tokio::test]
async fn get_tree_walks_pages_and_resumes_from_a_token() {
    let server = TestServer::start().await;
    let mut cas = server.cas().await;
    // root -> a, b; a -> c; b -> c (shared: returned once); 12 leaf directories under c.
    let leaves: Vec<reapi::Directory> = (0..12)
        .map(|i| reapi::Directory { files: vec![file_node(&format!("f{i}"), format!("leaf {i}").as_bytes())], ..Default::default() })
        .collect();
    let c = reapi::Directory { directories: leaves.iter().enumerate().map(|(i, l)| dir_node(&format!("l{i:02}"), l)).collect(), ..Default::default() };
    let a = reapi::Directory { directories: vec![dir_node("c", &c)], ..Default::default() };
    let b = reapi::Directory { directories: vec![dir_node("c", &c)], files: vec![file_node("only-in-b", b"b")], ..Default::default() };
    let root = reapi::Directory { directories: vec![dir_node("a", &a), dir_node("b", &b)], ..Default::default() };
    let mut blobs: Vec<Vec<u8>> = leaves.iter().map(|l| l.encode_to_vec()).collect();
    blobs.extend([c.encode_to_vec(), a.encode_to_vec(), b.encode_to_vec(), root.encode_to_vec()]);
    let refs: Vec<&[u8]> = blobs.iter().map(|b| b.as_slice()).collect();
    upload(&mut cas, "", &refs).await;
    let root_digest = sha256(&root.encode_to_vec());

    let all: Vec<reapi::Directory> = get_tree(&mut cas, root_digest.clone(), 0, String::new()).await.unwrap().into_iter().flat_map(|p| p.directories).collect();
    assert_eq!(all.len(), 16, "root, a, b, c once, 12 leaves");
    assert_eq!(all[0], root);

    let pages = get_tree(&mut cas, root_digest.clone(), 5, String::new()).await.unwrap();
    assert_eq!(pages.iter().map(|p| p.directories.len()).collect::<Vec<_>>(), vec![5, 5, 5, 1]);
    assert!(pages.last().unwrap().next_page_token.is_empty());
    // Resume from the second page's token, as a client would after a broken stream.
    let rest = get_tree(&mut cas, root_digest.clone(), 5, pages[1].next_page_token.clone()).await.unwrap();
    let resumed: Vec<_> = rest.into_iter().flat_map(|p| p.directories).collect();
    assert_eq!(resumed, all[10..].to_vec());

    let err = get_tree(&mut cas, root_digest.clone(), 5, "garbage".into()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = get_tree(&mut cas, root_digest, -1, String::new()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = get_tree(&mut cas, sha256(b"no such directory"), 0, String::new()).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = get_tree(&mut cas, reapi::Digest { hash: "nothex".into(), size_bytes: 1 }, 0, String::new()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A root that is not a Directory message.
    let not_a_dir = vec![0xffu8; 7];
    upload(&mut cas, "", &[&not_a_dir]).await;
    let err = get_tree(&mut cas, sha256(&not_a_dir), 0, String::new()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn get_tree_leaves_out_missing_subtrees() {
    let server = TestServer::start().await;
    let mut cas = server.cas().await;
    let absent = reapi::Directory { files: vec![file_node("x", b"x")], ..Default::default() };
    let root = reapi::Directory { directories: vec![dir_node("gone", &absent)], ..Default::default() };
    upload(&mut cas, "", &[&root.encode_to_vec()]).await;
    let dirs: Vec<_> = get_tree(&mut cas, sha256(&root.encode_to_vec()), 0, String::new()).await.unwrap().into_iter().flat_map(|p| p.directories).collect();
    assert_eq!(dirs, vec![root]);
}

/// A message whose field 1 is bytes where FindMissingBlobsRequest has a string: invalid UTF-8 there
/// makes the request undecodable.
#[derive(Clone, PartialEq, prost::Message)]
struct Undecodable {
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
}

/// BatchUpdateBlobs is served by a route of its own too (it decodes the blobs without copying them):
/// the calls tonic would refuse are refused there with the contract's statuses, storing nothing,
/// and batches whose blobs straddle the HTTP/2 frames are stored whole.
#[tokio::test]
async fn malformed_batch_update_calls_get_the_contract_statuses() {
    let server = TestServer::start().await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    let path = || http::uri::PathAndQuery::from_static("/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs");
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<Undecodable, reapi::BatchUpdateBlobsResponse>::default();
    let err = grpc.unary(tonic::Request::new(Undecodable { data: vec![0xff, 0xfe] }), path(), codec).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("not a valid BatchUpdateBlobsRequest"), "{}", err.message());

    // A batch larger than the message limit (max_batch_total_size plus framing).
    let mut cas = server.cas().await;
    let huge = content(40, 3 << 20);
    let request = |data: Vec<Vec<u8>>| reapi::BatchUpdateBlobsRequest {
        requests: data.into_iter().map(|d| reapi::batch_update_blobs_request::Request { digest: Some(sha256(&d)), data: d, compressor: 0 }).collect(),
        ..Default::default()
    };
    let err = cas.batch_update_blobs(request(vec![huge.clone()])).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().len() < 200, "{}", err.message());

    // A call that ends without its request.
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<reapi::BatchUpdateBlobsRequest, reapi::BatchUpdateBlobsResponse>::default();
    let none = tonic::Request::new(futures::stream::empty::<reapi::BatchUpdateBlobsRequest>());
    let err = grpc.client_streaming(none, path(), codec).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());

    // 250 blobs of odd sizes: many cross a frame's end; each is stored whole and reads back.
    let blobs: Vec<Vec<u8>> = (0..250).map(|i| content(100 + i, 1 + (i as usize * 3331) % 7000)).collect();
    let responses = cas.batch_update_blobs(request(blobs.clone())).await.unwrap().into_inner().responses;
    assert!(responses.iter().all(|r| r.status.as_ref().is_some_and(|s| s.code == 0)));
    let digests: Vec<reapi::Digest> = blobs.iter().map(|b| sha256(b)).collect();
    let read = cas.batch_read_blobs(read("", digests.clone())).await.unwrap().into_inner().responses;
    assert!(read.iter().zip(&blobs).all(|(r, b)| &r.data == b), "every blob reads back as sent");
    assert_eq!(missing(&mut cas, "", vec![sha256(&huge)]).await.len(), 1);
}

/// BatchReadBlobs is served by a route of its own (it builds the answer without tonic's copies): the
/// calls tonic would refuse are refused there with the contract's statuses.
#[tokio::test]
async fn malformed_batch_read_calls_get_the_contract_statuses() {
    let server = TestServer::start().await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    let path = || http::uri::PathAndQuery::from_static("/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchReadBlobs");
    // Field 1 is the instance name, a string: invalid UTF-8 there makes the request undecodable.
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<Undecodable, reapi::BatchReadBlobsResponse>::default();
    let err = grpc.unary(tonic::Request::new(Undecodable { data: vec![0xff, 0xfe] }), path(), codec).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("not a valid BatchReadBlobsRequest"), "{}", err.message());

    // A request larger than the message limit (max_batch_total_size plus framing).
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<Undecodable, reapi::BatchReadBlobsResponse>::default();
    let err = grpc.unary(tonic::Request::new(Undecodable { data: vec![b'a'; 8 << 20] }), path(), codec).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().len() < 200, "{}", err.message());

    // A call that ends without its request.
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<reapi::BatchReadBlobsRequest, reapi::BatchReadBlobsResponse>::default();
    let none = tonic::Request::new(futures::stream::empty::<reapi::BatchReadBlobsRequest>());
    let err = grpc.client_streaming(none, path(), codec).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());

    // The route still answers good calls on the same connection, and the other methods reach the
    // generated server.
    let mut cas = server.cas().await;
    upload(&mut cas, "", &[b"still here"]).await;
    let resp = cas.batch_read_blobs(read("", vec![sha256(b"still here")])).await.unwrap().into_inner();
    assert_eq!(resp.responses[0].data, b"still here");
}

#[tokio::test]
async fn oversized_and_undecodable_requests_get_the_contract_statuses() {
    let server = TestServer::start().await;
    let mut cas = server.cas().await;
    // 100,000 digests: over the message limit (max_batch_total_size plus framing).
    let digests: Vec<reapi::Digest> = (0..100_000u32).map(|i| sha256(&i.to_le_bytes())).collect();
    let err = cas
        .find_missing_blobs(reapi::FindMissingBlobsRequest { instance_name: String::new(), blob_digests: digests, digest_function: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("limit") && err.message().contains("split"), "{}", err.message());

    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs");
    let codec = tonic_prost::ProstCodec::<Undecodable, reapi::FindMissingBlobsResponse>::default();
    let err = grpc.unary(tonic::Request::new(Undecodable { data: vec![0xff, 0xfe, 0xfd] }), path, codec).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("not a valid protobuf message"), "{}", err.message());
}
