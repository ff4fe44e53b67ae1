//! ByteStream over gRPC: reads with offsets and limits, streamed and resumed writes, and the errors a
//! client can provoke (malformed names, wrong hash, too few or too many bytes, bad offsets).

mod common;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use bazel_remote_apis::google::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest, WriteResponse};
use common::*;
use tonic::transport::Channel;
use tonic::Code;

fn blob_name(instance: &str, d: &reapi::Digest) -> String {
    let prefix = if instance.is_empty() { String::new() } else { format!("{instance}/") };
    format!("{prefix}blobs/{}/{}", d.hash, d.size_bytes)
}

fn upload_name(instance: &str, uuid: &str, d: &reapi::Digest) -> String {
    let prefix = if instance.is_empty() { String::new() } else { format!("{instance}/") };
    format!("{prefix}uploads/{uuid}/blobs/{}/{}", d.hash, d.size_bytes)
}

async fn read(bs: &mut ByteStreamClient<Channel>, name: String, offset: i64, limit: i64) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = bs.read(ReadRequest { resource_name: name, read_offset: offset, read_limit: limit }).await?.into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await? {
        out.extend_from_slice(&msg.data);
    }
    Ok(out)
}

/// Sends `data` as a sequence of messages starting at `offset`, the last one with `finish`.
async fn write(bs: &mut ByteStreamClient<Channel>, name: &str, offset: usize, data: &[u8], chunk: usize, finish: bool) -> Result<WriteResponse, tonic::Status> {
    let mut messages = Vec::new();
    let mut at = offset;
    let chunks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(chunk).collect() };
    let n = chunks.len();
    for (i, c) in chunks.into_iter().enumerate() {
        messages.push(WriteRequest {
            resource_name: if i == 0 { name.to_string() } else { String::new() },
            write_offset: at as i64,
            finish_write: finish && i == n - 1,
            data: c.to_vec(),
        });
        at += c.len();
    }
    bs.write(futures::stream::iter(messages)).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn write_then_read_with_offsets_and_limits() {
    let server = TestServer::start().await;
    let mut bs = server.bytestream().await;
    for (seed, len) in [(1u32, 1000usize), (2, 200_000), (3, 3 << 20)] {
        // 1000 bytes: memory and disk; 200 KB: a large file on disk; 3 MiB: several read chunks.
        let data = content(seed, len);
        let d = sha256(&data);
        let resp = write(&mut bs, &upload_name("team/a", "u1", &d), 0, &data, 64 * 1024, true).await.unwrap();
        assert_eq!(resp.committed_size, len as i64);
        assert_eq!(read(&mut bs, blob_name("team/a", &d), 0, 0).await.unwrap(), data);
        assert_eq!(read(&mut bs, blob_name("team/a", &d), 10, 20).await.unwrap(), data[10..30]);
        // A limit past the end is allowed; an offset at the end reads nothing.
        assert_eq!(read(&mut bs, blob_name("team/a", &d), len as i64 - 5, 100).await.unwrap(), data[len - 5..]);
        assert!(read(&mut bs, blob_name("team/a", &d), len as i64, 0).await.unwrap().is_empty());
        let err = read(&mut bs, blob_name("team/a", &d), len as i64 + 1, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange);
        let err = read(&mut bs, blob_name("team/a", &d), -1, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange);
    }
}

#[tokio::test]
async fn read_errors() {
    let server = TestServer::start().await;
    let mut bs = server.bytestream().await;
    let absent = sha256(b"never stored");
    assert_eq!(read(&mut bs, blob_name("", &absent), 0, 0).await.unwrap_err().code(), Code::NotFound);
    // A negative offset is outside the blob: OUT_OF_RANGE, as the ByteStream contract says.
    assert_eq!(read(&mut bs, blob_name("", &absent), -1, 0).await.unwrap_err().code(), Code::OutOfRange);
    assert_eq!(read(&mut bs, blob_name("", &absent), 0, -1).await.unwrap_err().code(), Code::InvalidArgument);
    for bad in ["", "blobs", "blobs/abc/1", &format!("blobs/{}/x", absent.hash), &format!("compressed-blobs/deflate/{}/12", absent.hash)] {
        let err = read(&mut bs, bad.to_string(), 0, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert!(err.message().contains("resource name"), "{}", err.message());
    }
    let err = read(&mut bs, blob_name("unknown", &absent), 0, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // The empty blob always exists.
    assert!(read(&mut bs, blob_name("", &sha256(b"")), 0, 0).await.unwrap().is_empty());
}

/// A message whose field 1 is bytes where ReadRequest has a string: invalid UTF-8 there makes the
/// request undecodable.
#[derive(Clone, PartialEq, prost::Message)]
struct NotARead {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
}

/// Read is served by a route of its own (it sends blobs without copying them): the calls tonic would
/// refuse for it are refused here with the contract's statuses, and nothing else breaks the stream.
#[tokio::test]
async fn malformed_read_calls_get_the_contract_statuses() {
    let server = TestServer::start().await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    let path = || http::uri::PathAndQuery::from_static("/google.bytestream.ByteStream/Read");
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<NotARead, bazel_remote_apis::google::bytestream::ReadResponse>::default();
    let err = grpc.server_streaming(tonic::Request::new(NotARead { name: vec![0xff, 0xfe] }), path(), codec).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("not a valid ReadRequest"), "{}", err.message());

    // A resource name larger than the message limit (max_batch_total_size plus framing).
    let huge = NotARead { name: vec![b'a'; 8 << 20] };
    let codec = tonic_prost::ProstCodec::<NotARead, bazel_remote_apis::google::bytestream::ReadResponse>::default();
    grpc.ready().await.unwrap();
    let err = grpc.server_streaming(tonic::Request::new(huge), path(), codec).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());

    // A call that ends without its request.
    let codec = tonic_prost::ProstCodec::<ReadRequest, bazel_remote_apis::google::bytestream::ReadResponse>::default();
    grpc.ready().await.unwrap();
    let none = tonic::Request::new(futures::stream::empty::<ReadRequest>());
    let err = match grpc.streaming(none, path(), codec).await {
        Err(e) => e,
        Ok(response) => response.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("no ReadRequest"), "{}", err.message());

    // The route still serves reads, whole and in pieces, and its neighbours still answer.
    let mut bs = server.bytestream().await;
    let data = content(9, (3 << 20) + 5);
    let d = sha256(&data);
    write(&mut bs, &upload_name("", "u9", &d), 0, &data, 1 << 20, true).await.unwrap();
    assert_eq!(read(&mut bs, blob_name("", &d), 0, 0).await.unwrap(), data);
    assert_eq!(read(&mut bs, blob_name("", &d), (1 << 20) - 3, (1 << 20) + 7).await.unwrap(), data[(1 << 20) - 3..(2 << 20) + 4]);
    let status = bs.query_write_status(QueryWriteStatusRequest { resource_name: upload_name("", "u9", &d) }).await.unwrap().into_inner();
    assert!(status.complete);
}

#[tokio::test]
async fn wrong_hash_or_size_stores_nothing() {
    let server = TestServer::start().await;
    let mut bs = server.bytestream().await;
    let mut cas = server.cas().await;
    for len in [100usize, 150_000] {
        let data = content(10 + len as u32, len);
        let d = sha256(&data);
        let mut other = data.clone();
        other[len / 2] ^= 0xff;
        let err = write(&mut bs, &upload_name("", "a", &d), 0, &other, 32 * 1024, true).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("hashes to"), "{}", err.message());

        let err = write(&mut bs, &upload_name("", "b", &d), 0, &data[..len - 1], 32 * 1024, true).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("declares"), "{}", err.message());

        let mut longer = data.clone();
        longer.push(0);
        let err = write(&mut bs, &upload_name("", "c", &d), 0, &longer, 32 * 1024, true).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        assert_eq!(missing(&mut cas, "", vec![d.clone()]).await, vec![d.clone()]);
        assert_eq!(read(&mut bs, blob_name("", &d), 0, 0).await.unwrap_err().code(), Code::NotFound);
    }
    // No temporary files are left on disk by the failed large uploads (removed on a blocking thread
    // once their writers are dropped).
    let large = || std::fs::read_dir(server.data_dir.join("cas/large")).map_or(usize::MAX, |d| d.count());
    assert!(eventually(|| large() == 0).await, "{} files left", large());
}

#[tokio::test]
async fn malformed_writes_are_rejected() {
    let server = TestServer::start().await;
    let mut bs = server.bytestream().await;
    let data = content(20, 100);
    let d = sha256(&data);
    for bad in [
        format!("blobs/{}/{}", d.hash, d.size_bytes),
        format!("uploads/blobs/{}/{}", d.hash, d.size_bytes),
        format!("uploads/u/blobs/{}", d.hash),
        format!("uploads/u/blobs/md5/{}/{}", d.hash, d.size_bytes),
        format!("uploads/u/blobs/{}/-5", d.hash),
    ] {
        let err = write(&mut bs, &bad, 0, &data, 1000, true).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
    }
    // A first message that does not start at 0 (and resumes nothing).
    let err = write(&mut bs, &upload_name("", "u", &d), 10, &data[10..], 1000, true).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Offsets that skip bytes.
    let messages = vec![
        WriteRequest { resource_name: upload_name("", "u", &d), write_offset: 0, finish_write: false, data: data[..50].to_vec() },
        WriteRequest { resource_name: String::new(), write_offset: 60, finish_write: true, data: data[60..].to_vec() },
    ];
    assert_eq!(bs.write(futures::stream::iter(messages)).await.unwrap_err().code(), Code::InvalidArgument);
    // An empty stream.
    let err = bs.write(futures::stream::iter(Vec::<WriteRequest>::new())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut cas = server.cas().await;
    assert_eq!(missing(&mut cas, "", vec![d.clone()]).await.len(), 1);
}

/// Write is served by a route of its own too (it hands the data over as it arrived, without a copy):
/// the messages tonic would refuse are refused here with the contract's statuses, nothing is stored,
/// and the route goes on serving.
#[tokio::test]
async fn malformed_write_calls_get_the_contract_statuses() {
    let server = TestServer::start().await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    let path = || http::uri::PathAndQuery::from_static("/google.bytestream.ByteStream/Write");
    let data = content(21, 100);
    let d = sha256(&data);

    // Field 1 of WriteRequest is the resource name, a string: invalid UTF-8 there.
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<NotARead, WriteResponse>::default();
    let bad = futures::stream::iter([NotARead { name: vec![0xff, 0xfe] }]);
    let err = grpc.client_streaming(tonic::Request::new(bad), path(), codec).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("not a valid WriteRequest"), "{}", err.message());

    // A good first message, then one larger than the message limit (max_batch_total_size plus
    // framing): refused.
    let name = upload_name("", "huge", &d);
    let messages = [
        WriteRequest { resource_name: name.clone(), write_offset: 0, finish_write: false, data: data[..10].to_vec() },
        WriteRequest { resource_name: String::new(), write_offset: 10, finish_write: true, data: vec![b'a'; 8 << 20] },
    ];
    let mut bs = server.bytestream().await;
    let err = bs.write(futures::stream::iter(messages)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("WriteRequest") && err.message().len() < 200, "{}", err.message());
    let status = bs.query_write_status(QueryWriteStatusRequest { resource_name: name }).await.unwrap().into_inner();
    assert_eq!((status.committed_size, status.complete), (10, false), "what arrived before the refused message is kept, as for any interruption");

    // Data in pieces of odd sizes (so that fields and data straddle the HTTP/2 frames), fields in
    // the order the client's encoder chose: stored, and read back whole.
    let large = content(22, (3 << 20) + 7);
    let ld = sha256(&large);
    write(&mut bs, &upload_name("", "odd", &ld), 0, &large, 777_777, true).await.unwrap();
    assert_eq!(read(&mut bs, blob_name("", &ld), 0, 0).await.unwrap(), large);
    let mut cas = server.cas().await;
    assert_eq!(missing(&mut cas, "", vec![d.clone(), ld]).await, vec![d]);
}

#[tokio::test]
async fn interrupted_upload_resumes_from_the_committed_size() {
    let server = TestServer::start().await;
    let mut bs = server.bytestream().await;
    let data = content(30, 300_000);
    let d = sha256(&data);
    let name = upload_name("", "resume-me", &d);

    let err = bs.query_write_status(QueryWriteStatusRequest { resource_name: name.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // The client sends the first 100 KB and then its stream ends without finish_write.
    let first = write(&mut bs, &name, 0, &data[..100_000], 25_000, false).await.unwrap();
    assert_eq!(first.committed_size, 100_000);
    let status = bs.query_write_status(QueryWriteStatusRequest { resource_name: name.clone() }).await.unwrap().into_inner();
    assert_eq!((status.committed_size, status.complete), (100_000, false));

    // Resuming at a wrong offset is refused; at the committed size it completes.
    let err = write(&mut bs, &name, 0, &data, 25_000, true).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let first = write(&mut bs, &name, 0, &data[..100_000], 25_000, false).await.unwrap();
    assert_eq!(first.committed_size, 100_000);
    let done = write(&mut bs, &name, 100_000, &data[100_000..], 25_000, true).await.unwrap();
    assert_eq!(done.committed_size, 300_000);
    assert_eq!(read(&mut bs, blob_name("", &d), 0, 0).await.unwrap(), data);
    let status = bs.query_write_status(QueryWriteStatusRequest { resource_name: name }).await.unwrap().into_inner();
    assert_eq!((status.committed_size, status.complete), (300_000, true));
}

#[tokio::test]
async fn uploading_a_stored_blob_returns_at_once_with_its_size() {
    let server = TestServer::start().await;
    let mut bs = server.bytestream().await;
    let data = content(40, 5000);
    let d = sha256(&data);
    write(&mut bs, &upload_name("", "x", &d), 0, &data, 5000, true).await.unwrap();
    // The second upload sends only its first chunk; the server answers without waiting for the rest.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WriteRequest { resource_name: upload_name("", "y", &d), write_offset: 0, finish_write: false, data: data[..100].to_vec() })
        .await
        .unwrap();
    let resp = bs.write(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    assert_eq!(resp.committed_size, 5000);
    drop(tx);
    // The empty blob, likewise.
    let resp = write(&mut bs, &upload_name("", "z", &sha256(b"")), 0, b"", 1, true).await.unwrap();
    assert_eq!(resp.committed_size, 0);
}

#[tokio::test]
async fn blake3_resource_names() {
    let server = TestServer::start().await;
    let mut bs = server.bytestream().await;
    let data = content(50, 90_000);
    let d = blake3(&data);
    let name = format!("uploads/u/blobs/blake3/{}/{}/trailing/metadata", d.hash, d.size_bytes);
    write(&mut bs, &name, 0, &data, 30_000, true).await.unwrap();
    let read_name = format!("blobs/blake3/{}/{}", d.hash, d.size_bytes);
    assert_eq!(read(&mut bs, read_name, 0, 0).await.unwrap(), data);
    // Without the function segment the hash is taken as SHA-256: not found.
    assert_eq!(read(&mut bs, blob_name("", &d), 0, 0).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn query_write_status_errors() {
    let server = TestServer::start().await;
    let mut bs = server.bytestream().await;
    for bad in ["", "blobs/abc/1", "uploads/u/blobs/abc/1"] {
        let err = bs.query_write_status(QueryWriteStatusRequest { resource_name: bad.into() }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
    }
    let d = sha256(b"unknown upload");
    let err = bs.query_write_status(QueryWriteStatusRequest { resource_name: upload_name("nope", "u", &d) }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "unknown instance");
}

#[tokio::test]
async fn abandoned_uploads_are_bounded_and_expire_without_other_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let config = TEST_CONFIG.replace("max_batch_total_size: 1MiB", "max_batch_total_size: 1MiB\nresumable_upload_ttl: 1s\nresumable_uploads_max: 3");
    let server = TestServer::start_in(&config, tmp.path()).await;
    let mut bs = server.bytestream().await;
    let temporaries = || {
        std::fs::read_dir(tmp.path().join("cas/large")).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("tmp-")).count()
    };
    // Ten clients each send the first 100 KB of a 300 KB blob (a large file on disk) and leave.
    let mut names = Vec::new();
    for i in 0..10 {
        let data = content(100 + i, 300_000);
        let name = upload_name("", &format!("abandoned-{i}"), &sha256(&data));
        let resp = write(&mut bs, &name, 0, &data[..100_000], 50_000, false).await.unwrap();
        assert_eq!(resp.committed_size, 100_000);
        names.push(name);
    }
    // Only the three newest are kept; the others released their temporary files.
    assert!(eventually(|| temporaries() == 3).await, "{} temporary files", temporaries());
    let status = |name: String| {
        let mut bs = bs.clone();
        async move { bs.query_write_status(QueryWriteStatusRequest { resource_name: name }).await }
    };
    assert_eq!(status(names[0].clone()).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(status(names[9].clone()).await.unwrap().into_inner().committed_size, 100_000);
    // After the TTL the timer drops the rest, though no other Write came.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(eventually(|| temporaries() == 0).await, "{} temporary files", temporaries());
    assert_eq!(status(names[9].clone()).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn error_messages_quote_client_input_bounded() {
    let server = TestServer::start().await;
    let mut bs = server.bytestream().await;
    // A 20 KB resource name, malformed: the message names it, cut short, and reaches the client.
    let name = format!("{}/blobs/abc/1", "x".repeat(20_000));
    let err = read(&mut bs, name.clone(), 0, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().len() < 1000, "{} bytes", err.message().len());
    assert!(err.message().contains("bytes in all"), "{}", err.message());
    let err = bs.query_write_status(QueryWriteStatusRequest { resource_name: format!("uploads/{}", "u".repeat(20_000)) }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 1000, "{} bytes", err.message().len());
}

#[tokio::test]
async fn a_blob_larger_than_a_memory_only_stack_is_refused_and_what_it_holds_stays() {
    let config = TEST_CONFIG.replace(
        "      - memory: { max_size: 8MiB, max_blob: 16KiB }\n      - disk: { path: cas, max_size: 64MiB, segment_size: 1MiB, max_record: 64KiB, sync: always }",
        "      - memory: { max_size: 64KiB }",
    );
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(&config, tmp.path()).await;
    let (mut bs, mut cas) = (server.bytestream().await, server.cas().await);
    let kept = content(1, 1000);
    upload(&mut cas, "", &[&kept]).await;

    let big = content(2, 100_000);
    let err = write(&mut bs, &upload_name("", "big", &sha256(&big)), 0, &big, 16 * 1024, true).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("65536 bytes at most") && err.message().contains(&sha256(&big).hash), "{}", err.message());
    // A batch entry that cannot fit fails alone; the batch's other entry is stored.
    let (over, fits) = (content(3, 70_000), content(4, 2000));
    let requests = [&over, &fits].map(|data| reapi::batch_update_blobs_request::Request { digest: Some(sha256(data)), data: data.clone(), compressor: 0 });
    let request = reapi::BatchUpdateBlobsRequest { instance_name: String::new(), requests: requests.to_vec(), digest_function: 0 };
    let statuses: Vec<i32> = cas.batch_update_blobs(request).await.unwrap().into_inner().responses.iter().map(|r| r.status.as_ref().unwrap().code).collect();
    assert_eq!(statuses, vec![Code::ResourceExhausted as i32, 0]);
    let absent = missing(&mut cas, "", vec![sha256(&kept), sha256(&big), sha256(&over), sha256(&fits)]).await;
    assert_eq!(absent, vec![sha256(&big), sha256(&over)], "nothing held was evicted for a blob that could never fit");
}

/// The offset of `needle` in the segment files of the log at `dir`, and which file it is in.
fn find_in_segments(dir: &std::path::Path, needle: &[u8]) -> (std::path::PathBuf, usize) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "seg") {
            let bytes = std::fs::read(&path).unwrap();
            if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
                return (path, at);
            }
        }
    }
    panic!("not in any segment of {}", dir.display());
}

/// A segment record read in several messages is checked as it is sent (a read no longer checks a
/// 16 MiB record whole before its first byte): a damaged one ends its read in INTERNAL instead of
/// its last bytes, whatever part of it was asked for, and is dropped: it then reads as missing until
/// it is uploaded again.
#[tokio::test]
async fn a_damaged_record_read_in_pieces_ends_its_read_before_the_last_piece_and_is_dropped() {
    let config = TEST_CONFIG.replace("segment_size: 1MiB, max_record: 64KiB", "segment_size: 16MiB, max_record: 4MiB");
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(&config, tmp.path()).await;
    let (mut bs, mut cas) = (server.bytestream().await, server.cas().await);
    let data = content(9, (3 << 20) + 4321);
    let d = sha256(&data);
    write(&mut bs, &upload_name("", "u1", &d), 0, &data, 64 * 1024, true).await.unwrap();
    assert!(read(&mut bs, blob_name("", &d), 0, 0).await.unwrap() == data, "intact: read whole");
    let (from, len) = ((1 << 20) + 5, (2 << 20) + 1);
    assert!(read(&mut bs, blob_name("", &d), from as i64, len as i64).await.unwrap() == data[from..from + len], "intact: a range");

    // One flipped byte in the first MiB, outside the range read next.
    let (segment, at) = find_in_segments(&tmp.path().join("cas"), &data[..4096]);
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&segment).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(&[data[100] ^ 0x40], (at + 100) as u64).unwrap();

    let request = ReadRequest { resource_name: blob_name("", &d), read_offset: from as i64, read_limit: len as i64 };
    let mut stream = bs.read(request).await.unwrap().into_inner();
    let mut received = 0;
    let err = loop {
        match stream.message().await {
            Ok(Some(msg)) => received += msg.data.len(),
            Ok(None) => panic!("a damaged record was read to its end ({received} bytes)"),
            Err(status) => break status,
        }
    };
    assert!(received < len, "{received} bytes of {len} came before the error");
    assert_eq!(err.code(), Code::Internal, "{}", err.message());
    assert!(err.message().contains(&d.hash) && err.message().contains("checksum"), "{}", err.message());
    assert_eq!(missing(&mut cas, "", vec![d.clone()]).await, vec![d.clone()], "dropped: FindMissing says missing");
    assert_eq!(read(&mut bs, blob_name("", &d), 0, 0).await.unwrap_err().code(), Code::NotFound);
    write(&mut bs, &upload_name("", "u2", &d), 0, &data, 64 * 1024, true).await.unwrap();
    assert!(read(&mut bs, blob_name("", &d), 0, 0).await.unwrap() == data, "the upload again heals it");
}
