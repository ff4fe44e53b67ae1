//! Work that must not hold an async runtime's thread: file system calls and CPU-heavy work run on
//! tokio's blocking threads.

use std::path::PathBuf;

use crate::error::{Result, StoreError};

/// Runs `work` on a blocking thread. A task that panicked is an internal error, named by `what`.
pub async fn blocking<T: Send + 'static>(what: &str, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|e| StoreError::Internal(format!("{what}: {e}")))?
}

/// Runs file system work that nothing waits for (from a `Drop`, or a refresh): on a blocking thread
/// when there is a runtime, at once otherwise.
pub fn soon(work: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(work)),
        Err(_) => work(),
    }
}

/// Removes a file left behind (unlinking a large file frees its blocks, which takes time).
pub fn remove_soon(path: PathBuf) {
    soon(move || {
        let _ = std::fs::remove_file(path);
    });
}

/// Sets a file's modification time. A failure is logged; the file may have gone meanwhile.
pub fn touch_soon(path: PathBuf, time: std::time::SystemTime) {
    soon(move || {
        let touched = std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(time));
        if let Err(e) = touched {
            tracing::debug!(path = %path.display(), "setting a file's time: {e}");
        }
    });
}
