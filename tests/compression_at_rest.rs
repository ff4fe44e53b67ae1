//! zstd at rest: a disk tier with `compression: zstd` stores blobs compressed and serves them both
//! ways (identity reads in any range, compressed reads from the stored frames), whichever way they
//! were uploaded; the metrics show the bytes stored beside the bytes written; compressed records
//! survive a restart and a kill -9 of `strata serve`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use common::*;

const ZSTD: i32 = reapi::compressor::Value::Zstd as i32;
const MIB: usize = 1 << 20;

const CONFIG: &str = r#"
listen: 127.0.0.1:0
http: { listen: 127.0.0.1:0 }
max_batch_total_size: 1MiB
storage:
  main:
    cas:
      - memory: { max_size: 8MiB, max_blob: 16KiB }
      - disk: { path: cas, max_size: 128MiB, segment_size: 16MiB, max_record: 4MiB, sync: always, compression: zstd }
    action_cache:
      - memory: { max_size: 1MiB }
instances:
  - name: ""
    storage: main
    services: [cas, action_cache]
"#;

/// The disk tier's bytes written and bytes stored, from /metrics.
async fn disk_written(server: &TestServer) -> (f64, f64) {
    let (status, body) = http_get(server, "/metrics").await;
    assert_eq!(status, 200);
    let metric = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name) && l.contains("kind=\"disk\"") && l.contains("role=\"cas\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} for the disk tier in:\n{body}"))
    };
    (metric("strata_tier_written_bytes_total"), metric("strata_tier_stored_written_bytes_total"))
}

#[tokio::test]
async fn blobs_uploaded_either_way_read_back_either_way_in_any_range() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(CONFIG, dir.path()).await;
    let plain = text(1, 3 * MIB + 12_345);
    bytestream_write(&server, &plain, 256 << 10).await;
    let packed = text(2, 2 * MIB + 99);
    assert_eq!(write_compressed(&server, &packed).await, zstd::bulk::compress(&packed, 3).unwrap().len() as i64);

    for data in [&plain, &packed] {
        let d = sha256(data);
        assert_eq!(bytestream_read(&server, &d, 0, 0).await.unwrap(), *data);
        for offset in [0, 1, MIB - 1, MIB, MIB + 1, 2 * MIB, data.len() - 1, data.len()] {
            assert_eq!(read_compressed(&server, &d, offset as i64).await, data[offset..], "compressed read from {offset}");
        }
        for (offset, limit) in [(0, 1), (MIB - 1, 2), (MIB, MIB), (MIB + 7, MIB), (2 * MIB - 1, 100)] {
            let got = bytestream_read(&server, &d, offset as i64, limit as i64).await.unwrap();
            assert_eq!(got, data[offset..offset + limit], "identity read of {limit} from {offset}");
        }
    }
    let (written, stored) = disk_written(&server).await;
    assert!(written >= (plain.len() + packed.len()) as f64, "written {written}");
    assert!(stored * 2.0 < written, "stored {stored} of {written}: text compresses well over half");
}

#[tokio::test]
async fn batch_reads_hand_out_stored_frames_and_identity_where_asked() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(CONFIG, dir.path()).await;
    let mut cas = server.cas().await;
    let data = text(3, 200_000);
    upload(&mut cas, "", &[&data]).await;
    let zstd_read = reapi::BatchReadBlobsRequest { digests: vec![sha256(&data)], acceptable_compressors: vec![ZSTD], ..Default::default() };
    let answer = &cas.batch_read_blobs(zstd_read).await.unwrap().into_inner().responses[0];
    assert_eq!(answer.compressor, ZSTD);
    assert!(answer.data.len() * 2 < data.len());
    assert_eq!(zstd::stream::decode_all(&answer.data[..]).unwrap(), data);
    let plain_read = reapi::BatchReadBlobsRequest { digests: vec![sha256(&data)], ..Default::default() };
    let answer = &cas.batch_read_blobs(plain_read).await.unwrap().into_inner().responses[0];
    assert_eq!((answer.compressor, &answer.data), (0, &data));
}

#[tokio::test]
async fn compressed_records_survive_a_restart_and_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<Vec<u8>> = (0..40).map(|i| text(100 + i, 10_000 + i as usize * 1_000)).collect();
    {
        let server = TestServer::start_in(CONFIG, dir.path()).await;
        upload(&mut server.cas().await, "", &blobs[..20].iter().map(|b| &b[..]).collect::<Vec<_>>()).await;
        server.stop().await;
    }
    // The same directory under `strata serve`, killed with SIGKILL right after its acknowledgements.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config_path = dir.path().join("strata.yaml");
    std::fs::write(&config_path, CONFIG.replace("listen: 127.0.0.1:0\nhttp", &format!("listen: 127.0.0.1:{port}\nhttp"))).unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--config", config_path.to_str().unwrap(), "--data-dir", data_dir])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut cas = loop {
        let url = format!("http://127.0.0.1:{port}");
        match reapi::content_addressable_storage_client::ContentAddressableStorageClient::connect(url).await {
            Ok(cas) => break cas,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("strata serve did not start: {e}"),
        }
    };
    upload(&mut cas, "", &blobs[20..].iter().map(|b| &b[..]).collect::<Vec<_>>()).await;
    child.kill().unwrap();
    child.wait().unwrap();

    let server = TestServer::start_in(CONFIG, dir.path()).await;
    let digests: Vec<reapi::Digest> = blobs.iter().map(|b| sha256(b)).collect();
    assert!(missing(&mut server.cas().await, "", digests.clone()).await.is_empty(), "every acknowledged blob is there");
    for (data, d) in blobs.iter().zip(&digests) {
        assert_eq!(&bytestream_read(&server, d, 0, 0).await.unwrap(), data);
        assert_eq!(&read_compressed(&server, d, 0).await, data);
    }
}
