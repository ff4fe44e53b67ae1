//! Execution the way the rest of the REAPI ecosystem speaks it, over gRPC on 127.0.0.1: the RWAPI
//! dialect of buildbox-worker (driven here by a hand-held Bots client, call by call), paths as REAPI
//! defines them (BuildStream's `../../../install`), platform properties, and the hermetic runner.
//! The real buildbox-worker, recc, Bazel 7 and BuildStream run in `tests/sid/run.sh`.

mod common;

use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use common::exec::*;
use common::TestServer;
use prost::Message;
use strata::protocol::rwapi::{self, bots_client::BotsClient, BotSession, BotStatus, Lease, LeaseState};
use tonic::transport::Channel;

/// Long session timeouts, so a held long poll would last 30 s: every "answered at once" below is
/// bounded by `PROMPT`, far below that.
const RWAPI_CONFIG: &str = r#"
listen: 127.0.0.1:0
storage:
  main:
    cas:
      - memory: { max_size: 64MiB, max_blob: 16MiB }
    action_cache:
      - memory: { max_size: 8MiB }
instances:
  - { name: "", storage: main, services: [cas, action_cache, execution] }
execution:
  queue_timeout: 3s
  bot_session_timeout: 120s
"#;

const PROMPT: Duration = Duration::from_secs(10);

fn worker(bot_id: &str, status: BotStatus, leases: Vec<Lease>) -> BotSession {
    let property = |key: &str, value: &str| rwapi::Property { key: key.into(), value: value.into() };
    BotSession {
        bot_id: bot_id.into(),
        status: status as i32,
        worker: Some(rwapi::Worker {
            devices: vec![rwapi::Device { handle: bot_id.into(), properties: vec![property("OSFamily", "linux")] }],
            properties: vec![property("OSFamily", "linux")],
            configs: vec![property("capacity", "1"), property("priority", "0")],
        }),
        leases,
        ..Default::default()
    }
}

/// `worker`, healthy and idle, with the config `key` set to `value`.
fn worker_with(bot_id: &str, key: &str, value: &str) -> BotSession {
    let mut session = worker(bot_id, BotStatus::Ok, vec![]);
    let configs = &mut session.worker.as_mut().unwrap().configs;
    configs.retain(|c| c.key != key);
    configs.push(rwapi::Property { key: key.into(), value: value.into() });
    session
}

async fn bots_client(server: &TestServer) -> BotsClient<Channel> {
    BotsClient::new(server.channel().await)
}

async fn create(client: &mut BotsClient<Channel>, session: BotSession) -> BotSession {
    let request = rwapi::CreateBotSessionRequest { parent: String::new(), bot_session: Some(session) };
    client.create_bot_session(request).await.unwrap().into_inner()
}

/// One UpdateBotSession, which must be answered within `PROMPT`.
async fn update(client: &mut BotsClient<Channel>, name: &str, mut session: BotSession) -> Result<BotSession, tonic::Status> {
    session.name = name.into();
    let request = rwapi::UpdateBotSessionRequest { name: name.into(), bot_session: Some(session), update_mask: None };
    let call = client.update_bot_session(request);
    tokio::time::timeout(PROMPT, call).await.expect("answered at once, not held as a long poll").map(|r| r.into_inner())
}

fn lease(id: &str, state: LeaseState) -> Lease {
    Lease { id: id.into(), state: state as i32, ..Default::default() }
}

fn action_of(lease: &Lease) -> reapi::Action {
    let payload = lease.payload.as_ref().expect("the lease carries its payload");
    rwapi::unpack::<reapi::Action>(payload, rwapi::ACTION).expect("the payload is an Action").unwrap()
}

#[tokio::test]
async fn buildbox_worker_dialect_leases_keep_their_payload_and_accepting_one_is_answered_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(RWAPI_CONFIG, tmp.path()).await;
    let mut bots = bots_client(&server).await;
    let session = create(&mut bots, worker("bb-1", BotStatus::Ok, vec![])).await;
    let name = session.name.clone();
    assert!(session.leases.is_empty());

    // An idle bot with room is held until work comes, then woken at once.
    let digest = action(&server, &sh("echo from-buildbox")).await;
    let poll = tokio::spawn({
        let mut bots = bots.clone();
        let name = name.clone();
        async move { update(&mut bots, &name, worker("bb-1", BotStatus::Ok, vec![])).await.unwrap() }
    });
    let mut stream = client(&server).await.execute(request(&digest)).await.unwrap().into_inner();
    let execute = tokio::spawn(async move {
        let mut last = None;
        while let Some(op) = futures::StreamExt::next(&mut stream).await {
            last = Some(op.unwrap());
        }
        response(&last.unwrap())
    });
    let assigned = poll.await.unwrap();
    assert_eq!(assigned.leases.len(), 1);
    let pending = &assigned.leases[0];
    assert_eq!(pending.state, LeaseState::Pending as i32);
    assert!(action_of(pending).command_digest.is_some());

    // Accepting the lease is a change: answered at once, and the ACTIVE lease still has its payload
    // (buildbox-worker reads the Action from it).
    let active = update(&mut bots, &name, worker("bb-1", BotStatus::Ok, vec![lease(&pending.id, LeaseState::Active)])).await.unwrap();
    assert_eq!(active.leases.len(), 1);
    assert_eq!(active.leases[0].state, LeaseState::Active as i32);
    assert_eq!(action_of(&active.leases[0]), action_of(pending));

    // A bot without a free slot is answered at once, even with nothing new to say.
    let busy = update(&mut bots, &name, worker("bb-1", BotStatus::Ok, vec![lease(&pending.id, LeaseState::Active)])).await.unwrap();
    assert_eq!(busy.leases[0].state, LeaseState::Active as i32);

    // The result is delivered to the client at once, while the bot's call, which now waits only
    // for work, is held; the next action comes back on that call without the bot asking again.
    let result = reapi::ActionResult { exit_code: 0, stdout_raw: b"from-buildbox\n".to_vec(), ..Default::default() };
    let done = Lease {
        result: Some(rwapi::pack(rwapi::ACTION_RESULT, &result)),
        status: Some(bazel_remote_apis::google::rpc::Status::default()),
        ..lease(&pending.id, LeaseState::Completed)
    };
    let report = tokio::spawn({
        let mut bots = bots.clone();
        let name = name.clone();
        async move { update(&mut bots, &name, worker("bb-1", BotStatus::Ok, vec![done])).await.unwrap() }
    });
    let response = tokio::time::timeout(PROMPT, execute).await.unwrap().unwrap();
    assert_eq!(response.result.unwrap().stdout_raw, b"from-buildbox\n");
    assert!(!report.is_finished(), "a bot with room that reported a result is held until work comes");
    let next = action(&server, &sh("echo next")).await;
    let _stream = client(&server).await.execute(request(&next)).await.unwrap().into_inner();
    let after = report.await.unwrap();
    assert_eq!(after.leases.len(), 1);
    assert_eq!(after.leases[0].state, LeaseState::Pending as i32);
}

#[tokio::test]
async fn a_restarted_bot_gets_its_old_leases_back_at_once_and_unhealthy_bots_get_no_work() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(RWAPI_CONFIG, tmp.path()).await;
    let mut bots = bots_client(&server).await;
    let first = create(&mut bots, worker("bb-2", BotStatus::Ok, vec![])).await;
    let digest = action(&server, &sh("true")).await;
    let mut exec = client(&server).await;
    let _stream = exec.execute(request(&digest)).await.unwrap().into_inner();
    let assigned = update(&mut bots, &first.name, worker("bb-2", BotStatus::Ok, vec![])).await.unwrap();
    assert_eq!(assigned.leases.len(), 1);
    update(&mut bots, &first.name, worker("bb-2", BotStatus::Ok, vec![lease(&assigned.leases[0].id, LeaseState::Active)])).await.unwrap();

    // The worker restarts with the same bot id: its lease is queued again at once (not after the
    // 120 s session timeout) and handed to the new session; the old session is gone.
    let second = create(&mut bots, worker("bb-2", BotStatus::Ok, vec![])).await;
    let again = if second.leases.is_empty() {
        update(&mut bots, &second.name, worker("bb-2", BotStatus::Ok, vec![])).await.unwrap()
    } else {
        second.clone()
    };
    assert_eq!(again.leases.len(), 1);
    assert_eq!(action_of(&again.leases[0]), action_of(&assigned.leases[0]));
    let err = update(&mut bots, &first.name, worker("bb-2", BotStatus::Ok, vec![])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // An UNHEALTHY bot is answered at once and gets nothing; once OK again it gets the work.
    let sick = create(&mut bots, worker("bb-3", BotStatus::Unhealthy, vec![])).await;
    let other = create(&mut bots, worker("bb-4", BotStatus::Ok, vec![])).await;
    let digest = action(&server, &sh("echo second")).await;
    let _second_stream = exec.execute(request(&digest)).await.unwrap().into_inner();
    // Only bb-3 (unhealthy) and bb-4 remain; bb-2 is busy with the first job.
    let nothing = update(&mut bots, &sick.name, worker("bb-3", BotStatus::Unhealthy, vec![])).await.unwrap();
    assert!(nothing.leases.is_empty(), "an unhealthy bot gets no work");
    let took = update(&mut bots, &other.name, worker("bb-4", BotStatus::Ok, vec![])).await.unwrap();
    assert_eq!(took.leases.len(), 1, "the healthy bot has the job");
}

#[tokio::test]
async fn an_action_no_bot_can_run_fails_at_the_queue_timeout_naming_the_unmatched_properties() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(RWAPI_CONFIG, tmp.path()).await;
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 1, &[]);
    let mut spec = sh("true");
    spec.platform = vec![("ISA".into(), "sparc".into()), ("OSFamily".into(), "linux".into())];
    let response = execute(&server, &action(&server, &spec).await).await;
    let status = response.status.unwrap();
    assert_eq!(status.code, tonic::Code::Unavailable as i32);
    assert!(status.message.contains("ISA=sparc") && !status.message.contains("OSFamily=linux,"), "{}", status.message);
    assert!(status.message.contains("no connected bot offers"), "{}", status.message);

    // The bot offers OSFamily and ISA of this machine without being told to.
    let isa = if cfg!(target_arch = "x86_64") { "x86-64" } else { std::env::consts::ARCH };
    let mut spec = sh("echo matched");
    spec.platform = vec![("ISA".into(), isa.into()), ("OSFamily".into(), "linux".into())];
    let result = execute(&server, &action(&server, &spec).await).await.result.unwrap();
    assert_eq!(read_blob(&server, &result.stdout_digest).await, b"matched\n");
    bot.stop().await;
}

#[tokio::test]
async fn outputs_may_leave_the_working_directory_but_not_the_input_root() {
    let (server, tmp) = start().await;
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 1, &[]);
    // BuildStream's shape: a deep working directory, the install directory three levels up, and
    // "." for the working directory itself.
    let mut spec = sh("mkdir -p ../../../install && echo built > ../../../install/f && echo here > h.txt");
    spec.working_directory = "build/project/element".into();
    spec.output_paths = vec!["../../../install".into(), ".".into()];
    let response = execute(&server, &action(&server, &spec).await).await;
    assert_eq!(response.status.as_ref().map(|s| s.code), Some(0), "{:?}", response.status);
    let result = response.result.unwrap();
    assert_eq!(result.exit_code, 0, "{}", String::from_utf8_lossy(&read_blob(&server, &result.stderr_digest).await));
    let paths: Vec<&str> = result.output_directories.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths, ["../../../install", "."]);
    let tree = |i: usize| {
        let digest = result.output_directories[i].tree_digest.clone();
        let server = &server;
        async move { reapi::Tree::decode(read_blob(server, &digest).await.as_slice()).unwrap() }
    };
    let install = tree(0).await.root.unwrap();
    assert_eq!(install.files[0].name, "f");
    assert_eq!(read_blob(&server, &install.files[0].digest).await, b"built\n");
    assert_eq!(tree(1).await.root.unwrap().files[0].name, "h.txt");

    // Leaving the input root is refused before anything runs.
    for (workdir, output) in [("a/b", "../../../x"), ("", ".."), ("a", "/abs")] {
        let mut spec = sh("true");
        spec.working_directory = workdir.into();
        spec.output_paths = vec![output.into()];
        let err = execute_all(&server, request(&action(&server, &spec).await)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{workdir:?} {output:?}");
        assert!(err.message().contains(output), "{}", err.message());
    }
    bot.stop().await;
}

/// Uploads a Directory tree of (path, bytes, executable) files; returns the root digest.
async fn upload_tree(server: &TestServer, files: &[(&str, Vec<u8>, bool)]) -> reapi::Digest {
    #[derive(Default)]
    struct Node {
        files: Vec<reapi::FileNode>,
        dirs: std::collections::BTreeMap<String, Node>,
    }
    fn encode(node: &Node, blobs: &mut Vec<Vec<u8>>) -> reapi::Digest {
        let mut dir = reapi::Directory { files: node.files.clone(), ..Default::default() };
        dir.files.sort_by(|a, b| a.name.cmp(&b.name));
        for (name, child) in &node.dirs {
            dir.directories.push(reapi::DirectoryNode { name: name.clone(), digest: Some(encode(child, blobs)) });
        }
        let bytes = dir.encode_to_vec();
        let digest = common::sha256(&bytes);
        blobs.push(bytes);
        digest
    }
    let mut root = Node::default();
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    for (path, data, executable) in files {
        let mut parts: Vec<&str> = path.split('/').collect();
        let name = parts.pop().unwrap();
        let node = parts.iter().fold(&mut root, |n, p| n.dirs.entry(p.to_string()).or_default());
        node.files.push(reapi::FileNode { name: name.into(), digest: Some(common::sha256(data)), is_executable: *executable, node_properties: None });
        blobs.push(data.clone());
    }
    let digest = encode(&root, &mut blobs);
    let mut cas = server.cas().await;
    let refs: Vec<&[u8]> = blobs.iter().map(|b| b.as_slice()).collect();
    for chunk in refs.chunks(8) {
        common::upload(&mut cas, "", chunk).await;
    }
    digest
}

#[tokio::test]
async fn the_hermetic_runner_makes_the_input_root_the_sandbox_root() {
    assert!(
        std::path::Path::new("/usr/bin/bwrap").exists(),
        "this test needs bubblewrap (apt-get install bubblewrap; .ci/run installs it)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(RWAPI_CONFIG, &tmp.path().join("server")).await;
    // A minimal system of the input root's own: the host's dash and the libraries it needs.
    let read = |p: &str| std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    let libc = std::fs::canonicalize("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
    let loader = std::fs::canonicalize("/lib64/ld-linux-x86-64.so.2").unwrap();
    let root = upload_tree(
        &server,
        &[
            ("bin/sh", read("/bin/dash"), true),
            ("lib/x86_64-linux-gnu/libc.so.6", read(libc.to_str().unwrap()), false),
            ("lib64/ld-linux-x86-64.so.2", read(loader.to_str().unwrap()), true),
            ("etc/marker", b"from the input root\n".to_vec(), false),
        ],
    )
    .await;
    let bot = InProcessBot::start_with(format!("grpc://{}", server.addr), None, &tmp.path().join("bot"), 1, &[], "hermetic");
    let mut spec = sh(
        "read line < /etc/marker; echo \"$line\"; \
         if [ -e /usr/bin/python3 ]; then echo host-visible; else echo host-hidden; fi; \
         echo $PWD; echo made > /install/out; echo tmp > /tmp/t && echo tmp-writable",
    );
    spec.input_root = Some(root);
    spec.working_directory = "work".into();
    // The install directory exists before the command runs: outputs' parents are created.
    spec.output_paths = vec!["../install/out".into()];
    let result = execute(&server, &action(&server, &spec).await).await.result.unwrap();
    let stdout = String::from_utf8(read_blob(&server, &result.stdout_digest).await).unwrap();
    let stderr = String::from_utf8_lossy(&read_blob(&server, &result.stderr_digest).await).into_owned();
    assert_eq!(stdout, "from the input root\nhost-hidden\n/work\ntmp-writable\n", "stderr: {stderr}");
    assert_eq!(result.output_files[0].path, "../install/out");
    assert_eq!(read_blob(&server, &result.output_files[0].digest).await, b"made\n");
    bot.stop().await;
}

#[tokio::test]
async fn work_goes_to_the_bot_with_the_lowest_priority_value() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(RWAPI_CONFIG, tmp.path()).await;
    let mut bots = bots_client(&server).await;
    let with_priority = |id: &str, priority: &str| worker_with(id, "priority", priority);
    let _low = create(&mut bots, with_priority("bb-low", "5")).await;
    let high = create(&mut bots, with_priority("bb-high", "1")).await;
    let digest = action(&server, &sh("true")).await;
    let _stream = client(&server).await.execute(request(&digest)).await.unwrap().into_inner();
    let took = update(&mut bots, &high.name, with_priority("bb-high", "1")).await.unwrap();
    assert_eq!(took.leases.len(), 1, "the bot with priority 1 gets the job");
    let bad = rwapi::CreateBotSessionRequest { parent: String::new(), bot_session: Some(with_priority("bb-bad", "soon")) };
    let err = bots.create_bot_session(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("priority"), "{}", err.message());
}

#[tokio::test]
async fn a_bot_that_asks_gets_each_pending_leases_command_as_stored_and_other_bots_the_action_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(RWAPI_CONFIG, tmp.path()).await;
    let mut bots = bots_client(&server).await;
    let asking = |id: &str, value: &str| worker_with(id, rwapi::COMMAND_IN_LEASE, value);
    let strata_bot = create(&mut bots, asking("strata-1", "true")).await;
    let digest = action(&server, &sh("echo with-command")).await;
    let _first = client(&server).await.execute(request(&digest)).await.unwrap().into_inner();
    let took = update(&mut bots, &strata_bot.name, asking("strata-1", "true")).await.unwrap();
    assert_eq!(took.leases.len(), 1);
    let payload = took.leases[0].payload.as_ref().unwrap();
    let both = rwapi::unpack::<rwapi::ActionAndCommand>(payload, rwapi::ACTION_AND_COMMAND).expect("Action and Command").unwrap();
    let stored_action = read_blob(&server, &Some(digest.clone())).await;
    assert_eq!(both.action.as_ref().unwrap().command_digest, reapi::Action::decode(stored_action.as_slice()).unwrap().command_digest);
    let command_digest = both.action.unwrap().command_digest;
    assert_eq!(both.command, read_blob(&server, &command_digest).await, "the Command's bytes as stored");
    // Once ACTIVE, the lease, repeated in every answer, carries the Action alone.
    let mut accepting = asking("strata-1", "true");
    accepting.leases = vec![lease(&took.leases[0].id, LeaseState::Active)];
    let active = update(&mut bots, &strata_bot.name, accepting).await.unwrap();
    assert_eq!(active.leases[0].state, LeaseState::Active as i32);
    assert_eq!(action_of(&active.leases[0]).command_digest, command_digest);

    // A bot that does not ask (buildbox-worker, BuildGrid's) gets the Action alone, as before; the
    // asking bot has no free slot, so the next action goes to this one.
    let plain = create(&mut bots, worker("bb-plain", BotStatus::Ok, vec![])).await;
    let digest = action(&server, &sh("echo without")).await;
    let _second = client(&server).await.execute(request(&digest)).await.unwrap().into_inner();
    let took = update(&mut bots, &plain.name, worker("bb-plain", BotStatus::Ok, vec![])).await.unwrap();
    assert_eq!(took.leases.len(), 1);
    assert_eq!(took.leases[0].payload.as_ref().unwrap().type_url, format!("type.googleapis.com/{}", rwapi::ACTION));
    let stored_action = read_blob(&server, &Some(digest)).await;
    assert_eq!(action_of(&took.leases[0]).command_digest, reapi::Action::decode(stored_action.as_slice()).unwrap().command_digest);

    // Only true or false is understood.
    let bad = rwapi::CreateBotSessionRequest { parent: String::new(), bot_session: Some(asking("strata-bad", "yes please")) };
    let err = bots.create_bot_session(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains(rwapi::COMMAND_IN_LEASE) && err.message().contains("true or false"), "{}", err.message());
}

#[tokio::test]
async fn strata_bot_runs_the_command_sent_with_its_lease_without_fetching_it() {
    // The bot's CAS is another, empty server: an action with no inputs needs nothing from it but
    // the Command, which comes with the lease. Its stdout is uploaded there.
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(RWAPI_CONFIG, &tmp.path().join("server")).await;
    let cas = TestServer::start_in(RWAPI_CONFIG, &tmp.path().join("cas")).await;
    let bot = InProcessBot::start_with(format!("grpc://{}", server.addr), Some(format!("grpc://{}", cas.addr)), &tmp.path().join("bot"), 1, &[], "host");
    let response = execute(&server, &action(&server, &sh("echo ran")).await).await;
    let result = response.result.unwrap_or_else(|| panic!("no result: {:?}", response.status));
    assert_eq!(result.exit_code, 0);
    assert_eq!(read_blob(&cas, &result.stdout_digest).await, b"ran\n");
    bot.stop().await;
}

#[tokio::test]
async fn a_command_too_large_for_an_answer_goes_as_its_action_alone_and_the_bot_fetches_it() {
    // 12 arguments of 100 KiB (each under Linux's limit for one argument): a Command of 1.2 MB, more
    // than one answer carries. Inlined, a few such leases would pass gRPC's 4 MiB message limit and
    // make every call of the bot fail.
    let mut spec = sh("echo $#");
    spec.args.extend((0..12).map(|i| format!("{i}{}", "x".repeat(100 << 10))));
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(RWAPI_CONFIG, &tmp.path().join("held")).await;
    let mut bots = bots_client(&server).await;
    let asking = worker_with("strata-1", rwapi::COMMAND_IN_LEASE, "true");
    let session = create(&mut bots, asking.clone()).await;
    let _stream = client(&server).await.execute(request(&action(&server, &spec).await)).await.unwrap().into_inner();
    let took = update(&mut bots, &session.name, asking).await.unwrap();
    assert_eq!(took.leases[0].payload.as_ref().unwrap().type_url, format!("type.googleapis.com/{}", rwapi::ACTION));

    // `strata bot` fetches such a Command itself and runs it.
    let server = TestServer::start_in(RWAPI_CONFIG, &tmp.path().join("run")).await;
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 1, &[]);
    let response = execute(&server, &action(&server, &spec).await).await;
    let result = response.result.unwrap_or_else(|| panic!("no result: {:?}", response.status));
    assert_eq!(read_blob(&server, &result.stdout_digest).await, b"11\n");
    bot.stop().await;
}

#[tokio::test]
async fn jobs_that_share_one_large_command_keep_at_most_64_mib_of_copies() {
    use bazel_remote_apis::google::longrunning::{operations_client::OperationsClient, CancelOperationRequest};
    // One Command of about 1 MB, stored once, named by 80 Actions that differ only in their timeout:
    // a few hundred bytes of request per job. The copies the jobs keep are bounded; the rest keep
    // none (a bot would fetch theirs), and all are given back when the jobs go.
    let tmp = tempfile::tempdir().unwrap();
    let config = format!("{}http: {{ listen: 127.0.0.1:0 }}\n", RWAPI_CONFIG.replace("queue_timeout: 3s", "queue_timeout: 1h"));
    let server = TestServer::start_in(&config, tmp.path()).await;
    let mut spec = sh("true");
    spec.args.extend((0..10).map(|i| format!("{i}").repeat(100_000)));
    let mut names = Vec::new();
    for seconds in 1..=80 {
        spec.timeout = Some(Duration::from_secs(seconds));
        let digest = action(&server, &spec).await;
        let mut stream = client(&server).await.execute(request(&digest)).await.unwrap().into_inner();
        names.push(stream.message().await.unwrap().unwrap().name);
    }
    let scrape = common::scrape(&server).await;
    assert_eq!(common::sample(&scrape, "strata_scheduler_queued", &[]), 80.0);
    let held = common::sample(&scrape, "strata_scheduler_command_bytes", &[]);
    let command_len = 1_000_000.0;
    assert!(held <= (64 << 20) as f64 && held > (64 << 20) as f64 - 2.0 * command_len, "held {held} bytes");
    // The jobs go (cancelled here; expired or done alike), and their copies with them.
    let mut operations = OperationsClient::new(server.channel().await);
    for name in names {
        operations.cancel_operation(CancelOperationRequest { name }).await.unwrap();
    }
    let scrape = common::scrape(&server).await;
    assert_eq!(common::sample(&scrape, "strata_scheduler_queued", &[]), 0.0);
    assert_eq!(common::sample(&scrape, "strata_scheduler_command_bytes", &[]), 0.0, "every copy given back");
}
