//! Configuration parsing and validation: every mistake a user can make gets an error that names the
//! key (and file), and every example in config/ parses and builds.

use super::*;
use crate::bot::RunnerKind;
use crate::units::parse_duration;
use crate::server::Server;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, "test.yaml").map_err(|e| e.to_string())
}

const MINIMAL: &str = r#"
storage:
  s:
    cas: [ { memory: { max_size: 1MiB } } ]
    action_cache: [ { memory: { max_size: 1MiB } } ]
instances:
  - { name: "", storage: s, services: [cas, action_cache] }
"#;

#[test]
fn defaults_fill_in() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.listen, "127.0.0.1:50051");
    assert_eq!(c.max_batch_total_size, ByteSize(4 << 20));
    assert_eq!(c.data_dir, PathBuf::from("strata-data"));
}

#[tokio::test]
async fn every_example_parses_and_builds() {
    std::env::set_var("STRATA_MEMORY", "64MiB");
    std::env::set_var("STRATA_UPSTREAM", "grpc://127.0.0.1:1");
    std::env::set_var("STRATA_S3_BUCKET", "strata");
    std::env::set_var("STRATA_S3_REGION", "us-east-1");
    std::env::set_var("STRATA_S3_ENDPOINT", "http://127.0.0.1:1");
    let tokens = tempfile::tempdir().unwrap();
    for name in ["ci", "dev", "bot"] {
        std::fs::write(tokens.path().join(format!("{name}.token")), format!("{name}-0123456789abcdef\n")).unwrap();
    }
    std::env::set_var("STRATA_TOKEN_DIR", tokens.path());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let mut config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let data = tempfile::tempdir().unwrap();
        config.data_dir = data.path().to_path_buf();
        Server::build(&config).await.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen += 1;
    }
    assert!(seen >= 3);
    let default = Config::parse(DEFAULT_CONFIG, "default").unwrap();
    assert_eq!(default.listen, "127.0.0.1:50051");
}

#[test]
fn unknown_keys_are_named() {
    let err = parse(&format!("{MINIMAL}\nlisten_port: 5")).unwrap_err();
    assert!(err.contains("test.yaml") && err.contains("listen_port"), "{err}");
    let err = parse(&MINIMAL.replace("max_size: 1MiB } } ]\n    action", "max_size: 1MiB, colour: red } } ]\n    action")).unwrap_err();
    assert!(err.contains("colour"), "{err}");
    let err = parse(&MINIMAL.replace("{ memory: { max_size: 1MiB } } ]\n    action", "{ ramdisk: { max_size: 1MiB } } ]\n    action")).unwrap_err();
    assert!(err.contains("ramdisk"), "{err}");
}

#[test]
fn http_and_health_probe_settings_are_checked() {
    let c = parse(&format!("http: {{ listen: 127.0.0.1:9095 }}\nhealth_probe_interval: 2s\n{MINIMAL}")).unwrap();
    assert_eq!(c.http.map(|h| h.listen).as_deref(), Some("127.0.0.1:9095"));
    assert_eq!(c.health_probe_interval, std::time::Duration::from_secs(2));
    let default = Config::parse(crate::config::DEFAULT_CONFIG, "default").unwrap();
    assert_eq!(default.http.map(|h| h.listen).as_deref(), Some("127.0.0.1:9095"), "the documented default");
    let err = parse(&format!("health_probe_interval: 0s\n{MINIMAL}")).unwrap_err();
    assert!(err.contains("health_probe_interval") && err.contains("at least"), "{err}");
    let err = parse(&format!("http: {{ listen: nowhere }}\n{MINIMAL}")).unwrap_err();
    assert!(err.contains("http.listen") && err.contains("HOST:PORT"), "{err}");
    let err = parse(&format!("http: {{ port: 9095 }}\n{MINIMAL}")).unwrap_err();
    assert!(err.contains("port"), "{err}");
}

#[test]
fn environment_variables_are_substituted_or_named() {
    std::env::set_var("STRATA_TEST_LISTEN", "127.0.0.1:6000");
    let c = parse(&format!("listen: ${{STRATA_TEST_LISTEN}}\n{MINIMAL}")).unwrap();
    assert_eq!(c.listen, "127.0.0.1:6000");
    let err = parse(&format!("listen: ${{STRATA_TEST_UNSET_VARIABLE}}\n{MINIMAL}")).unwrap_err();
    assert!(err.contains("STRATA_TEST_UNSET_VARIABLE") && err.contains("not set"), "{err}");
    let err = parse(&format!("listen: ${{OOPS\n{MINIMAL}")).unwrap_err();
    assert!(err.contains("unterminated") && err.contains("line 1"), "{err}");
}

#[test]
fn sizes_and_durations() {
    assert_eq!("512MiB".parse::<ByteSize>(), Ok(ByteSize(512 << 20)));
    assert_eq!("4 GiB".parse::<ByteSize>(), Ok(ByteSize(4 << 30)));
    assert_eq!("100kB".parse::<ByteSize>(), Ok(ByteSize(100_000)));
    assert_eq!("1024".parse::<ByteSize>(), Ok(ByteSize(1024)));
    assert!("12XB".parse::<ByteSize>().unwrap_err().contains("unknown unit"));
    assert!("MiB".parse::<ByteSize>().is_err());
    assert!("99999999999TiB".parse::<ByteSize>().unwrap_err().contains("too large"));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert!(parse_duration("soon").is_err());
    let err = parse(&MINIMAL.replace("max_size: 1MiB } } ]\n    action", "max_size: lots } } ]\n    action")).unwrap_err();
    assert!(err.contains("lots"), "{err}");
}

#[test]
fn invalid_values_name_their_key() {
    let cases = [
        (format!("listen: nowhere\n{MINIMAL}"), "listen"),
        (format!("max_batch_total_size: 10\n{MINIMAL}"), "max_batch_total_size"),
        (MINIMAL.replace("storage: s", "storage: t"), "instances[0].storage"),
        (MINIMAL.replace("name: \"\"", "name: \"a/blobs\""), "instances[0].name"),
        (MINIMAL.replace("instances:\n  - { name: \"\", storage: s, services: [cas, action_cache] }", "instances: []"), "instances"),
        (MINIMAL.replace("services: [cas, action_cache]", "services: [cas, execution_v9]"), "execution_v9"),
        (MINIMAL.replace("cas: [ { memory: { max_size: 1MiB } } ]", "cas: []"), "storage.s.cas"),
        (
            MINIMAL.replace(
                "cas: [ { memory: { max_size: 1MiB } } ]",
                "cas: [ { disk: { path: d, max_size: 1GiB, sync: sometimes } } ]",
            ),
            // The tier is named by its line (the file's line 4) and the key by its name.
            "storage.s.cas: sync: \"sometimes\" is not `always`, `never` or an interval such as `100ms` at line 4",
        ),
        (
            MINIMAL.replace(
                "cas: [ { memory: { max_size: 1MiB } } ]\n    action_cache: [ { memory: { max_size: 1MiB } } ]",
                "cas: [ { disk: { path: d, max_size: 1GiB } } ]\n    action_cache: [ { disk: { path: d, max_size: 1GiB } } ]",
            ),
            "storage.s.action_cache[0].path",
        ),
    ];
    for (text, key) in cases {
        let err = parse(&text).unwrap_err();
        assert!(err.contains(key), "expected {key:?} in: {err}");
    }
}

#[tokio::test]
async fn impossible_disk_geometry_fails_at_build_with_the_tier_named() {
    let text = MINIMAL.replace(
        "cas: [ { memory: { max_size: 1MiB } } ]",
        "cas: [ { disk: { path: d, max_size: 1GiB, segment_size: 1MiB, max_record: 1MiB } } ]",
    );
    let mut config = parse(&text).unwrap();
    let data = tempfile::tempdir().unwrap();
    config.data_dir = data.path().to_path_buf();
    let err = Server::build(&config).await.err().unwrap().to_string();
    assert!(err.contains("storage.s.cas[0]") && err.contains("max_record"), "{err}");
}

#[test]
fn execution_settings_are_checked() {
    let with_exec = MINIMAL.replace("services: [cas, action_cache]", "services: [cas, action_cache, execution]");
    let c = parse(&with_exec).unwrap();
    assert_eq!(c.execution.max_attempts, 3);
    assert_eq!(c.execution.bot_session_timeout, Duration::from_secs(60));
    assert!(c.execution.bots.is_empty());
    let c = parse(&format!("{with_exec}execution: {{ queue_timeout: 5m, bots: [ {{ capacity: 4, properties: {{ OSFamily: linux }} }} ] }}\n")).unwrap();
    assert_eq!(c.execution.queue_timeout, Duration::from_secs(300));
    assert_eq!(c.execution.bots[0].capacity, Some(4));
    assert_eq!(c.execution.bots[0].runner, RunnerKind::Host);

    let cases = [
        (with_exec.clone() + "execution: { max_attempts: 0 }\n", "execution.max_attempts"),
        (with_exec.clone() + "execution: { queue_timeout: 0s }\n", "execution.queue_timeout"),
        (with_exec.clone() + "execution: { bots: [ { runner: docker } ] }\n", "execution.bots[0].runner"),
        (with_exec.clone() + "execution: { bots: [ { capacity: 0 } ] }\n", "execution.bots[0].capacity"),
        (with_exec.clone() + "execution: { bots: [ { instance: other } ] }\n", "execution.bots[0].instance"),
        (MINIMAL.to_string() + "execution: { bots: [ {} ] }\n", "execution.bots[0].instance"),
        (with_exec.clone() + "execution: { bots: [ { cpus: 2 } ] }\n", "cpus"),
        (with_exec.clone() + "execution: { schedule: fifo }\n", "schedule"),
        (with_exec.clone() + "tls: { certificate: c.pem, key: k.pem }\nexecution: { bots: [ {} ] }\n", "execution.bots"),
        (with_exec.clone() + "tls: { certificate: c.pem }\n", "key"),
    ];
    for (text, key) in cases {
        let err = parse(&text).unwrap_err();
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn tier_policies_apply_where_they_mean_something() {
    let cas = |tier: &str| MINIMAL.replace("cas: [ { memory: { max_size: 1MiB } } ]", &format!("cas: [ {tier} ]"));
    let ac = |tier: &str| MINIMAL.replace("action_cache: [ { memory: { max_size: 1MiB } } ]", &format!("action_cache: [ {tier} ]"));
    let c = parse(&cas("{ memory: { max_size: 1MiB, max_blob: 64KiB, promote: false } }")).unwrap();
    let tier = &c.storage["s"].cas[0];
    assert!(matches!(tier.kind, TierKind::Memory(MemoryTier { max_size: ByteSize(1048576) })));
    assert_eq!((tier.policy.max_blob, tier.policy.promote), (Some(ByteSize(64 << 10)), Some(false)));
    let c = parse(&cas("{ remote: { endpoint: \"grpc://127.0.0.1:1\", when_unavailable: queue, existence_cache: { max_entries: 10, ttl: 1m } } }")).unwrap();
    let policy = &c.storage["s"].cas[0].policy;
    assert_eq!(policy.when_unavailable, Some(WhenUnavailable::Queue));
    assert_eq!(policy.existence_cache.map(|e| e.max_entries), Some(10));

    let cases = [
        (cas("{ memory: { max_size: 1MiB, when_unavailable: queue } }"), "storage.s.cas[0].when_unavailable: applies to remote and s3 tiers only"),
        (cas("{ disk: { path: d, max_size: 1GiB, durable: false } }"), "storage.s.cas[0].durable"),
        (cas("{ memory: { max_size: 1MiB, existence_cache: { max_entries: 1, ttl: 1s } } }"), "storage.s.cas[0].existence_cache"),
        (cas("{ remote: { endpoint: \"grpc://127.0.0.1:1\", promote: true } }"), "storage.s.cas[0].promote: applies to memory and disk tiers only"),
        (cas("{ remote: { endpoint: \"grpc://127.0.0.1:1\", when_unavailable: later } }"), "later"),
        (cas("{ remote: { endpoint: \"grpc://127.0.0.1:1\", queue_retry: 0s } }"), "storage.s.cas[0].queue_retry"),
        (cas("{ remote: { endpoint: \"grpc://127.0.0.1:1\", existence_cache: { max_entries: 1 } } }"), "ttl"),
        (cas("{ memory: { max_size: 1MiB, min_blob: 2MiB, max_blob: 1MiB } }"), "storage.s.cas[0].min_blob"),
        (cas("{ s3: { bucket: b, checksum: sometimes } }"), "sometimes"),
        (cas("{ memory: { max_size: 1MiB }, disk: { path: d, max_size: 1GiB } }"), "one kind"),
        (ac("{ memory: { max_size: 1MiB, max_blob: 1KiB } }"), "`max_blob` applies to CAS tiers only"),
        (ac("{ remote: { endpoint: \"grpc://127.0.0.1:1\", when_unavailable: queue } }"), "`when_unavailable` applies to CAS tiers only"),
        (ac("{ memory: { max_size: 1MiB, colour: red } }"), "colour"),
    ];
    for (text, expected) in cases {
        let err = parse(&text).unwrap_err();
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
    }
}

#[test]
fn auth_settings_are_checked() {
    let hash = "0".repeat(64);
    let ok = format!("{MINIMAL}auth:\n  anonymous: [read]\n  identities:\n    - {{ name: ci, token_sha256: \"{hash}\", permissions: {{ \"*\": [read], \"\": [read, write_ac] }} }}\n");
    let config = parse(&ok).unwrap();
    assert_eq!(config.auth.as_ref().map(|a| a.identities.len()), Some(1));
    let cases = [
        ("auth:\n  identities:\n    - { name: ci, permissions: [read] }\n", "exactly one of"),
        (&format!("auth:\n  identities:\n    - {{ name: ci, token_sha256: \"{hash}\", token_file: t, permissions: [read] }}\n"), "exactly one of"),
        ("auth:\n  identities:\n    - { name: ci, token_sha256: abc, permissions: [read] }\n", "token_sha256"),
        (&format!("auth:\n  identities:\n    - {{ name: ci, token_sha256: \"{hash}\", permissions: [read, fly] }}\n"), "fly"),
        (&format!("auth:\n  identities:\n    - {{ name: ci, token_sha256: \"{hash}\", permissions: {{ nowhere: [read] }} }}\n"), "auth.identities[0].permissions: no instance named \"nowhere\""),
        (&format!("auth:\n  identities:\n    - {{ name: a, token_sha256: \"{hash}\", permissions: [] }}\n    - {{ name: a, token_sha256: \"{hash}\", permissions: [] }}\n"), "defined twice"),
        ("auth:\n  identities:\n    - { name: a, jwt_subject: a, permissions: [] }\n", "needs auth.jwt"),
        ("auth:\n  identities:\n    - { name: a, certificate_subject: CN=a, permissions: [] }\n", "needs tls.client_ca"),
        ("auth:\n  jwt: { issuer: i, audience: a }\n", "key_files or a jwks_file"),
        ("auth:\n  anonymous: [read]\n  tokens: []\n", "tokens"),
    ];
    for (text, want) in cases {
        let err = parse(&format!("{MINIMAL}{text}")).unwrap_err();
        assert!(err.contains(want), "{text}: {err}");
    }
}

#[test]
fn disk_compression_is_checked() {
    use crate::config::storage::{Compression, TierKind};
    use strata_backends::zstd_chunks::Settings;
    let with = |cas: &str, ac: &str| {
        parse(&format!(
            "storage:\n  s:\n    cas: [ {{ disk: {{ path: c, max_size: 1GiB{cas} }} }} ]\n    action_cache: [ {{ disk: {{ path: a, max_size: 1GiB{ac} }} }} ]\ninstances:\n  - {{ name: \"\", storage: s, services: [cas] }}\n"
        ))
    };
    let compression = |c: &Config| match &c.storage["s"].cas[0].kind {
        TierKind::Disk(d) => d.compression,
        _ => unreachable!(),
    };
    assert_eq!(compression(&with("", "").unwrap()), Compression::Off);
    assert_eq!(compression(&with(", compression: zstd", "").unwrap()), Compression::Zstd(Settings::DEFAULT));
    let tuned = with(", compression: { zstd: { level: 3, min_size: 16KiB } }", "").unwrap();
    assert_eq!(compression(&tuned), Compression::Zstd(Settings { level: 3, min_size: 16 << 10 }));
    for (bad, expected) in [
        (", compression: gzip", "not \"gzip\""),
        (", compression: { zstd: { level: 0 } }", "level 0 must be between 1 and 19"),
        (", compression: { zstd: { levle: 3 } }", "unknown field `levle`"),
        (", compression: { zstd: { min_size: lots } }", "compression.zstd"),
        (", compression: [zstd]", "compression is `off`, `zstd`"),
    ] {
        let err = with(bad, "").unwrap_err();
        assert!(err.contains(expected), "{bad}: {err}");
    }
    let err = with("", ", compression: zstd").unwrap_err();
    assert!(err.contains("action_cache[0].compression applies to CAS tiers only"), "{err}");
}
