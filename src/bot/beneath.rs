//! An action's directory as the bot reads it after the run: every path is resolved from a directory
//! the bot holds open, by the kernel, refusing any symlink on the way (`openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`). A process the action left running can still change its
//! tree after the bot looked at it; what it swaps in for a directory or a file cannot lead the bot
//! out of the action's directory, nor make it wait on a FIFO. The bot's walks over the directories
//! (chmod before emptying, chown to the actions' user) go from descriptor to descriptor the same way.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

use super::BotError;

/// A directory the bot holds open.
#[derive(Clone)]
pub struct Beneath {
    fd: Arc<OwnedFd>,
    /// Its path, for messages.
    path: PathBuf,
}

/// What is at a path, not following a symlink.
#[derive(Debug, PartialEq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device: not an output.
    Other,
}

impl Kind {
    fn of(file_type: FileType) -> Kind {
        match file_type {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS);

impl Beneath {
    /// A directory of the bot's own (an action's directory, or its `root`), itself never a symlink.
    pub fn open(path: &Path) -> Result<Beneath, BotError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
                BotError::Invalid(format!("{} is no longer a directory: the action replaced it (with a symlink or a file)", path.display()))
            }
            other => BotError::io(path, other.into()),
        })?;
        Ok(Beneath { fd: Arc::new(fd), path: path.to_path_buf() })
    }

    /// The path of `relative` below this directory, for messages.
    pub fn shown(&self, relative: &Path) -> PathBuf {
        self.path.join(relative)
    }

    fn at(&self, relative: &Path, flags: OFlags) -> Result<OwnedFd, Refused> {
        // "" names the directory itself, which openat2 spells ".".
        let relative = if relative.as_os_str().is_empty() { Path::new(".") } else { relative };
        rustix::fs::openat2(&*self.fd, relative, flags | OFlags::CLOEXEC, Mode::empty(), RESOLVE).map_err(|errno| match errno {
            rustix::io::Errno::NOENT => Refused::Absent,
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR | rustix::io::Errno::XDEV => Refused::NotBeneath,
            // A kernel before 5.6, or a seccomp filter that does not know the call.
            rustix::io::Errno::NOSYS => Refused::Io(std::io::Error::other("the bot needs openat2 (Linux 5.6 or later) to read an action's outputs")),
            other => Refused::Io(other.into()),
        })
    }

    /// What is at `relative`, if anything; `Err` if a symlink or a file stands where a directory
    /// of its path should be.
    pub fn kind(&self, relative: &Path) -> Result<Option<Kind>, BotError> {
        // O_PATH with O_NOFOLLOW opens a symlink itself when it is the last component.
        let fd = match self.at(relative, OFlags::PATH | OFlags::NOFOLLOW) {
            Ok(fd) => fd,
            Err(Refused::Absent) => return Ok(None),
            Err(e) => return Err(e.into_error(self, relative)),
        };
        let stat = rustix::fs::fstat(&fd).map_err(|e| BotError::io(&self.shown(relative), e.into()))?;
        Ok(Some(Kind::of(FileType::from_raw_mode(stat.st_mode))))
    }

    /// A regular file's contents, with its metadata. Something else there now (a FIFO, a device,
    /// a symlink) is refused at once.
    pub fn file(&self, relative: &Path) -> Result<(File, Metadata), BotError> {
        // O_NONBLOCK makes the open of a FIFO return at once; reads of a regular file ignore it.
        let fd = self.at(relative, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK).map_err(|e| e.into_error(self, relative))?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| BotError::io(&self.shown(relative), e))?;
        if !meta.is_file() {
            return Err(changed(&self.shown(relative), "a regular file"));
        }
        Ok((file, meta))
    }

    /// The names in the directory at `relative` and what each is, sorted by name.
    pub fn entries(&self, relative: &Path) -> Result<Vec<(PathBuf, Kind)>, BotError> {
        let shown = self.shown(relative);
        let fd = self.at(relative, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW).map_err(|e| e.into_error(self, relative))?;
        let mut entries = Vec::new();
        for entry in rustix::fs::Dir::new(fd).map_err(|e| BotError::io(&shown, e.into()))? {
            let entry = entry.map_err(|e| BotError::io(&shown, e.into()))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let child = relative.join(name);
            // Some file systems do not say in the listing.
            let kind = match entry.file_type() {
                FileType::Unknown => match self.kind(&child)? {
                    Some(kind) => kind,
                    None => continue,
                },
                known => Kind::of(known),
            };
            entries.push((child, kind));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    /// The target of the symlink at `relative`.
    pub fn link_target(&self, relative: &Path) -> Result<String, BotError> {
        let fd = self.at(relative, OFlags::PATH | OFlags::NOFOLLOW).map_err(|e| e.into_error(self, relative))?;
        // An O_PATH descriptor of a symlink: readlinkat with an empty path reads it.
        let target = rustix::fs::readlinkat(&fd, "", Vec::new()).map_err(|e| match e {
            rustix::io::Errno::NOENT | rustix::io::Errno::INVAL => changed(&self.shown(relative), "a symlink"),
            other => BotError::io(&self.shown(relative), other.into()),
        })?;
        Ok(String::from_utf8_lossy(target.as_bytes()).into_owned())
    }
}

/// Calls `visit` with every directory at and below `dir` (the top one first), each reached from its
/// parent's descriptor without following a symlink. The bot chmods and chowns an action's tree as
/// root while a process the action left running may swap a directory in it for a symlink: what it
/// changes must stay the action's own. A directory swapped away, or that the bot may not open, is
/// skipped.
pub fn for_each_dir(dir: &Path, visit: &mut dyn FnMut(BorrowedFd<'_>) -> std::io::Result<()>) -> std::io::Result<()> {
    walk(rustix::fs::open(dir, DIR_FLAGS, Mode::empty())?, visit)
}

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

fn walk(dir: OwnedFd, visit: &mut dyn FnMut(BorrowedFd<'_>) -> std::io::Result<()>) -> std::io::Result<()> {
    visit(dir.as_fd())?;
    let mut subdirs = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." && matches!(entry.file_type(), FileType::Directory | FileType::Unknown) {
            subdirs.push(name.to_owned());
        }
    }
    for name in subdirs {
        use rustix::io::Errno;
        match rustix::fs::openat(&dir, name.as_c_str(), DIR_FLAGS, Mode::empty()) {
            Ok(sub) => walk(sub, visit)?,
            Err(Errno::LOOP | Errno::NOTDIR | Errno::NOENT | Errno::ACCESS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Why a path below the directory could not be opened.
enum Refused {
    Absent,
    /// A symlink, or a file where a directory should be, on the way: it no longer leads below.
    NotBeneath,
    Io(std::io::Error),
}

impl Refused {
    fn into_error(self, dir: &Beneath, relative: &Path) -> BotError {
        let shown = dir.shown(relative);
        match self {
            Refused::Absent => BotError::io(&shown, std::io::ErrorKind::NotFound.into()),
            Refused::NotBeneath => BotError::Invalid(format!(
                "output {} is a symlink, or is below a symlink or something else that is not a directory: outputs are never read through a symlink",
                shown.display()
            )),
            Refused::Io(e) => BotError::io(&shown, e),
        }
    }
}

/// What was found at `path` when the action ended is no longer there.
fn changed(path: &Path, what: &str) -> BotError {
    BotError::Invalid(format!("output {} is no longer {what}: a process the action left running changed it", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Runs `f` on a thread and fails the test if it has not returned within 5 s (a FIFO's open
    /// would wait for good).
    fn promptly<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || drop(tx.send(f())));
        rx.recv_timeout(std::time::Duration::from_secs(5)).expect("returned within 5 s")
    }

    fn message(e: BotError) -> String {
        assert!(matches!(e, BotError::Invalid(_)), "{e}");
        e.to_string()
    }

    #[test]
    fn what_an_action_left_is_read_below_its_directory_and_never_through_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::write(root.join("d/e/f"), b"output").unwrap();
        std::fs::write(tmp.path().join("secret"), b"not the action's").unwrap();
        symlink("../secret", root.join("link")).unwrap();
        symlink(tmp.path(), root.join("up")).unwrap();
        let beneath = Beneath::open(&root).unwrap();

        assert_eq!(beneath.kind(Path::new("")).unwrap(), Some(Kind::Dir));
        assert_eq!(beneath.kind(Path::new("d/e/f")).unwrap(), Some(Kind::File));
        assert_eq!(beneath.kind(Path::new("link")).unwrap(), Some(Kind::Symlink));
        assert_eq!(beneath.kind(Path::new("d/none")).unwrap(), None);
        let (mut file, meta) = beneath.file(Path::new("d/e/f")).unwrap();
        let mut read = String::new();
        std::io::Read::read_to_string(&mut file, &mut read).unwrap();
        assert_eq!((read.as_str(), meta.len()), ("output", 6));
        assert_eq!(beneath.link_target(Path::new("link")).unwrap(), "../secret");
        let names: Vec<_> = beneath.entries(Path::new("")).unwrap();
        assert_eq!(names, [(PathBuf::from("d"), Kind::Dir), (PathBuf::from("link"), Kind::Symlink), (PathBuf::from("up"), Kind::Symlink)]);

        // A symlink is never followed: not as the file, not on the way, not as the directory listed.
        assert!(message(beneath.file(Path::new("link")).unwrap_err()).contains("symlink"));
        for through in ["up/secret", "up/root/d/e/f"] {
            assert!(message(beneath.kind(Path::new(through)).unwrap_err()).contains("not a directory"), "{through}");
            assert!(message(beneath.file(Path::new(through)).unwrap_err()).contains("not a directory"), "{through}");
        }
        assert!(message(beneath.entries(Path::new("up")).unwrap_err()).contains("not a directory"));
        // Nor a file on the way, nor `..`.
        assert!(message(beneath.kind(Path::new("d/e/f/g")).unwrap_err()).contains("not a directory"));
        assert!(message(beneath.file(Path::new("../secret")).unwrap_err()).contains("not a directory"));
    }

    #[test]
    fn what_a_leftover_process_swaps_in_after_the_look_is_refused_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("out")).unwrap();
        std::fs::write(root.join("out/file"), b"x").unwrap();
        std::fs::write(root.join("plain"), b"x").unwrap();
        let beneath = Beneath::open(&root).unwrap();
        assert_eq!(beneath.kind(Path::new("out")).unwrap(), Some(Kind::Dir));
        assert_eq!(beneath.kind(Path::new("plain")).unwrap(), Some(Kind::File));

        // Seen as a directory, then swapped for a symlink to a directory outside.
        std::fs::rename(root.join("out"), tmp.path().join("moved")).unwrap();
        symlink(tmp.path().join("moved"), root.join("out")).unwrap();
        assert!(message(beneath.entries(Path::new("out")).unwrap_err()).contains("not a directory"));
        assert!(message(beneath.file(Path::new("out/file")).unwrap_err()).contains("not a directory"));

        // Seen as a file, then swapped for a FIFO: refused without waiting for a writer.
        std::fs::remove_file(root.join("plain")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, root.join("plain"), FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        let fifo = beneath.clone();
        let err = promptly(move || fifo.file(Path::new("plain")).map(|_| ()).unwrap_err());
        assert!(message(err).contains("no longer a regular file"));
        // Seen as a symlink, then swapped for a file.
        let err = promptly(move || beneath.link_target(Path::new("plain")).unwrap_err());
        assert!(message(err).contains("no longer a symlink"));
    }

    #[test]
    fn a_walk_of_an_actions_directories_never_leaves_them_even_when_they_are_swapped_midway() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        for dir in [root.join("a/deep"), root.join("z/deep"), outside.join("inner")] {
            std::fs::create_dir_all(dir).unwrap();
        }
        symlink(&outside, root.join("link")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let before = (mode(&outside), mode(&outside.join("inner")));
        let mut visits = 0;
        for_each_dir(&root, &mut |fd| {
            visits += 1;
            // On the first directory below the root, whichever it is, both are swapped for symlinks
            // to a directory outside: the one being visited is held open, the other is not entered.
            if visits == 2 {
                for name in ["a", "z"] {
                    std::fs::rename(root.join(name), tmp.path().join(format!("moved-{name}"))).unwrap();
                    symlink(&outside, root.join(name)).unwrap();
                }
            }
            rustix::fs::fchmod(fd, Mode::from_raw_mode(0o700)).map_err(Into::into)
        })
        .unwrap();
        // The root, the directory visited when the swap came, and its `deep`.
        assert_eq!(visits, 3);
        assert_eq!((mode(&outside), mode(&outside.join("inner"))), before, "nothing outside was changed");
        assert_eq!(mode(&root), 0o700);
    }
}
