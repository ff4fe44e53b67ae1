//! Remote execution helpers: actions uploaded to a test server, Execute streams read to their end,
//! and bots (in process, or the real `strata bot` binary) attached to it.

use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::build::bazel::remote::execution::v2::execution_client::ExecutionClient;
use bazel_remote_apis::google::longrunning::{operation, Operation};
use futures::StreamExt;
use prost::Message;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use super::{sha256, upload, TestServer};

/// A server with execution on "" (and a cache-only instance), and short timeouts for tests.
pub const EXEC_CONFIG: &str = r#"
listen: 127.0.0.1:0
storage:
  main:
    cas:
      - memory: { max_size: 64MiB }
    action_cache:
      - memory: { max_size: 8MiB }
instances:
  - name: ""
    storage: main
    services: [cas, action_cache, execution]
  - name: "cache-only"
    storage: main
    services: [cas, action_cache]
execution:
  queue_timeout: 4s
  max_execution_timeout: 60s
  bot_session_timeout: 1s
  max_attempts: 3
"#;

pub async fn start() -> (TestServer, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(EXEC_CONFIG, &tmp.path().join("server")).await;
    (server, tmp)
}

/// What an action is made of.
#[derive(Default, Clone)]
pub struct Spec {
    pub args: Vec<String>,
    pub output_files: Vec<String>,
    pub output_directories: Vec<String>,
    pub output_paths: Vec<String>,
    pub platform: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    pub do_not_cache: bool,
    pub working_directory: String,
    pub input_root: Option<reapi::Digest>,
}

pub fn sh(script: &str) -> Spec {
    Spec { args: vec!["/bin/sh".into(), "-c".into(), script.into()], ..Default::default() }
}

fn platform(pairs: &[(String, String)]) -> Option<reapi::Platform> {
    let properties = pairs.iter().map(|(k, v)| reapi::platform::Property { name: k.clone(), value: v.clone() }).collect();
    Some(reapi::Platform { properties })
}

/// Uploads the Command, an empty input root (unless given) and the Action; returns the Action's digest.
#[allow(deprecated)]
pub async fn action(server: &TestServer, spec: &Spec) -> reapi::Digest {
    let command = reapi::Command {
        arguments: spec.args.clone(),
        output_files: spec.output_files.clone(),
        output_directories: spec.output_directories.clone(),
        output_paths: spec.output_paths.clone(),
        working_directory: spec.working_directory.clone(),
        environment_variables: vec![reapi::command::EnvironmentVariable { name: "PATH".into(), value: "/usr/bin:/bin".into() }],
        ..Default::default()
    }
    .encode_to_vec();
    let empty_dir = reapi::Directory::default().encode_to_vec();
    let input_root = spec.input_root.clone().unwrap_or_else(|| sha256(&empty_dir));
    let action = reapi::Action {
        command_digest: Some(sha256(&command)),
        input_root_digest: Some(input_root),
        timeout: spec.timeout.map(|t| bazel_remote_apis::google::protobuf::Duration { seconds: t.as_secs() as i64, nanos: t.subsec_nanos() as i32 }),
        do_not_cache: spec.do_not_cache,
        platform: if spec.platform.is_empty() { None } else { platform(&spec.platform) },
        ..Default::default()
    }
    .encode_to_vec();
    let mut cas = server.cas().await;
    upload(&mut cas, "", &[&command, &empty_dir, &action]).await;
    sha256(&action)
}

pub async fn client(server: &TestServer) -> ExecutionClient<Channel> {
    ExecutionClient::new(server.channel().await)
}

pub fn request(digest: &reapi::Digest) -> reapi::ExecuteRequest {
    reapi::ExecuteRequest { action_digest: Some(digest.clone()), ..Default::default() }
}

/// Every Operation message of an Execute call, to the last.
pub async fn execute_all(server: &TestServer, request: reapi::ExecuteRequest) -> Result<Vec<Operation>, tonic::Status> {
    let mut stream = client(server).await.execute(request).await?.into_inner();
    let mut ops = Vec::new();
    while let Some(op) = stream.next().await {
        ops.push(op?);
    }
    Ok(ops)
}

pub fn response(op: &Operation) -> reapi::ExecuteResponse {
    assert!(op.done, "operation {} is not done", op.name);
    match op.result.as_ref().unwrap() {
        operation::Result::Response(any) => reapi::ExecuteResponse::decode(any.value.as_slice()).unwrap(),
        operation::Result::Error(status) => panic!("operation failed: {status:?}"),
    }
}

pub fn stage(op: &Operation) -> i32 {
    reapi::ExecuteOperationMetadata::decode(op.metadata.as_ref().unwrap().value.as_slice()).unwrap().stage
}

/// Executes and returns the final response.
pub async fn execute(server: &TestServer, digest: &reapi::Digest) -> reapi::ExecuteResponse {
    let ops = execute_all(server, request(digest)).await.unwrap();
    response(ops.last().unwrap())
}

/// A blob's bytes from the server's CAS.
pub async fn read_blob(server: &TestServer, digest: &Option<reapi::Digest>) -> Vec<u8> {
    let digest = digest.clone().unwrap();
    super::bytestream_read(server, &digest, 0, 0).await.unwrap()
}

/// A bot running in this process until the returned sender is dropped or fired.
pub struct InProcessBot {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    pub id: String,
}

impl InProcessBot {
    pub fn start(server: &TestServer, work_dir: &std::path::Path, capacity: usize, properties: &[(&str, &str)]) -> InProcessBot {
        InProcessBot::start_with(format!("grpc://{}", server.addr), None, work_dir, capacity, properties, "host")
    }

    pub fn start_with(
        server: String,
        cas: Option<String>,
        work_dir: &std::path::Path,
        capacity: usize,
        properties: &[(&str, &str)],
        runner: &str,
    ) -> InProcessBot {
        InProcessBot::run(InProcessBot::args(server, cas, work_dir, capacity, properties, runner))
    }

    /// The arguments `start_with` runs a bot with, to adjust before `run`.
    pub fn args(
        server: String,
        cas: Option<String>,
        work_dir: &std::path::Path,
        capacity: usize,
        properties: &[(&str, &str)],
        runner: &str,
    ) -> strata::bot::BotArgs {
        let id = format!("test-bot-{}", work_dir.file_name().unwrap().to_string_lossy());
        strata::bot::BotArgs {
            server,
            cas,
            instance: String::new(),
            capacity,
            properties: properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            runner: clap::ValueEnum::from_str(runner, false).unwrap(),
            work_dir: work_dir.to_path_buf(),
            bot_id: Some(id.clone()),
            max_input_paths: 1000,
            cache_size: strata::units::ByteSize(64 << 20),
            credentials: Default::default(),
            token: None,
            // These tests watch side effects in their own (root-only) temporary directories.
            run_as: Some("root".into()),
            spawner: Some(env!("CARGO_BIN_EXE_strata").into()),
        }
    }

    pub fn run(args: strata::bot::BotArgs) -> InProcessBot {
        let id = args.bot_id.clone().unwrap_or_default();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            strata::bot::run(args, async { let _ = stopped.await; }).await.unwrap();
        });
        InProcessBot { stop: Some(stop), task, id }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Whether a process id is alive.
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}
