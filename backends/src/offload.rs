//! Work that must not hold an async runtime's thread: file system calls and CPU-heavy work run on
//! tokio's blocking threads.

use std::path::PathBuf;

use crate::error::{Result, StoreError};

/// Runs `work` on a blocking thread. A task that panicked is an internal error, named by `what`.
pub async fn blocking<T: Send + 'static>(what: &str, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|e| StoreError::Internal(format!("{what}: {e}")))?
}

/// Removes a file left behind, from a `Drop`, where nothing can wait: on a blocking thread when there
/// is a runtime (unlinking a large file frees its blocks, which takes time), at once otherwise.
pub fn remove_soon(path: PathBuf) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || std::fs::remove_file(path))),
        Err(_) => {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Sets a file's modification time, from code that need not wait for it: on a blocking thread when
/// there is a runtime, at once otherwise. A failure is logged; the file may have gone meanwhile.
pub fn touch_soon(path: PathBuf, time: std::time::SystemTime) {
    let touch = move || {
        let touched = std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(time));
        if let Err(e) = touched {
            tracing::debug!(path = %path.display(), "setting a file's time: {e}");
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(touch)),
        Err(_) => touch(),
    }
}
