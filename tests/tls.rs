//! TLS: a Strata upstream serving gRPC over TLS (`tls` in its configuration), and a site cache whose
//! remote tier reaches it with `grpcs://` and a private CA. A site cache that does not trust the
//! upstream's certificate gets UNAVAILABLE naming the upstream, and stores nothing there.

mod common;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::build::bazel::remote::execution::v2::content_addressable_storage_client::ContentAddressableStorageClient;
use common::*;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// A self-signed certificate for 127.0.0.1, written as PEM files; returns (cert path, key path).
fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn upstream_config(cert: &std::path::Path, key: &std::path::Path) -> String {
    format!("{TEST_CONFIG}\ntls: {{ certificate: {cert:?}, key: {key:?} }}\n")
}

fn site_config(upstream: std::net::SocketAddr, ca: Option<&std::path::Path>) -> String {
    let ca = ca.map(|p| format!(", ca_certificate: {p:?}")).unwrap_or_default();
    format!(
        r#"
storage:
  site:
    cas:
      - memory: {{ max_size: 8MiB }}
      - remote: {{ endpoint: "grpcs://{upstream}", timeout: 5s, connect_timeout: 1s, retries: 1{ca} }}
    action_cache:
      - memory: {{ max_size: 1MiB }}
instances:
  - {{ name: "", storage: site, services: [cas, action_cache] }}
"#
    )
}

#[tokio::test]
async fn a_site_cache_reaches_a_tls_upstream_it_trusts_and_no_other() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(tmp.path());
    let upstream = TestServer::start_in(&upstream_config(&cert, &key), &tmp.path().join("upstream")).await;
    let site = TestServer::start_in(&site_config(upstream.addr, Some(&cert)), &tmp.path().join("site")).await;
    let blob = content(1, 3000);
    let mut site_cas = site.cas().await;
    upload(&mut site_cas, "", &[&blob]).await;

    // The upstream has it, as a TLS client that trusts the CA sees.
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(&cert).unwrap()));
    let channel = Endpoint::from_shared(format!("https://{}", upstream.addr)).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let mut upstream_cas = ContentAddressableStorageClient::new(channel);
    assert!(missing(&mut upstream_cas, "", vec![sha256(&blob)]).await.is_empty());

    // Plain gRPC to the TLS upstream does not work.
    let plain = Endpoint::from_shared(format!("http://{}", upstream.addr)).unwrap().connect().await;
    if let Ok(channel) = plain {
        let request = reapi::FindMissingBlobsRequest { blob_digests: vec![sha256(&blob)], ..Default::default() };
        assert!(ContentAddressableStorageClient::new(channel).find_missing_blobs(request).await.is_err());
    }

    // A site cache without the CA does not trust the upstream: UNAVAILABLE naming it.
    let untrusting = TestServer::start_in(&site_config(upstream.addr, None), &tmp.path().join("untrusting")).await;
    let other = content(2, 100);
    let mut cas = untrusting.cas().await;
    let request = reapi::BatchUpdateBlobsRequest {
        requests: vec![reapi::batch_update_blobs_request::Request { digest: Some(sha256(&other)), data: other.clone(), compressor: 0 }],
        ..Default::default()
    };
    let status = cas.batch_update_blobs(request).await.unwrap().into_inner().responses.remove(0).status.unwrap();
    assert_eq!(status.code, tonic::Code::Unavailable as i32, "{status:?}");
    assert!(status.message.contains(&upstream.addr.to_string()), "{}", status.message);
    assert_eq!(missing(&mut upstream_cas, "", vec![sha256(&other)]).await.len(), 1, "nothing reached the upstream");
}

#[tokio::test]
async fn tls_settings_that_cannot_work_are_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, _key) = certificate(tmp.path());
    let missing_key = format!("{TEST_CONFIG}\ntls: {{ certificate: {cert:?}, key: \"/nonexistent/key.pem\" }}\n");
    let mut config = strata::config::Config::parse(&missing_key, "test.yaml").unwrap();
    config.data_dir = tmp.path().join("a");
    let err = strata::server::Server::build(&config).await.err().unwrap().to_string();
    assert!(err.contains("tls.key") && err.contains("/nonexistent/key.pem"), "{err}");

    let ca_without_tls = site_config("127.0.0.1:1".parse().unwrap(), Some(&cert)).replace("grpcs://", "grpc://");
    let mut config = strata::config::Config::parse(&ca_without_tls, "test.yaml").unwrap();
    config.data_dir = tmp.path().join("b");
    let err = strata::server::Server::build(&config).await.err().unwrap().to_string();
    assert!(err.contains("certificate needs a grpcs://"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_bench_drives_a_tls_server_with_the_ca_it_is_given() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(tmp.path());
    let server = TestServer::start_in(&upstream_config(&cert, &key), &tmp.path().join("server")).await;
    let args = |ca: Option<std::path::PathBuf>| strata::bench::BenchArgs {
        credentials: strata::protocol::credentials::CredentialFlags { ca_certificate: ca, ..Default::default() },
        duration: 0.3,
        concurrency: 1,
        ..bench_args(format!("grpcs://{}", server.addr), "write-small")
    };
    let report = strata::bench::run(args(Some(cert.clone()))).await.unwrap();
    assert!(report.ops > 0 && report.errors == 0, "{:?}", report.first_error);
    let untrusted = strata::bench::run(args(None)).await.unwrap_err().to_string();
    assert!(untrusted.contains("cannot reach") || untrusted.contains("GetCapabilities"), "{untrusted}");
}
