//! Which files the bot's input cache holds, least recently used first, within a byte budget. A file
//! used by a running action may be evicted: the action's hard link keeps its bytes, and a later
//! action fetches it again. The index is rebuilt at start from the files' modification times.

use std::path::Path;

use lru::LruCache;
use parking_lot::Mutex;

pub struct CacheIndex {
    max_bytes: u64,
    state: Mutex<State>,
}

struct State {
    files: LruCache<String, u64>,
    bytes: u64,
}

impl CacheIndex {
    /// The index of the files already in `dir` (temporaries of an earlier bot are removed).
    pub fn load(dir: &Path, max_bytes: u64) -> std::io::Result<CacheIndex> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("tmp-") {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let meta = entry.metadata()?;
            found.push((meta.modified().ok(), name, meta.len()));
        }
        found.sort();
        let index = CacheIndex { max_bytes, state: Mutex::new(State { files: LruCache::unbounded(), bytes: 0 }) };
        for (_, name, size) in found {
            for evicted in index.insert(&name, size) {
                let _ = std::fs::remove_file(dir.join(evicted));
            }
        }
        Ok(index)
    }

    /// Marks a file used; whether the index holds it.
    pub fn touch(&self, name: &str) -> bool {
        self.state.lock().files.get(name).is_some()
    }

    /// Records a file; returns the files to delete to stay within the budget (never this one).
    #[must_use]
    pub fn insert(&self, name: &str, size: u64) -> Vec<String> {
        let mut st = self.state.lock();
        if let Some(old) = st.files.put(name.to_string(), size) {
            st.bytes -= old;
        }
        st.bytes += size;
        let mut evicted = Vec::new();
        while st.bytes > self.max_bytes && st.files.len() > 1 {
            let Some((victim, size)) = st.files.pop_lru() else { break };
            st.bytes -= size;
            evicted.push(victim);
        }
        evicted
    }

    /// Forgets a file (its bytes can no longer be trusted).
    pub fn remove(&self, name: &str) {
        let mut st = self.state.lock();
        if let Some(size) = st.files.pop(name) {
            st.bytes -= size;
        }
    }

    /// Files and bytes held.
    pub fn usage(&self) -> (usize, u64) {
        let st = self.state.lock();
        (st.files.len(), st.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_files_go_first_and_the_index_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let index = CacheIndex::load(dir.path(), 250).unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(dir.path().join(name), [0u8; 100]).unwrap();
        }
        assert!(index.insert("a", 100).is_empty());
        assert!(index.insert("b", 100).is_empty());
        assert!(index.touch("a"), "a is now the most recently used");
        assert_eq!(index.insert("c", 100), vec!["b".to_string()]);
        assert_eq!(index.usage(), (2, 200));
        assert!(!index.touch("b"));
        // A file larger than the budget is kept alone.
        assert_eq!(index.insert("huge", 1000).len(), 2);
        assert_eq!(index.usage(), (1, 1000));

        std::fs::write(dir.path().join("tmp-1-2"), b"partial").unwrap();
        let reloaded = CacheIndex::load(dir.path(), 1000).unwrap();
        assert_eq!(reloaded.usage(), (3, 300), "a, b and c are on disk; the temporary is gone");
        assert!(!dir.path().join("tmp-1-2").exists());
    }
}
