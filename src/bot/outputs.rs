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

use super::BotError;
use crate::protocol::paths;
use crate::protocol::to_proto;

/// Bytes per read when hashing and uploading output files: outputs are streamed from disk, never
/// held whole in memory (a 200 MiB stdout must not cost 200 MiB).
const FILE_CHUNK: usize = 1 << 20;

/// Where an output blob's bytes are: small encoded messages in memory, files on disk.
enum Source {
    Bytes(Bytes),
    File(PathBuf),
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

    /// A file, and whether it is executable. A small one is read whole and kept in memory, within
    /// a budget per action; a larger one is hashed in chunks and streamed from disk when uploaded.
    /// Blocking: run it off the async runtime.
    pub fn add_file(&mut self, path: &Path) -> Result<(Digest, bool), BotError> {
        use std::io::{Read, Seek};
        let mut file = std::fs::File::open(path).map_err(|e| BotError::io(path, e))?;
        let meta = file.metadata().map_err(|e| BotError::io(path, e))?;
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
        self.blobs.insert(digest, Source::File(path.to_path_buf()));
        Ok((digest, executable))
    }

    /// Whether uploading still reads files in the action's directory.
    pub fn reads_files(&self) -> bool {
        self.blobs.values().any(|source| matches!(source, Source::File(_)))
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
                Source::File(path) => upload_file(cas, digest, path).await?,
            }
        }
        Ok(())
    }
}

async fn upload_file(cas: &Arc<dyn BlobStore>, digest: &Digest, path: &Path) -> Result<(), BotError> {
    use tokio::io::AsyncReadExt;
    // Small files (most of a build's outputs) go whole, so the CAS client can batch them.
    if digest.size <= FILE_CHUNK as u64 {
        let data = tokio::fs::read(path).await.map_err(|e| BotError::io(path, e))?;
        if data.len() as u64 != digest.size {
            return Err(BotError::Invalid(format!("output {} changed while it was uploaded", path.display())));
        }
        return Ok(cas.write(digest, Bytes::from(data)).await?);
    }
    let mut file = tokio::fs::File::open(path).await.map_err(|e| BotError::io(path, e))?;
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
        return Err(BotError::Invalid(format!("output {} changed while it was uploaded", path.display())));
    }
    writer.commit().await?;
    Ok(())
}

/// The output at `relative` to the working directory `workdir` (components below `root`), if the
/// action made it. Its parents must be real directories inside the input root.
fn locate(root: &Path, workdir: &[&str], relative: &str) -> Result<Option<(PathBuf, std::fs::Metadata)>, BotError> {
    let parts = paths::resolve(workdir, relative).map_err(|e| BotError::Invalid(format!("output path: {e}")))?;
    if parts.is_empty() {
        let meta = std::fs::symlink_metadata(root).map_err(|e| BotError::io(root, e))?;
        return Ok(Some((root.to_path_buf(), meta)));
    }
    let mut path = root.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BotError::io(&path, e)),
        };
        if i + 1 == parts.len() {
            return Ok(Some((path, meta)));
        }
        if !meta.is_dir() {
            return Err(BotError::Invalid(format!("output {relative:?}: {part:?} on its way is not a directory")));
        }
    }
    Ok(None)
}

/// Reads a directory into Directory messages: returns the root and every descendant.
fn read_tree(path: &Path, uploads: &mut Uploads, children: &mut Vec<reapi::Directory>) -> Result<reapi::Directory, BotError> {
    let mut dir = reapi::Directory::default();
    let mut entries: Vec<_> = std::fs::read_dir(path)
        .map_err(|e| BotError::io(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| BotError::io(path, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let child = entry.path();
        let kind = entry.file_type().map_err(|e| BotError::io(&child, e))?;
        if kind.is_symlink() {
            let target = std::fs::read_link(&child).map_err(|e| BotError::io(&child, e))?;
            dir.symlinks.push(reapi::SymlinkNode { name, target: target.to_string_lossy().into_owned(), node_properties: None });
        } else if kind.is_dir() {
            let sub = read_tree(&child, uploads, children)?;
            let digest = uploads.add(Bytes::from(sub.encode_to_vec()));
            children.push(sub);
            dir.directories.push(reapi::DirectoryNode { name, digest: Some(to_proto(&digest)) });
        } else if kind.is_file() {
            let (digest, is_executable) = uploads.add_file(&child)?;
            dir.files.push(reapi::FileNode { name, digest: Some(to_proto(&digest)), is_executable, node_properties: None });
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
    for relative in crate::protocol::outputs(command) {
        let Some((path, meta)) = locate(root, workdir, relative)? else { continue };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| BotError::io(&path, e))?.to_string_lossy().into_owned();
            let link = reapi::OutputSymlink { path: relative.clone(), target, node_properties: None };
            if command.output_paths.is_empty() {
                if command.output_directories.contains(relative) {
                    result.output_directory_symlinks.push(link.clone());
                } else {
                    result.output_file_symlinks.push(link.clone());
                }
            }
            result.output_symlinks.push(link);
        } else if meta.is_dir() {
            let mut children = Vec::new();
            let root = read_tree(&path, uploads, &mut children)?;
            let tree = reapi::Tree { root: Some(root), children };
            let tree_digest = uploads.add(Bytes::from(tree.encode_to_vec()));
            result.output_directories.push(reapi::OutputDirectory {
                path: relative.clone(),
                tree_digest: Some(to_proto(&tree_digest)),
                is_topologically_sorted: false,
                root_directory_digest: None,
            });
        } else if meta.is_file() {
            let (digest, is_executable) = uploads.add_file(&path)?;
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
            let path = dir.path().join(format!("out-{len}"));
            std::fs::write(&path, &data).unwrap();
            let mut uploads = Uploads::default();
            let (digest, executable) = uploads.add_file(&path).unwrap();
            assert_eq!(digest, DigestFunction::Sha256.digest_of(&data), "a file of {len} bytes");
            assert!(!executable);
        }
    }

    #[test]
    fn small_files_are_held_within_the_budget_and_the_rest_streamed_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut uploads = Uploads::default();
        let files = KEPT_IN_MEMORY / FILE_CHUNK;
        for i in 0..=files {
            let data = vec![i as u8; FILE_CHUNK];
            let path = dir.path().join(format!("out-{i}"));
            std::fs::write(&path, &data).unwrap();
            let (digest, _) = uploads.add_file(&path).unwrap();
            assert_eq!(digest, DigestFunction::Sha256.digest_of(&data));
            // The budget holds `files` whole chunks; the one past it is read again when uploaded.
            assert_eq!(uploads.reads_files(), i == files, "after file {i}");
            assert_eq!(matches!(uploads.blobs[&digest], Source::Bytes(ref held) if held[..] == data[..]), i < files);
        }
        assert_eq!(uploads.kept, KEPT_IN_MEMORY);
        // A file larger than a chunk is never held, however much budget is left.
        let mut uploads = Uploads::default();
        let path = dir.path().join("large");
        std::fs::write(&path, vec![7u8; FILE_CHUNK + 1]).unwrap();
        uploads.add_file(&path).unwrap();
        assert!(uploads.reads_files());
        assert_eq!(uploads.kept, 0);
    }
}
