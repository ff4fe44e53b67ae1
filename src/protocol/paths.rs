//! The names and paths that come from the CAS and from Commands, checked before they touch a file
//! system: a Directory entry is one plain path component, and a path (working directory, output
//! path, symlink target) must stay inside the action's directory. Used by the server to refuse bad
//! actions up front and by the bot, which trusts nothing it fetches.

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;

use crate::quote::quote;

/// A Directory entry name: one component, not empty, `.` or `..`, without `/` or NUL.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(format!("{} is not a valid file name (one path component, not \".\" or \"..\")", quote(name)));
    }
    Ok(())
}

/// The entry names of one Directory (files, directories, symlinks) are distinct: REAPI requires it,
/// and of two entries of one name one could not be made, or would replace the other.
pub fn check_distinct(dir: &reapi::Directory) -> Result<(), String> {
    let files = dir.files.iter().map(|f| f.name.as_str());
    let names = files.chain(dir.directories.iter().map(|d| d.name.as_str())).chain(dir.symlinks.iter().map(|l| l.name.as_str()));
    let mut seen = std::collections::HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(format!("{} names two entries of one directory", quote(name)));
        }
    }
    Ok(())
}

/// A relative path that stays below its root: no leading `/`, and `..` never climbs above it.
/// Returns its components, with `.` and empty ones dropped.
pub fn check_relative(path: &str) -> Result<Vec<&str>, String> {
    resolve(&[], path)
}

/// Resolves `path`, relative to the directory `base` (components below the root), to components
/// below the root. `.` and `..` are fine as long as the path never climbs above the root: REAPI
/// output paths are relative to the working directory, and BuildStream's `../../../install` leaves
/// the working directory but stays inside the input root.
pub fn resolve<'a>(base: &[&'a str], path: &'a str) -> Result<Vec<&'a str>, String> {
    if path.starts_with('/') {
        return Err(format!("{} is absolute; paths must be relative to the action's directory", quote(path)));
    }
    if path.contains('\0') {
        return Err(format!("{} contains a NUL byte", quote(path)));
    }
    let mut parts: Vec<&str> = base.to_vec();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("{} leaves the input root", quote(path)));
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts)
}

/// A symlink target, relative to the directory holding the link, that stays below the root.
/// `depth` is the link's directory depth below the root.
pub fn check_symlink_target(target: &str, depth: usize) -> Result<(), String> {
    if target.is_empty() {
        return Err("a symlink with an empty target".into());
    }
    if target.starts_with('/') {
        return Err(format!("symlink target {} is absolute", quote(target)));
    }
    let mut level = depth as i64;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => level -= 1,
            _ => level += 1,
        }
        if level < 0 {
            return Err(format!("symlink target {} leaves the action's directory", quote(target)));
        }
    }
    Ok(())
}

/// Resolution steps one tree's links may take in all, plus `STEPS_PER_LINK` for each: a tree of
/// links whose targets name further links could otherwise take exponential time.
const MAX_RESOLUTION_STEPS: usize = 1_000_000;
const STEPS_PER_LINK: usize = 100;
/// Links followed in one resolution, as the kernel's limit (40).
const MAX_HOPS: usize = 40;

/// The symlinks of a whole input tree, checked together: each target is resolved through the links
/// already in the tree (`x/up -> ..` and `esc -> x/up/x/up/..` pass the per-link check, which counts
/// components, but `esc` resolves above the root).
#[derive(Default)]
pub struct Symlinks {
    by_path: std::collections::HashMap<Vec<String>, String>,
}

impl Symlinks {
    /// Adds the link `name -> target` in the directory `dir` (components below the root).
    pub fn add(&mut self, dir: &[&str], name: &str, target: &str) {
        let mut path: Vec<String> = dir.iter().map(|c| c.to_string()).collect();
        path.push(name.to_string());
        self.by_path.insert(path, target.to_string());
    }

    /// Every link's target, resolved through the others, stays below the root.
    pub fn check(&self) -> Result<(), String> {
        let mut budget = MAX_RESOLUTION_STEPS + STEPS_PER_LINK * self.by_path.len();
        for (path, target) in &self.by_path {
            let dir = &path[..path.len() - 1];
            self.resolve(dir.to_vec(), target, 0, &mut budget).map_err(|e| format!("symlink {}: {e}", quote(&path.join("/"))))?;
        }
        Ok(())
    }

    fn resolve(&self, mut at: Vec<String>, target: &str, hops: usize, budget: &mut usize) -> Result<Vec<String>, String> {
        if hops > MAX_HOPS {
            return Err(format!("more than {MAX_HOPS} links in a row (a loop?)"));
        }
        for part in target.split('/') {
            if *budget == 0 {
                return Err("the tree's symlinks take too many steps to resolve (links naming links, many times over)".into());
            }
            *budget -= 1;
            match part {
                "" | "." => {}
                ".." => {
                    if at.pop().is_none() {
                        return Err(format!("target {} resolves outside the action's directory", quote(target)));
                    }
                }
                name => {
                    at.push(name.to_string());
                    if let Some(next) = self.by_path.get(&at) {
                        at.pop();
                        at = self.resolve(at, next, hops + 1, budget)?;
                    }
                }
            }
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_used_twice_in_one_directory_is_refused_whatever_the_kinds() {
        let file = |name: &str| reapi::FileNode { name: name.into(), ..Default::default() };
        let dir = |name: &str| reapi::DirectoryNode { name: name.into(), ..Default::default() };
        let distinct = reapi::Directory { files: vec![file("a"), file("b")], directories: vec![dir("c")], ..Default::default() };
        assert_eq!(check_distinct(&distinct), Ok(()));
        let twice = [
            reapi::Directory { files: vec![file("a"), file("a")], ..Default::default() },
            reapi::Directory { files: vec![file("a")], directories: vec![dir("a")], ..Default::default() },
            reapi::Directory { directories: vec![dir("a")], symlinks: vec![reapi::SymlinkNode { name: "a".into(), target: "b".into(), ..Default::default() }], ..Default::default() },
        ];
        for dir in twice {
            assert!(check_distinct(&dir).is_err_and(|e| e.contains("\"a\" names two entries")), "{dir:?}");
        }
    }

    #[test]
    fn symlink_chains_resolve_through_links_in_the_tree() {
        let mut links = Symlinks::default();
        links.add(&["x"], "up", "..");
        assert!(check_symlink_target("..", 1).is_ok() && check_symlink_target("x/up/x/up/..", 0).is_ok(), "each passes alone");
        links.add(&[], "fine", "x/up/x");
        assert!(links.check().is_ok());
        links.add(&[], "esc", "x/up/x/up/..");
        let err = links.check().unwrap_err();
        assert!(err.contains("esc") && err.contains("outside"), "{err}");

        let mut looped = Symlinks::default();
        looped.add(&[], "a", "b");
        looped.add(&[], "b", "a");
        assert!(looped.check().unwrap_err().contains("loop"));

        // In d/, each link names the next ten times over and every one resolves back to d: 10^30
        // steps unbounded, refused after the budget instead.
        let mut wide = Symlinks::default();
        for i in 0..30 {
            wide.add(&["d"], &format!("l{i}"), &vec![format!("l{}", i + 1); 10].join("/"));
        }
        wide.add(&["d"], "l30", ".");
        assert!(wide.check().unwrap_err().contains("steps"));
    }

    #[test]
    fn names() {
        assert!(check_name("a.txt").is_ok());
        for bad in ["", ".", "..", "a/b", "/", "a\0"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn relative_paths() {
        assert_eq!(check_relative("a/./b//c").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(check_relative("a/../b").unwrap(), vec!["b"]);
        assert_eq!(check_relative("").unwrap(), Vec::<&str>::new());
        for bad in ["/etc/passwd", "..", "a/../../b", "a\0"] {
            assert!(check_relative(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_below_a_working_directory() {
        assert_eq!(resolve(&["a", "b", "c"], "../../../install").unwrap(), vec!["install"]);
        assert_eq!(resolve(&["a"], ".").unwrap(), vec!["a"]);
        assert_eq!(resolve(&[], ".").unwrap(), Vec::<&str>::new());
        assert_eq!(resolve(&["a"], "../a/./b").unwrap(), vec!["a", "b"]);
        for bad in ["../../x", "/abs", "../.."] {
            assert!(resolve(&["a"], bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn symlink_targets() {
        assert!(check_symlink_target("b", 0).is_ok());
        assert!(check_symlink_target("../b", 1).is_ok());
        for (bad, depth) in [("../b", 0), ("/etc", 3), ("a/../../..", 1), ("", 0)] {
            assert!(check_symlink_target(bad, depth).is_err(), "{bad:?}");
        }
    }
}
