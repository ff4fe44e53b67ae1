//! Collects an action's outputs into its ActionResult and uploads them: files, directories (as a
//! `Tree`), symlinks (never followed), stdout and stderr. A path whose parent is a symlink is refused:
//! following it could read outside the action's directory.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::Bytes;
use prost::Message;
use strata_backends::{BlobStore, Digest, DigestFunction};

use super::beneath::{Beneath, Kind};
use super::BotError;
use crate::protocol::paths;
use crate::protocol::to_proto;

/// Bytes per read when hashing and uploading output files: outputs are streamed from disk, never
/// held whole in memory (a 200 MiB stdout must not cost 200 MiB).
const FILE_CHUNK: usize = 1 << 20;

/// Where an output blob's bytes are: small encoded messages in memory, files on disk (below a
/// directory the bot holds open).
enum Source {
    Bytes(Bytes),
    File(Beneath, PathBuf),
}

/// Bytes of small output files an action's uploads hold in memory: read once to be hashed, they
/// are not opened again to be sent, and the action's directory can be emptied before the upload.
const KEPT_IN_MEMORY: usize = 4 << 20;

/// Blobs to upload, by digest.
#[derive(Default)]
pub struct Uploads {
    blobs: HashMap<Digest, Source>,
    /// Bytes of files held in `blobs`.
    kept: usize,
}

impl Uploads {
    /// A small blob held in memory (Tree and Directory messages).
    pub fn add(&mut self, data: Bytes) -> Digest {
        let digest = DigestFunction::Sha256.digest_of(&data);
        self.blobs.insert(digest, Source::Bytes(data));
        digest
    }

    /// The file at `relative` below `dir`, and whether it is executable. A small one is read whole
    /// and kept in memory, within a budget per action; a larger one is hashed in chunks and streamed
    /// from disk when uploaded. Blocking: run it off the async runtime.
    pub fn add_file(&mut self, dir: &Beneath, relative: &Path) -> Result<(Digest, bool), BotError> {
        use std::io::{Read, Seek};
        let path = &dir.shown(relative);
        let (mut file, meta) = dir.file(relative)?;
        let executable = meta.permissions().mode() & 0o111 != 0;
        let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
        if len <= FILE_CHUNK && self.kept + len <= KEPT_IN_MEMORY {
            let mut data = Vec::with_capacity(len + 1);
            // A file still growing is read to its chunk's end at most, then streamed like a large one.
            (&mut file).take(FILE_CHUNK as u64 + 1).read_to_end(&mut data).map_err(|e| BotError::io(path, e))?;
            if data.len() <= FILE_CHUNK && self.kept + data.len() <= KEPT_IN_MEMORY {
                self.kept += data.len();
                return Ok((self.add(Bytes::from(data)), executable));
            }
            file.rewind().map_err(|e| BotError::io(path, e))?;
        }
        let mut hasher = DigestFunction::Sha256.hasher();
        // Sized to the file, not a whole chunk: zeroing 1 MiB per small file costs more than it reads.
        let mut buf = vec![0u8; len.saturating_add(1).clamp(4096, FILE_CHUNK)];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(|e| BotError::io(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let digest = Digest { function: DigestFunction::Sha256, hash: hasher.finish(), size };
        self.blobs.insert(digest, Source::File(dir.clone(), relative.to_path_buf()));
        Ok((digest, executable))
    }

    /// Whether uploading still reads files in the action's directory.
    pub fn reads_files(&self) -> bool {
        self.blobs.values().any(|source| matches!(source, Source::File(..)))
    }

    /// Uploads what the CAS lacks, files streamed in chunks.
    pub async fn upload(self, cas: &Arc<dyn BlobStore>) -> Result<(), BotError> {
        let digests: Vec<Digest> = self.blobs.keys().filter(|d| !d.is_empty_blob()).copied().collect();
        let present = cas.contains(&digests).await?;
        for (digest, present) in digests.iter().zip(present) {
            if present {
                continue;
            }
            match &self.blobs[digest] {
                Source::Bytes(data) => cas.write(digest, data.clone()).await?,
                Source::File(dir, relative) => upload_file(cas, digest, dir, relative).await?,
            }
        }
        Ok(())
    }
}

async fn upload_file(cas: &Arc<dyn BlobStore>, digest: &Digest, dir: &Beneath, relative: &Path) -> Result<(), BotError> {
    use tokio::io::AsyncReadExt;
    let path = &dir.shown(relative);
    let (opening, relative) = (dir.clone(), relative.to_path_buf());
    let (file, _) = super::blocking("opening an output", move || opening.file(&relative)).await?;
    let mut file = tokio::fs::File::from_std(file);
    let changed = || BotError::Invalid(format!("output {} changed while it was uploaded", path.display()));
    // Small files (most of a build's outputs) go whole, so the CAS client can batch them.
    if digest.size <= FILE_CHUNK as u64 {
        let mut data = Vec::with_capacity(digest.size as usize + 1);
        (&mut file).take(digest.size + 1).read_to_end(&mut data).await.map_err(|e| BotError::io(path, e))?;
        if data.len() as u64 != digest.size {
            return Err(changed());
        }
        return Ok(cas.write(digest, Bytes::from(data)).await?);
    }
    let mut writer = cas.writer(digest).await?;
    let mut sent = 0u64;
    loop {
        let mut buf = Vec::with_capacity(FILE_CHUNK);
        let n = (&mut file).take(FILE_CHUNK as u64).read_to_end(&mut buf).await.map_err(|e| BotError::io(path, e))?;
        if n == 0 {
            break;
        }
        sent += n as u64;
        writer.append(Bytes::from(buf)).await?;
    }
    if sent != digest.size {
        return Err(changed());
    }
    writer.commit().await?;
    Ok(())
}

/// Reads the directory at `relative` into Directory messages: returns it and every descendant.
fn read_tree(root: &Beneath, relative: &Path, uploads: &mut Uploads, children: &mut Vec<reapi::Directory>) -> Result<reapi::Directory, BotError> {
    let mut dir = reapi::Directory::default();
    for (child, kind) in root.entries(relative)? {
        let name = child.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match kind {
            Kind::Symlink => {
                let target = root.link_target(&child)?;
                dir.symlinks.push(reapi::SymlinkNode { name, target, node_properties: None });
            }
            Kind::Dir => {
                let sub = read_tree(root, &child, uploads, children)?;
                let digest = uploads.add(Bytes::from(sub.encode_to_vec()));
                children.push(sub);
                dir.directories.push(reapi::DirectoryNode { name, digest: Some(to_proto(&digest)) });
            }
            Kind::File => {
                let (digest, is_executable) = uploads.add_file(root, &child)?;
                dir.files.push(reapi::FileNode { name, digest: Some(to_proto(&digest)), is_executable, node_properties: None });
            }
            Kind::Other => {}
        }
    }
    Ok(dir)
}

/// Adds the outputs the command asked for to `result` and their bytes to `uploads`.
#[allow(deprecated)] // REAPI 2.0 output fields, which Bazel 4 reads.
pub fn collect(
    command: &reapi::Command,
    root: &Path,
    workdir: &[&str],
    result: &mut reapi::ActionResult,
    uploads: &mut Uploads,
) -> Result<(), BotError> {
    let outputs = crate::protocol::outputs(command);
    // Only outputs are read below the root: an action that asks for none may leave it as it likes.
    if outputs.is_empty() {
        return Ok(());
    }
    let root = &Beneath::open(root)?;
    for relative in outputs {
        let parts = paths::resolve(workdir, relative).map_err(|e| BotError::Invalid(format!("output path: {e}")))?;
        let path: PathBuf = parts.iter().collect();
        let Some(kind) = root.kind(&path)? else { continue };
        if kind == Kind::Symlink {
            let target = root.link_target(&path)?;
            let link = reapi::OutputSymlink { path: relative.clone(), target, node_properties: None };
            if command.output_paths.is_empty() {
                if command.output_directories.contains(relative) {
                    result.output_directory_symlinks.push(link.clone());
                } else {
                    result.output_file_symlinks.push(link.clone());
                }
            }
            result.output_symlinks.push(link);
        } else if kind == Kind::Dir {
            let mut children = Vec::new();
            let tree_root = read_tree(root, &path, uploads, &mut children)?;
            let tree = reapi::Tree { root: Some(tree_root), children };
            let tree_digest = uploads.add(Bytes::from(tree.encode_to_vec()));
            result.output_directories.push(reapi::OutputDirectory {
                path: relative.clone(),
                tree_digest: Some(to_proto(&tree_digest)),
                is_topologically_sorted: false,
                root_directory_digest: None,
            });
        } else if kind == Kind::File {
            let (digest, is_executable) = uploads.add_file(root, &path)?;
            result.output_files.push(reapi::OutputFile {
                path: relative.clone(),
                digest: Some(to_proto(&digest)),
                is_executable,
                contents: Vec::new(),
                node_properties: None,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_of_every_size_are_hashed_whole() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 5, 4095, 4096, 4097, FILE_CHUNK - 1, FILE_CHUNK, 2 * FILE_CHUNK + 3] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let name = format!("out-{len}");
            std::fs::write(dir.path().join(&name), &data).unwrap();
            let mut uploads = Uploads::default();
            let (digest, executable) = uploads.add_file(&Beneath::open(dir.path()).unwrap(), Path::new(&name)).unwrap();
            assert_eq!(digest, DigestFunction::Sha256.digest_of(&data), "a file of {len} bytes");
            assert!(!executable);
        }
    }

    #[test]
    fn small_files_are_held_within_the_budget_and_the_rest_streamed_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let beneath = Beneath::open(dir.path()).unwrap();
        let mut uploads = Uploads::default();
        let files = KEPT_IN_MEMORY / FILE_CHUNK;
        for i in 0..=files {
            let data = vec![i as u8; FILE_CHUNK];
            let name = format!("out-{i}");
            std::fs::write(dir.path().join(&name), &data).unwrap();
            let (digest, _) = uploads.add_file(&beneath, Path::new(&name)).unwrap();
            assert_eq!(digest, DigestFunction::Sha256.digest_of(&data));
            // The budget holds `files` whole chunks; the one past it is read again when uploaded.
            assert_eq!(uploads.reads_files(), i == files, "after file {i}");
            assert_eq!(matches!(uploads.blobs[&digest], Source::Bytes(ref held) if held[..] == data[..]), i < files);
        }
        assert_eq!(uploads.kept, KEPT_IN_MEMORY);
        // A file larger than a chunk is never held, however much budget is left.
        let mut uploads = Uploads::default();
        std::fs::write(dir.path().join("large"), vec![7u8; FILE_CHUNK + 1]).unwrap();
        uploads.add_file(&beneath, Path::new("large")).unwrap();
        assert!(uploads.reads_files());
        assert_eq!(uploads.kept, 0);
    }
}
