//! zstd between a site cache and its upstream: a Strata upstream advertises zstd, so the site's
//! remote tier sends and fetches blobs compressed (batch and ByteStream), and the bytes are the same
//! at both ends. A TCP relay between the two counts what really crosses the wire; with
//! `compression: off` the same transfers take the blobs' full size.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes relayed each way: to the upstream, and back from it.
#[derive(Default)]
struct Wire {
    up: AtomicU64,
    down: AtomicU64,
}

impl Wire {
    fn take(&self) -> (u64, u64) {
        (self.up.swap(0, Ordering::SeqCst), self.down.swap(0, Ordering::SeqCst))
    }
}

async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, count: Arc<Wire>, up: bool) {
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        let counter = if up { &count.up } else { &count.down };
        counter.fetch_add(n as u64, Ordering::SeqCst);
    }
}

/// A plain TCP relay to `target` on 127.0.0.1 that counts the bytes it carries.
async fn relay(target: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<Wire>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let wire = Arc::new(Wire::default());
    let count = wire.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(target).await else { continue };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pump(client_read, server_write, count.clone(), true));
            tokio::spawn(pump(server_read, client_write, count.clone(), false));
        }
    });
    (addr, wire)
}

/// A site whose only CAS tier is the upstream, so that every read goes there.
fn site_config(upstream: std::net::SocketAddr, compression: &str) -> String {
    format!(
        r#"
max_batch_total_size: 4MiB
storage:
  site:
    cas:
      - remote: {{ endpoint: "grpc://{upstream}", timeout: 10s, connect_timeout: 1s, retries: 1{compression} }}
    action_cache:
      - memory: {{ max_size: 1MiB }}
instances:
  - name: ""
    storage: site
    services: [cas, action_cache]
"#
    )
}

async fn batch_read(server: &TestServer, d: &reapi::Digest) -> Vec<u8> {
    let request = reapi::BatchReadBlobsRequest { digests: vec![d.clone()], ..Default::default() };
    let response = server.cas().await.batch_read_blobs(request).await.unwrap().into_inner();
    assert_eq!(response.responses[0].status.as_ref().map_or(0, |s| s.code), 0);
    response.responses.into_iter().next().unwrap().data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_talks_zstd_to_an_upstream_that_offers_it() {
    let upstream = TestServer::start().await;
    let (relayed, wire) = relay(upstream.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let site = TestServer::start_in(&site_config(relayed, ""), dir.path()).await;
    let large = text(1, 5 << 20);
    let small = text(2, 200_000);
    wire.take();

    // Uploads through the site arrive upstream whole, in a fraction of their size.
    bytestream_write(&site, &large, 256 << 10).await;
    upload(&mut site.cas().await, "", &[&small]).await;
    let (up, _) = wire.take();
    let sent = (large.len() + small.len()) as u64;
    assert!(up < sent / 2, "{up} bytes on the wire for {sent} bytes of blobs");
    assert_eq!(bytestream_read(&upstream, &sha256(&large), 0, 0).await.unwrap(), large);
    assert_eq!(batch_read(&upstream, &sha256(&small)).await, small);
    wire.take();

    // Reads through the site come back compressed and are served as they were stored.
    assert_eq!(bytestream_read(&site, &sha256(&large), 0, 0).await.unwrap(), large);
    assert_eq!(batch_read(&site, &sha256(&small)).await, small);
    let (_, down) = wire.take();
    assert!(down < sent / 2, "{down} bytes on the wire for {sent} bytes of blobs");

    // A range from an offset travels compressed too; one with a limit cannot (REAPI), and is exact.
    let at = 3 << 20;
    assert_eq!(bytestream_read(&site, &sha256(&large), at as i64, 0).await.unwrap(), &large[at..]);
    assert_eq!(bytestream_read(&site, &sha256(&large), 1000, 5000).await.unwrap(), &large[1000..6000]);
    // Incompressible blobs go as they are, and still arrive whole.
    let noise = noise(3, 300_000);
    upload(&mut site.cas().await, "", &[&noise]).await;
    assert_eq!(batch_read(&site, &sha256(&noise)).await, noise);
    assert!(missing(&mut site.cas().await, "", vec![sha256(&noise), sha256(&large)]).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_off_sends_blobs_as_they_are() {
    let upstream = TestServer::start().await;
    let (relayed, wire) = relay(upstream.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let site = TestServer::start_in(&site_config(relayed, ", compression: off"), dir.path()).await;
    let large = text(4, 3 << 20);
    wire.take();
    bytestream_write(&site, &large, 256 << 10).await;
    assert_eq!(bytestream_read(&site, &sha256(&large), 0, 0).await.unwrap(), large);
    let (up, down) = wire.take();
    let size = large.len() as u64;
    assert!(up >= size && down >= size, "{up} and {down} bytes on the wire for a {size}-byte blob");
}

#[tokio::test]
async fn remote_compression_is_checked() {
    let upstream = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bad = site_config(upstream.addr, ", compression: { zstd: { level: 40 } }");
    let err = strata::config::Config::parse(&bad, "test").unwrap_err().to_string();
    assert!(err.contains("level 40 must be between 1 and 19"), "{err}");
    let ac = site_config(upstream.addr, "").replace(
        "- memory: { max_size: 1MiB }",
        &format!("- remote: {{ endpoint: \"grpc://{}\", compression: zstd }}", upstream.addr),
    );
    let err = strata::config::Config::parse(&ac, "test").unwrap_err().to_string();
    assert!(err.contains("action_cache[0].compression applies to CAS tiers only"), "{err}");
    drop(dir);
}
