//! A real S3-compatible server for tests and benchmarks: `s3s` + `s3s-fs` in this process, or the
//! endpoint named by STRATA_TEST_S3_ENDPOINT (CI uses moto), and an SDK client for it.

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

pub const ACCESS_KEY: &str = "strata-test";
pub const SECRET_KEY: &str = "strata-test-secret";

pub struct S3Server {
    pub endpoint: String,
    task: Option<tokio::task::JoinHandle<()>>,
    _root: Option<tempfile::TempDir>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An s3s-fs server on 127.0.0.1, serving a fresh directory.
pub async fn start_s3s() -> S3Server {
    let root = tempfile::tempdir().unwrap();
    let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Connections live in a JoinSet owned by the accept task, so stopping the server ends them too.
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let service = service.clone();
            connections.spawn(async move {
                let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    S3Server { endpoint: format!("http://{addr}"), task: Some(task), _root: Some(root) }
}

/// The server under test: STRATA_TEST_S3_ENDPOINT if set, otherwise s3s-fs in this process.
pub async fn s3_server() -> S3Server {
    match std::env::var("STRATA_TEST_S3_ENDPOINT") {
        Ok(endpoint) => S3Server { endpoint, task: None, _root: None },
        Err(_) => start_s3s().await,
    }
}

pub fn client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

pub async fn new_bucket(endpoint: &str) -> String {
    let name = format!("strata-{}", std::process::id() as u64 * 1000 + rand_suffix());
    client(endpoint).create_bucket().bucket(&name).send().await.unwrap();
    name
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) + (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_micros() as u64 % 1000) * 1000
}

