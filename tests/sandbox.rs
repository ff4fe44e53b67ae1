//! The sandbox a bot's actions run in, attacked from inside: bubblewrap's view of the host and its
//! capabilities (also as root), inputs an action tries to change for later actions, and a root bot's
//! actions running as an unprivileged user.

mod common;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use common::exec::*;
use prost::Message;

/// A cached input file `f` holding `good\n`, uploaded with its input root; the root's digest.
async fn root_with_one_file(server: &common::TestServer) -> reapi::Digest {
    let data = b"good\n".to_vec();
    let root = reapi::Directory {
        files: vec![reapi::FileNode { name: "f".into(), digest: Some(common::sha256(&data)), ..Default::default() }],
        ..Default::default()
    }
    .encode_to_vec();
    common::upload(&mut server.cas().await, "", &[&data, &root]).await;
    common::sha256(&root)
}

#[tokio::test]
async fn bubblewrap_sandboxes_the_action() {
    assert!(
        std::path::Path::new("/usr/bin/bwrap").exists(),
        "this test needs bubblewrap (apt-get install bubblewrap; .ci/run installs it)"
    );
    let (server, tmp) = start().await;
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let host_tmp_marker = format!("/tmp/strata-bwrap-test-{}", std::process::id());
    let bot = InProcessBot::start_with(format!("grpc://{}", server.addr), None, &tmp.path().join("bot"), 1, &[], "bubblewrap");
    let connect = format!("python3 -c \"import socket; socket.create_connection(('127.0.0.1', {}), timeout=2)\"", server.addr.port());
    let script = format!(
        "echo inside > mine.txt && cat mine.txt; \
         touch {outside}/x 2>/dev/null && echo wrote-outside; \
         touch /usr/strata-x 2>/dev/null && echo wrote-usr; \
         touch {marker} && ls /tmp | wc -l; \
         {connect} 2>/dev/null && echo net-open || echo net-closed",
        outside = outside.display(),
        marker = host_tmp_marker,
    );
    let mut spec = sh(&script);
    spec.output_files = vec!["mine.txt".into()];
    let result = execute(&server, &action(&server, &spec).await).await.result.unwrap();
    let stdout = String::from_utf8(read_blob(&server, &result.stdout_digest).await).unwrap();
    assert_eq!(stdout, "inside\n1\nnet-closed\n", "stderr: {}", String::from_utf8_lossy(&read_blob(&server, &result.stderr_digest).await));
    assert_eq!(read_blob(&server, &result.output_files[0].digest).await, b"inside\n");
    assert!(!outside.join("x").exists());
    assert!(!std::path::Path::new(&host_tmp_marker).exists(), "/tmp inside the sandbox is private");

    bot.stop().await;

    // As root (CI runs as root; containers often do): no remount of the read-only system, no view
    // of the host's private files or of anything outside the system directories.
    let secret_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bwrap-secret-{}", std::process::id()));
    std::fs::create_dir_all(&secret_dir).unwrap();
    let secret = secret_dir.join("secret");
    std::fs::write(&secret, "server data").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let bot = InProcessBot::start_with(format!("grpc://{}", server.addr), None, &tmp.path().join("bot-root"), 1, &[], "bubblewrap");
    let script = format!(
        "mount -o remount,bind,rw /usr 2>/dev/null && echo remounted; \
         touch /usr/strata-remount 2>/dev/null && echo wrote-usr; \
         cat /etc/shadow 2>/dev/null | head -c 1 | grep -q . && echo read-shadow; \
         cat {secret} 2>/dev/null && echo read-data; \
         ls /root /home 2>/dev/null | grep -q . && echo saw-home; \
         grep -q '^CapEff:.*0000000000000000' /proc/self/status && echo no-caps",
        secret = secret.display()
    );
    let result = execute(&server, &action(&server, &sh(&script)).await).await.result.unwrap();
    let stdout = String::from_utf8(read_blob(&server, &result.stdout_digest).await).unwrap();
    assert_eq!(stdout, "no-caps\n", "stderr: {}", String::from_utf8_lossy(&read_blob(&server, &result.stderr_digest).await));
    assert!(!std::path::Path::new("/usr/strata-remount").exists());
    std::fs::remove_dir_all(&secret_dir).unwrap();
    bot.stop().await;

    // The network is there when the action's platform asks for it (of a bot that offers it).
    let bot = InProcessBot::start_with(format!("grpc://{}", server.addr), None, &tmp.path().join("bot-net"), 1, &[("network", "on")], "bubblewrap");
    let mut spec = sh(&format!("{connect} && echo net-open"));
    spec.platform = vec![("network".into(), "on".into())];
    let result = execute(&server, &action(&server, &spec).await).await.result.unwrap();
    assert_eq!(read_blob(&server, &result.stdout_digest).await, b"net-open\n");
    bot.stop().await;
}

/// An action that makes its (hard-linked, cached) input writable and appends to it changes only its
/// own copy: the next action with the same input digest reads the original bytes.
async fn inputs_cannot_be_poisoned(runner: &str) {
    let (server, tmp) = start().await;
    let bot = InProcessBot::start_with(format!("grpc://{}", server.addr), None, &tmp.path().join("bot"), 1, &[], runner);
    let data = b"good\n".to_vec();
    let root = root_with_one_file(&server).await;
    let with_input = |script: &str| Spec { input_root: Some(root.clone()), ..sh(script) };

    let warm = execute(&server, &action(&server, &with_input("cat f")).await).await;
    assert_eq!(read_blob(&server, &warm.result.as_ref().unwrap().stdout_digest).await, data, "the input is cached now");
    let poison = execute(&server, &action(&server, &with_input("chmod u+w f && echo evil >> f; cat f")).await).await;
    let poisoned = read_blob(&server, &poison.result.as_ref().unwrap().stdout_digest).await;
    assert_eq!(String::from_utf8_lossy(&poisoned), "good\nevil\n", "the action itself saw its change");
    let again = execute(&server, &action(&server, &with_input("cat f; echo again")).await).await;
    let stdout = read_blob(&server, &again.result.as_ref().unwrap().stdout_digest).await;
    assert_eq!(String::from_utf8_lossy(&stdout), "good\nagain\n", "the next action reads the original bytes");
    // Only chmod: the bytes still match, the action succeeds and the file is read-only again.
    let chmod_only = execute(&server, &action(&server, &with_input("chmod u+w f; cat f")).await).await;
    assert_eq!(chmod_only.result.as_ref().map(|r| r.exit_code), Some(0), "{:?}", chmod_only.status);
    let after = execute(&server, &action(&server, &with_input("cat f; stat -c %a f")).await).await;
    let stdout = read_blob(&server, &after.result.as_ref().unwrap().stdout_digest).await;
    assert_eq!(String::from_utf8_lossy(&stdout), "good\n444\n", "later actions see the original, read-only bytes");
    bot.stop().await;
}

#[tokio::test]
async fn an_action_cannot_poison_the_inputs_of_later_actions_host_runner() {
    inputs_cannot_be_poisoned("host").await;
}

#[tokio::test]
async fn an_action_cannot_poison_the_inputs_of_later_actions_bubblewrap_runner() {
    assert!(std::path::Path::new("/usr/bin/bwrap").exists(), "this test needs bubblewrap (apt-get install bubblewrap; .ci/run installs it)");
    inputs_cannot_be_poisoned("bubblewrap").await;
}

/// Action directories are kept for later actions (see `bot::action::Scratches`): what an action leaves
/// behind, read-only directories included, is gone before the next one starts, and a directory an
/// action tampered with outside its root is removed rather than used again.
#[tokio::test]
async fn an_action_directory_is_emptied_before_another_action_uses_it() {
    let (server, tmp) = start().await;
    let bot = InProcessBot::start_with(format!("grpc://{}", server.addr), None, &tmp.path().join("bot"), 1, &[], "host");
    let actions_dir = tmp.path().join("bot/actions");
    let stdout = |response: &reapi::ExecuteResponse| response.result.as_ref().map(|r| r.stdout_digest.clone());
    let run = |script: &'static str| {
        let server = &server;
        async move { execute(server, &action(server, &sh(script)).await).await }
    };

    let first = run("mkdir -p d/e && touch d/e/f && chmod 555 d/e d && echo left > leftover && echo first && echo oops >&2 && chmod 500 .").await;
    assert_eq!(first.result.as_ref().map(|r| r.exit_code), Some(0), "{:?}", first.status);
    let second = run("ls -A; echo second").await;
    assert_eq!(read_blob(&server, &stdout(&second).unwrap()).await, b"second\n", "the root is empty and the last stdout gone");
    let stderr = second.result.as_ref().map(|r| r.stderr_digest.clone()).unwrap();
    assert!(read_blob(&server, &stderr).await.is_empty(), "the last stderr is gone");
    assert_eq!(std::fs::read_dir(&actions_dir).unwrap().count(), 1, "one directory, kept between the actions");

    // An action that makes the bot's own files symlinks: the next one writes through none of them.
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    // A stdout made a symlink is not read through either: that action fails, saying so.
    let scripts = [
        (format!("ln -sf {0} ../stdout; ln -sf {0} ../stderr", victim.display()), false),
        (format!("rm ../stderr && ln {} ../stderr", victim.display()), true),
        ("cd .. && rm -rf root && ln -s / root".to_string(), true),
    ];
    for (script, completes) in scripts {
        let tamper = execute(&server, &action(&server, &sh(&script)).await).await;
        if completes {
            assert!(tamper.result.is_some(), "{script}: {:?}", tamper.status);
        } else {
            let status = tamper.status.unwrap_or_default();
            assert_eq!(status.code, tonic::Code::InvalidArgument as i32, "{script}: {status:?}");
            assert!(status.message.contains("stdout is a symlink"), "{script}: {}", status.message);
        }
        let next = run("ls -A; echo next").await;
        assert_eq!(next.result.as_ref().map(|r| r.exit_code), Some(0), "after {script}: {:?}", next.status);
        assert_eq!(read_blob(&server, &stdout(&next).unwrap()).await, b"next\n", "after {script}");
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "nothing was written through a symlink");
    for entry in std::fs::read_dir(&actions_dir).unwrap() {
        let dir = entry.unwrap().path();
        for name in ["stdout", "stderr", "root"] {
            let meta = std::fs::symlink_metadata(dir.join(name)).unwrap();
            assert!(!meta.file_type().is_symlink(), "{} is still a symlink", dir.join(name).display());
        }
    }
    bot.stop().await;
}

/// How a root bot starts its actions as another user.
#[derive(Clone, Copy, PartialEq)]
enum Start {
    /// Through `strata spawner`, started once as that user.
    Spawner,
    /// Through setpriv, per action (when no strata binary the user may run is known).
    Setpriv,
}

/// A root bot whose actions run as nobody, in a work directory nobody can enter; with the spawner,
/// the strata binary is linked there too, as the clone holding it may be out of nobody's reach.
fn root_bot_as_nobody(server: &common::TestServer, tmp: &tempfile::TempDir, runner: &str, how: Start) -> InProcessBot {
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut args = InProcessBot::args(format!("grpc://{}", server.addr), None, &tmp.path().join("bot"), 2, &[], runner);
    args.run_as = None;
    args.spawner = match how {
        Start::Spawner => {
            let program = tmp.path().join("strata");
            let built = env!("CARGO_BIN_EXE_strata");
            std::fs::hard_link(built, &program).or_else(|_| std::fs::copy(built, &program).map(drop)).unwrap();
            Some(program)
        }
        Start::Setpriv => None,
    };
    InProcessBot::run(args)
}

/// A root bot's host and bubblewrap actions run as `nobody`: they write their outputs, but cannot
/// change their (root-owned, read-only) inputs, nor read what only root may.
async fn a_root_bot_runs_actions_as_an_unprivileged_user(runner: &str, how: Start) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: actions run as the bot's own user, nothing to check here");
        return;
    }
    let (server, tmp) = start().await;
    let bot = root_bot_as_nobody(&server, &tmp, runner, how);
    let root = root_with_one_file(&server).await;
    // A host action's parent is the spawner when there is one (in bubblewrap, it is bubblewrap); it
    // must not be able to write to the spawner's answers to the bot.
    let script = "id -u; chmod u+w f 2>/dev/null && echo chmodded; echo evil >> f 2>/dev/null && echo appended; \
                  head -c 1 /etc/shadow 2>/dev/null | grep -q . && echo read-shadow; mkdir -p out && echo made > out/o && cat f; \
                  [ \"$(tr '\\0' '\\n' < /proc/$PPID/cmdline | sed -n 2p)\" = spawner ] && echo by-spawner && \
                  { (echo x > /proc/$PPID/fd/1) 2>/dev/null && echo reached-spawner; }; true";
    let mut spec = Spec { input_root: Some(root), ..sh(script) };
    spec.output_files = vec!["out/o".into()];
    let result = execute(&server, &action(&server, &spec).await).await.result.unwrap();
    let stdout = String::from_utf8(read_blob(&server, &result.stdout_digest).await).unwrap();
    let expected = if how == Start::Spawner && runner == "host" { "65534\ngood\nby-spawner\n" } else { "65534\ngood\n" };
    assert_eq!(stdout, expected, "stderr: {}", String::from_utf8_lossy(&read_blob(&server, &result.stderr_digest).await));
    assert_eq!(read_blob(&server, &result.output_files[0].digest).await, b"made\n");
    bot.stop().await;
}

#[tokio::test]
async fn a_root_bot_runs_host_actions_as_an_unprivileged_user() {
    a_root_bot_runs_actions_as_an_unprivileged_user("host", Start::Spawner).await;
    a_root_bot_runs_actions_as_an_unprivileged_user("host", Start::Setpriv).await;
}

#[tokio::test]
async fn a_root_bot_runs_bubblewrap_as_an_unprivileged_user() {
    a_root_bot_runs_actions_as_an_unprivileged_user("bubblewrap", Start::Spawner).await;
    a_root_bot_runs_actions_as_an_unprivileged_user("bubblewrap", Start::Setpriv).await;
}

/// A root bot running host actions through its spawner; None when not root (there is no spawner).
async fn root_bot_with_spawner() -> Option<(common::TestServer, tempfile::TempDir, InProcessBot)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: there is no spawner, nothing to check here");
        return None;
    }
    let (server, tmp) = start().await;
    let bot = root_bot_as_nobody(&server, &tmp, "host", Start::Spawner);
    Some((server, tmp, bot))
}

/// An action killed at its timeout takes what it left running with it, though the spawner (not the
/// bot) started it; and an action that kills the spawner (it runs as the same user) fails alone:
/// the next action gets a new spawner.
#[tokio::test]
async fn a_root_bots_spawner_kills_timed_out_groups_and_survives_being_killed() {
    let Some((server, _tmp, bot)) = root_bot_with_spawner().await else { return };
    let marker = format!("31.{}", std::process::id());
    let mut spec = sh(&format!("sleep {marker} & sleep {marker}"));
    spec.timeout = Some(std::time::Duration::from_secs(1));
    let response = execute(&server, &action(&server, &spec).await).await;
    assert_eq!(response.status.unwrap().code, tonic::Code::DeadlineExceeded as i32);
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.unwrap().path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&marker))
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");

    let response = execute(&server, &action(&server, &sh("kill -9 $PPID; sleep 5")).await).await;
    let status = response.status.unwrap();
    assert_eq!(status.code, tonic::Code::Internal as i32, "{}", status.message);
    assert!(status.message.contains("spawner"), "{}", status.message);
    let result = execute(&server, &action(&server, &sh("id -u")).await).await.result.unwrap();
    assert_eq!(read_blob(&server, &result.stdout_digest).await, b"65534\n");
    bot.stop().await;
}

/// The spawner's one reaper tells each action its own exit, whatever order they end in: some end
/// at once (before their spawn has returned, often), some later, one by a signal; and a program
/// that is not there fails its action with a clear message, not the spawner.
#[tokio::test]
async fn a_root_bots_spawner_reports_each_actions_own_exit() {
    let Some((server, _tmp, bot)) = root_bot_with_spawner().await else { return };
    // Distinct scripts, so that no two actions share a digest: (script, expected exit code).
    let mut cases: Vec<(String, i32)> = (0..12).map(|i| (format!("sleep 0.{}; exit {i}", (12 - i) % 4), i)).collect();
    cases.extend((0..4).map(|i| (format!("exit {}", 20 + i), 20 + i)));
    cases.push(("kill -TERM $$".into(), 128 + libc::SIGTERM));
    let runs = cases.iter().map(|(script, _)| async {
        let mut spec = sh(script);
        spec.do_not_cache = true;
        execute(&server, &action(&server, &spec).await).await
    });
    // Programs that are not there, among them: the standard library reaps such a child itself (a
    // bare name under a cleared environment is started by fork and exec), so the reaper must not.
    let server = &server;
    let missing = (0..4u64).map(|i| async move {
        tokio::time::sleep(std::time::Duration::from_millis(50 * i)).await;
        let spec = Spec { args: vec![format!("no-such-program-{i}")], do_not_cache: true, ..Default::default() };
        execute(server, &action(server, &spec).await).await
    });
    let (responses, missing) = tokio::join!(futures::future::join_all(runs), futures::future::join_all(missing));
    for ((script, code), response) in cases.iter().zip(responses) {
        assert_eq!(response.result.map(|r| r.exit_code), Some(*code), "{script}: {:?}", response.status);
    }
    for response in missing {
        let status = response.status.unwrap_or_default();
        assert!(status.message.contains("cannot run") && status.message.contains("no-such-program"), "{status:?}");
    }
    bot.stop().await;
}
