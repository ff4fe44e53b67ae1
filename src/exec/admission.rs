//! Execute's admission of an action: the Command and the whole input tree must be in the CAS, every
//! name and path sane, before the action is queued. Directories are fetched a level at a time,
//! concurrently; what is missing is collected (the client uploads it and retries), what is malformed
//! is an error naming the entry.

use std::collections::HashSet;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use strata_backends::{Digest, DigestFunction};

use crate::cas::Cas;
use crate::protocol::paths;
use crate::protocol::from_proto;
use crate::quote::quote;
use crate::tree::{load_all, TreeError};

/// Walks the input tree under `root`: every Directory must be present and well formed, every name
/// and symlink sane. Returns the digests that are not in the CAS (directories and files).
pub async fn missing_inputs(cas: &Cas, function: DigestFunction, root: Digest) -> Result<Vec<Digest>, TreeError> {
    let mut missing = Vec::new();
    let mut files = HashSet::new();
    let mut seen = HashSet::from([root]);
    let mut links = paths::Symlinks::default();
    let mut level = vec![(root, String::new())];
    while !level.is_empty() {
        let digests: Vec<Digest> = level.iter().map(|(d, _)| *d).collect();
        let loaded = load_all(cas, &digests).await?;
        let mut next = Vec::new();
        for ((digest, path), dir) in level.into_iter().zip(loaded) {
            let Some(dir) = dir else {
                missing.push(digest);
                continue;
            };
            let bad = |name: &str, e: String| TreeError::Invalid(format!("input tree, directory {}: entry {}: {e}", quote(&path), quote(name)));
            paths::check_distinct(&dir).map_err(|e| TreeError::Invalid(format!("input tree, directory {}: {e}", quote(&path))))?;
            for file in &dir.files {
                paths::check_name(&file.name).map_err(|e| bad(&file.name, e))?;
                let what = format!("input file {path}/{}", file.name);
                files.insert(from_proto(function, file.digest.as_ref(), &what).map_err(TreeError::Invalid)?);
            }
            let depth = path.split('/').filter(|p| !p.is_empty()).count();
            for link in &dir.symlinks {
                paths::check_name(&link.name).map_err(|e| bad(&link.name, e))?;
                paths::check_symlink_target(&link.target, depth).map_err(|e| bad(&link.name, e))?;
                let components: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
                links.add(&components, &link.name, &link.target);
            }
            for sub in &dir.directories {
                paths::check_name(&sub.name).map_err(|e| bad(&sub.name, e))?;
                let what = format!("input directory {path}/{}", sub.name);
                let child = from_proto(function, sub.digest.as_ref(), &what).map_err(TreeError::Invalid)?;
                if seen.insert(child) {
                    next.push((child, format!("{path}/{}", sub.name)));
                }
            }
        }
        level = next;
    }
    links.check().map_err(|e| TreeError::Invalid(format!("input tree: {e}")))?;
    let files: Vec<Digest> = files.into_iter().collect();
    let present = cas.contains(&files).await?;
    missing.extend(files.iter().zip(present).filter(|(_, p)| !p).map(|(d, _)| *d));
    Ok(missing)
}

/// The Command's own rules: something to run, a working directory and output paths inside the root.
pub fn check_command(command: &reapi::Command) -> Result<(), TreeError> {
    if command.arguments.is_empty() {
        return Err(TreeError::Invalid("command has no arguments".into()));
    }
    let bad = |what: &str, e: String| TreeError::Invalid(format!("command {what}: {e}"));
    let workdir = paths::check_relative(&command.working_directory).map_err(|e| bad("working_directory", e))?;
    for path in crate::protocol::outputs(command) {
        paths::resolve(&workdir, path).map_err(|e| bad("output path", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use prost::Message;
    use strata_backends::MemoryStore;

    use super::*;
    use crate::protocol::to_proto;

    async fn put(cas: &Cas, message: &impl Message) -> Digest {
        let data = Bytes::from(message.encode_to_vec());
        let digest = DigestFunction::Sha256.digest_of(&data);
        cas.put(&digest, data).await.unwrap();
        digest
    }

    fn file(name: &str, digest: Digest) -> reapi::FileNode {
        reapi::FileNode { name: name.into(), digest: Some(to_proto(&digest)), ..Default::default() }
    }

    #[tokio::test]
    async fn missing_directories_and_files_are_all_reported_at_once() {
        let cas = Cas::new(Arc::new(MemoryStore::new(1 << 20)));
        let present = DigestFunction::Sha256.digest_of(b"present");
        cas.put(&present, Bytes::from_static(b"present")).await.unwrap();
        let (absent_file, absent_dir) = (DigestFunction::Sha256.digest_of(b"absent"), DigestFunction::Sha256.digest_of(b"absent dir"));
        let sub = reapi::Directory { files: vec![file("a", present), file("b", absent_file)], ..Default::default() };
        let sub_digest = put(&cas, &sub).await;
        let root = reapi::Directory {
            directories: vec![
                reapi::DirectoryNode { name: "sub".into(), digest: Some(to_proto(&sub_digest)) },
                reapi::DirectoryNode { name: "gone".into(), digest: Some(to_proto(&absent_dir)) },
            ],
            ..Default::default()
        };
        let root_digest = put(&cas, &root).await;
        let mut missing = missing_inputs(&cas, DigestFunction::Sha256, root_digest).await.unwrap();
        missing.sort_by_key(|d| d.hash);
        let mut expected = vec![absent_file, absent_dir];
        expected.sort_by_key(|d| d.hash);
        assert_eq!(missing, expected);
        let nothing = DigestFunction::Sha256.digest_of(b"no root");
        assert_eq!(missing_inputs(&cas, DigestFunction::Sha256, nothing).await.unwrap(), vec![nothing]);
    }

    #[tokio::test]
    async fn hostile_trees_are_refused_naming_the_entry() {
        let cas = Cas::new(Arc::new(MemoryStore::new(1 << 20)));
        let present = DigestFunction::Sha256.digest_of(b"");
        let escape = reapi::Directory {
            symlinks: vec![reapi::SymlinkNode { name: "up".into(), target: "../../etc".into(), ..Default::default() }],
            ..Default::default()
        };
        let cases = [
            (reapi::Directory { files: vec![file("../x", present)], ..Default::default() }, "../x"),
            (reapi::Directory { files: vec![file("a/b", present)], ..Default::default() }, "a/b"),
            (escape, "up"),
            (
                reapi::Directory {
                    files: vec![file("twice", present)],
                    symlinks: vec![reapi::SymlinkNode { name: "twice".into(), target: "x".into(), ..Default::default() }],
                    ..Default::default()
                },
                "\"twice\" names two entries",
            ),
            (
                reapi::Directory { files: vec![reapi::FileNode { name: "f".into(), digest: Some(reapi::Digest { hash: "zz".into(), size_bytes: 1 }), ..Default::default() }], ..Default::default() },
                "input file /f",
            ),
        ];
        for (dir, named) in cases {
            let root = put(&cas, &dir).await;
            let err = missing_inputs(&cas, DigestFunction::Sha256, root).await.unwrap_err();
            assert!(matches!(err, TreeError::Invalid(ref m) if m.contains(named)), "{named}: {err}");
        }
        let garbage = DigestFunction::Sha256.digest_of(b"\xff\xff");
        cas.put(&garbage, Bytes::from_static(b"\xff\xff")).await.unwrap();
        assert!(matches!(missing_inputs(&cas, DigestFunction::Sha256, garbage).await, Err(TreeError::Undecodable { .. })));
    }

    #[test]
    fn commands_need_arguments_and_outputs_inside_the_root() {
        let ok = reapi::Command { arguments: vec!["true".into()], output_paths: vec!["out/x".into()], ..Default::default() };
        assert!(check_command(&ok).is_ok());
        assert!(check_command(&reapi::Command::default()).is_err());
        let escapes = reapi::Command { output_paths: vec!["../../x".into()], ..ok.clone() };
        assert!(matches!(check_command(&escapes), Err(TreeError::Invalid(m)) if m.contains("output path")));
        let absolute = reapi::Command { working_directory: "/tmp".into(), ..ok };
        assert!(matches!(check_command(&absolute), Err(TreeError::Invalid(m)) if m.contains("working_directory")));
    }
}
