//! The bot's own limits, over gRPC on 127.0.0.1: an input root whose Directory DAG expands to more
//! paths than the bot allows is refused (not staged), outputs larger than a read chunk are streamed
//! from disk and arrive whole, and so do small outputs held in memory.

mod common;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use common::exec::*;
use common::TestServer;
use prost::Message;

const CONFIG: &str = r#"
listen: 127.0.0.1:0
storage:
  main:
    cas:
      - memory: { max_size: 128MiB, max_blob: 32MiB }
    action_cache:
      - memory: { max_size: 8MiB }
instances:
  - { name: "", storage: main, services: [cas, action_cache, execution] }
execution:
  queue_timeout: 10s
"#;

#[tokio::test]
async fn a_directory_dag_that_expands_past_the_bots_limit_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(CONFIG, &tmp.path().join("server")).await;
    // Twelve levels, each naming the level below twice: 13 small blobs, 8,190 directories staged.
    let mut blobs = Vec::new();
    let mut child = reapi::Directory::default().encode_to_vec();
    for _ in 0..12 {
        let digest = common::sha256(&child);
        blobs.push(child);
        let node = |name: &str| reapi::DirectoryNode { name: name.into(), digest: Some(digest.clone()) };
        child = reapi::Directory { directories: vec![node("a"), node("b")], ..Default::default() }.encode_to_vec();
    }
    let root = common::sha256(&child);
    blobs.push(child);
    let mut cas = server.cas().await;
    let refs: Vec<&[u8]> = blobs.iter().map(|b| b.as_slice()).collect();
    common::upload(&mut cas, "", &refs).await;

    // The test bots allow 1,000 paths.
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 1, &[]);
    let mut spec = sh("true");
    spec.input_root = Some(root);
    let response = execute(&server, &action(&server, &spec).await).await;
    let status = response.status.unwrap();
    assert_eq!(status.code, tonic::Code::InvalidArgument as i32, "{}", status.message);
    assert!(status.message.contains("max-input-paths"), "{}", status.message);
    // Action directories are kept for later actions, with nothing in them.
    let mut staged = Vec::new();
    for dir in tmp.path().join("bot/actions").read_dir().unwrap() {
        let root = dir.unwrap().path().join("root");
        staged.extend(root.read_dir().into_iter().flatten().map(|e| e.unwrap().path()));
    }
    assert!(staged.is_empty(), "nothing is left staged: {staged:?}");
    bot.stop().await;
}

#[tokio::test]
async fn large_outputs_are_streamed_and_arrive_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(CONFIG, &tmp.path().join("server")).await;
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 1, &[]);
    // 5 MiB of stdout and a 3 MiB output file: several read chunks each.
    let mut spec = sh("seq 1 800000; head -c 3145728 /dev/zero | tr '\\0' 'z' > big.out");
    spec.output_files = vec!["big.out".into()];
    let result = execute(&server, &action(&server, &spec).await).await.result.unwrap();
    assert_eq!(result.exit_code, 0);
    let stdout = read_blob(&server, &result.stdout_digest).await;
    let expected: String = (1..=800000).map(|i| format!("{i}\n")).collect();
    assert_eq!(stdout.len(), expected.len());
    assert!(stdout == expected.as_bytes());
    let big = read_blob(&server, &result.output_files[0].digest).await;
    assert_eq!(big.len(), 3 << 20);
    assert!(big.iter().all(|&b| b == b'z'));
    bot.stop().await;
}

#[tokio::test]
async fn outputs_held_in_memory_and_those_past_the_budget_all_arrive_whole() {
    // The bot holds small outputs in memory up to 4 MiB an action and empties the action's directory
    // before it uploads them; the outputs past that budget are read from the directory when uploaded.
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(CONFIG, &tmp.path().join("server")).await;
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 1, &[]);
    for held_only in [false, true] {
        let files: u8 = if held_only { 3 } else { 6 };
        let mut spec = sh(&format!("for i in $(seq 1 {files}); do head -c 1048576 /dev/zero | tr '\\0' \"$i\" > o$i; done; echo done"));
        spec.output_files = (1..=files).map(|i| format!("o{i}")).collect();
        let result = execute(&server, &action(&server, &spec).await).await.result.unwrap();
        assert_eq!(result.exit_code, 0, "stderr: {:?}", String::from_utf8_lossy(&read_blob(&server, &result.stderr_digest).await));
        assert_eq!(read_blob(&server, &result.stdout_digest).await, b"done\n");
        assert_eq!(result.output_files.len(), files as usize);
        for (i, output) in (1..=files).zip(&result.output_files) {
            assert_eq!(output.path, format!("o{i}"));
            let data = read_blob(&server, &output.digest).await;
            assert_eq!(data.len(), 1 << 20, "o{i}");
            assert!(data.iter().all(|&b| b == b'0' + i), "o{i} holds other bytes");
        }
        // Either way the directory is kept for the next action, emptied.
        for dir in tmp.path().join("bot/actions").read_dir().unwrap() {
            let left: Vec<_> = dir.unwrap().path().join("root").read_dir().unwrap().map(|e| e.unwrap().path()).collect();
            assert!(left.is_empty(), "left in an action directory: {left:?}");
        }
    }
    bot.stop().await;
}

#[tokio::test]
async fn an_action_whose_inputs_exceed_the_cache_budget_still_gets_every_one() {
    // Files are fetched before they are linked, so the first ones fetched are evicted by the last
    // before the link: they must be fetched again, not reported missing.
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(CONFIG, &tmp.path().join("server")).await;
    let mut args = InProcessBot::args(format!("grpc://{}", server.addr), None, &tmp.path().join("bot"), 1, &[], "host");
    args.cache_size = strata::units::ByteSize(100_000);
    let bot = InProcessBot::run(args);
    let mut cas = server.cas().await;
    let inputs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![b'k' + i; 40_000]).collect();
    let files = inputs
        .iter()
        .enumerate()
        .map(|(i, data)| reapi::FileNode { name: format!("in{i}"), digest: Some(common::sha256(data)), ..Default::default() })
        .collect();
    let dir = reapi::Directory { files, ..Default::default() }.encode_to_vec();
    let mut blobs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    blobs.push(&dir);
    common::upload(&mut cas, "", &blobs).await;
    let mut spec = sh("for f in in0 in1 in2 in3 in4; do head -c 1 $f; wc -c < $f; done");
    spec.input_root = Some(common::sha256(&dir));
    let result = execute(&server, &action(&server, &spec).await).await.result.unwrap();
    assert_eq!(result.exit_code, 0, "stderr: {:?}", String::from_utf8_lossy(&read_blob(&server, &result.stderr_digest).await));
    assert_eq!(read_blob(&server, &result.stdout_digest).await, b"k40000\nl40000\nm40000\nn40000\no40000\n");
    bot.stop().await;
}

#[tokio::test]
async fn the_input_cache_stays_within_its_budget_and_refetches_what_it_evicted() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(CONFIG, &tmp.path().join("server")).await;
    let mut args = InProcessBot::args(format!("grpc://{}", server.addr), None, &tmp.path().join("bot"), 1, &[], "host");
    args.cache_size = strata::units::ByteSize(100_000);
    let bot = InProcessBot::run(args);
    let cache_bytes = || -> u64 {
        std::fs::read_dir(tmp.path().join("bot/cache")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
    };
    // Eight actions, each with its own 40 KB input: the cache keeps two at a time.
    let mut cas = server.cas().await;
    let inputs: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 40_000]).collect();
    for round in 0..2 {
        for (i, data) in inputs.iter().enumerate() {
            let file = reapi::FileNode { name: "in.txt".into(), digest: Some(common::sha256(data)), ..Default::default() };
            let dir = reapi::Directory { files: vec![file], ..Default::default() }.encode_to_vec();
            common::upload(&mut cas, "", &[data, &dir]).await;
            let mut spec = sh(&format!("head -c 3 in.txt; echo {round}"));
            spec.input_root = Some(common::sha256(&dir));
            let result = execute(&server, &action(&server, &spec).await).await.result.unwrap();
            let expected = format!("{0}{0}{0}{round}\n", (b'a' + i as u8) as char);
            assert_eq!(read_blob(&server, &result.stdout_digest).await, expected.as_bytes());
            assert!(cache_bytes() <= 100_000, "{} bytes cached", cache_bytes());
        }
    }
    bot.stop().await;
}
