//! zstd on the wire: Capabilities advertise it; ByteStream `compressed-blobs/zstd/...` reads and
//! writes (offsets as REAPI defines them, resumption, the already-stored shortcut), batch uploads
//! and reads with compressors; and every way a compressed upload can be wrong (other bytes, a bomb,
//! garbage) is INVALID_ARGUMENT with nothing stored.

mod common;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use common::*;
use reapi::batch_update_blobs_request::Request as UpdateRequest;
use tonic::Code;

const ZSTD: i32 = reapi::compressor::Value::Zstd as i32;

fn compressed_name(d: &reapi::Digest) -> String {
    format!("compressed-blobs/zstd/{}/{}", d.hash, d.size_bytes)
}

fn upload_name(d: &reapi::Digest, uuid: &str) -> String {
    format!("uploads/{uuid}/compressed-blobs/zstd/{}/{}", d.hash, d.size_bytes)
}

fn compressible(seed: u32, len: usize) -> Vec<u8> {
    let words = ["cc_library", "genrule", "srcs", "deps", "visibility", "//pkg:target"];
    let mut out = Vec::with_capacity(len + 16);
    let mut i = seed as usize;
    while out.len() < len {
        out.extend_from_slice(words[i % words.len()].as_bytes());
        out.push(b' ');
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    out.truncate(len);
    out
}

/// Sends `frame` in pieces of `piece` bytes, the first at uncompressed offset `start`.
async fn write_compressed(server: &TestServer, name: &str, start: i64, frame: &[u8], piece: usize, finish: bool) -> Result<i64, tonic::Status> {
    let mut offset = start;
    let mut requests = Vec::new();
    let pieces: Vec<&[u8]> = frame.chunks(piece).collect();
    for (i, chunk) in pieces.iter().enumerate() {
        requests.push(WriteRequest {
            resource_name: if i == 0 { name.to_string() } else { String::new() },
            write_offset: offset,
            finish_write: finish && i + 1 == pieces.len(),
            data: chunk.to_vec(),
        });
        offset += chunk.len() as i64;
    }
    let response = server.bytestream().await.write(futures::stream::iter(requests)).await?;
    Ok(response.into_inner().committed_size)
}

async fn read_compressed(server: &TestServer, d: &reapi::Digest, offset: i64, limit: i64) -> Result<Vec<u8>, tonic::Status> {
    let request = ReadRequest { resource_name: compressed_name(d), read_offset: offset, read_limit: limit };
    let mut stream = server.bytestream().await.read(request).await?.into_inner();
    let mut frame = Vec::new();
    while let Some(msg) = stream.message().await? {
        assert!(msg.data.len() <= 2 << 20, "messages stay small");
        frame.extend(msg.data);
    }
    Ok(zstd::stream::decode_all(&frame[..]).expect("a valid zstd frame"))
}

/// Bytes that do not compress: a chain of SHA-256 hashes.
fn noise(len: usize) -> Vec<u8> {
    use sha2::Digest as _;
    let mut out = Vec::with_capacity(len + 32);
    let mut block = [7u8; 32];
    while out.len() < len {
        block = sha2::Sha256::digest(block).into();
        out.extend_from_slice(&block);
    }
    out.truncate(len);
    out
}

#[tokio::test]
async fn capabilities_advertise_zstd() {
    let server = TestServer::start().await;
    let caps = server.capabilities().await.get_capabilities(reapi::GetCapabilitiesRequest::default()).await.unwrap().into_inner();
    let cache = caps.cache_capabilities.unwrap();
    assert!(cache.supported_compressors.contains(&ZSTD));
    assert!(cache.supported_batch_update_compressors.contains(&ZSTD));
}

#[tokio::test]
async fn compressed_uploads_and_reads_round_trip_small_and_large() {
    let server = TestServer::start().await;
    for (seed, len) in [(1, 0usize), (2, 5000), (3, 400_000)] {
        let data = compressible(seed, len);
        let d = sha256(&data);
        let frame = zstd::bulk::compress(&data, 3).unwrap();
        let committed = write_compressed(&server, &upload_name(&d, &format!("u{seed}")), 0, &frame, 10_000, true).await.unwrap();
        // The empty blob always exists: its upload ends at once.
        let expected = if len == 0 { -1 } else { frame.len() as i64 };
        assert_eq!(committed, expected, "a compressed write commits the compressed bytes it processed");
        assert!(missing(&mut server.cas().await, "", vec![d.clone()]).await.is_empty());
        assert_eq!(bytestream_read(&server, &d, 0, 0).await.unwrap(), data, "stored as its identity bytes");
        assert_eq!(read_compressed(&server, &d, 0, 0).await.unwrap(), data);
        if len > 0 {
            let from = (len / 3) as i64;
            assert_eq!(read_compressed(&server, &d, from, 0).await.unwrap(), data[from as usize..], "read_offset counts uncompressed bytes");
        }
    }
    // A blob uploaded as it is reads back compressed.
    let plain = compressible(4, 200_000);
    upload(&mut server.cas().await, "", &[&plain]).await;
    assert_eq!(read_compressed(&server, &sha256(&plain), 0, 0).await.unwrap(), plain);
    let err = read_compressed(&server, &sha256(&plain), 0, 10).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("read_limit"), "{}", err.message());
    assert_eq!(read_compressed(&server, &sha256(b"absent"), 0, 0).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn a_stored_blob_ends_a_compressed_upload_with_minus_one() {
    let server = TestServer::start().await;
    let data = compressible(5, 3000);
    upload(&mut server.cas().await, "", &[&data]).await;
    let frame = zstd::bulk::compress(&data, 1).unwrap();
    assert_eq!(write_compressed(&server, &upload_name(&sha256(&data), "again"), 0, &frame, 1000, true).await.unwrap(), -1);
}

#[tokio::test]
async fn an_interrupted_compressed_upload_resumes_from_its_uncompressed_offset() {
    let server = TestServer::start().await;
    let data = compressible(6, 300_000);
    let d = sha256(&data);
    let name = upload_name(&d, "resume");
    let half = 120_000;
    let first = zstd::bulk::compress(&data[..half], 1).unwrap();
    write_compressed(&server, &name, 0, &first, 4096, false).await.unwrap();
    let status = server.bytestream().await.query_write_status(QueryWriteStatusRequest { resource_name: name.clone() }).await.unwrap().into_inner();
    assert_eq!((status.committed_size, status.complete), (half as i64, false), "committed counts uncompressed bytes");
    // The client goes on with a new frame of the rest; offsets after the first add compressed bytes.
    let rest = zstd::bulk::compress(&data[half..], 1).unwrap();
    write_compressed(&server, &name, half as i64, &rest, 4096, true).await.unwrap();
    assert_eq!(bytestream_read(&server, &d, 0, 0).await.unwrap(), data);

    // A later message whose offset counts uncompressed bytes instead is refused.
    let other = compressible(7, 50_000);
    let frame = zstd::bulk::compress(&other, 1).unwrap();
    let requests = vec![
        WriteRequest { resource_name: upload_name(&sha256(&other), "bad-offset"), write_offset: 0, finish_write: false, data: frame[..100].to_vec() },
        WriteRequest { resource_name: String::new(), write_offset: 50_000, finish_write: true, data: frame[100..].to_vec() },
    ];
    let err = server.bytestream().await.write(futures::stream::iter(requests)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("write_offset"), "{}", err.message());
}

#[tokio::test]
async fn wrong_bombs_and_garbage_are_invalid_and_store_nothing() {
    let server = TestServer::start().await;
    let data = compressible(8, 10_000);
    let d = sha256(&data);
    let mut other = data.clone();
    other[5000] ^= 1;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (zstd::bulk::compress(&other, 1).unwrap(), "hashes to"),
        (zstd::bulk::compress(&vec![0u8; 32 << 20], 1).unwrap(), "more than the 10000 bytes"),
        (b"this is not a zstd frame at all".to_vec(), "not valid"),
        (zstd::bulk::compress(&data[..9_000], 1).unwrap(), "received 9000 bytes"),
    ];
    for (i, (frame, expected)) in cases.into_iter().enumerate() {
        let err = write_compressed(&server, &upload_name(&d, &format!("bad{i}")), 0, &frame, 4096, true).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{expected}: {err:?}");
        assert!(err.message().contains(expected), "expected {expected:?} in {:?}", err.message());
        assert_eq!(missing(&mut server.cas().await, "", vec![d.clone()]).await.len(), 1, "nothing stored");
    }
}

#[tokio::test]
async fn batches_carry_zstd_both_ways_where_it_pays() {
    let server = TestServer::start().await;
    let mut cas = server.cas().await;
    let (text, noise) = (compressible(9, 50_000), noise(20_000));
    let requests = vec![
        UpdateRequest { digest: Some(sha256(&text)), data: zstd::bulk::compress(&text, 1).unwrap(), compressor: ZSTD },
        UpdateRequest { digest: Some(sha256(&noise)), data: noise.clone(), compressor: 0 },
        UpdateRequest { digest: Some(sha256(b"wrong")), data: zstd::bulk::compress(b"other", 1).unwrap(), compressor: ZSTD },
        UpdateRequest { digest: Some(sha256(&[1u8; 100])), data: zstd::bulk::compress(&vec![1u8; 1 << 20], 1).unwrap(), compressor: ZSTD },
    ];
    let request = reapi::BatchUpdateBlobsRequest { requests, ..Default::default() };
    let statuses: Vec<i32> = cas.batch_update_blobs(request).await.unwrap().into_inner().responses.iter().map(|r| r.status.as_ref().unwrap().code).collect();
    assert_eq!(statuses, vec![0, 0, Code::InvalidArgument as i32, Code::InvalidArgument as i32]);

    let read = reapi::BatchReadBlobsRequest { digests: vec![sha256(&text), sha256(&noise)], acceptable_compressors: vec![ZSTD], ..Default::default() };
    let responses = cas.batch_read_blobs(read).await.unwrap().into_inner().responses;
    assert_eq!(responses[0].compressor, ZSTD, "text compresses");
    assert!(responses[0].data.len() < text.len() / 2);
    assert_eq!(zstd::stream::decode_all(&responses[0].data[..]).unwrap(), text);
    assert_eq!((responses[1].compressor, &responses[1].data), (0, &noise), "noise does not: sent as it is");
    let plain = reapi::BatchReadBlobsRequest { digests: vec![sha256(&text)], ..Default::default() };
    let response = &cas.batch_read_blobs(plain).await.unwrap().into_inner().responses[0];
    assert_eq!((response.compressor, &response.data), (0, &text), "identity unless the client accepts zstd");
}
