//! What an Action and its Command ask for, read the same way by the server (admission, scheduling)
//! and by bots: the platform, the outputs, and timestamps for execution metadata.

use std::time::SystemTime;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::protobuf::Timestamp;

/// The platform properties an action asks for: the Action's (REAPI 2.2), else the Command's.
#[allow(deprecated)] // REAPI 2.0 clients (Bazel 4) put the platform in the Command.
pub fn platform<'a>(action: &'a reapi::Action, command: &'a reapi::Command) -> impl Iterator<Item = (&'a str, &'a str)> {
    let platform = action.platform.as_ref().or(command.platform.as_ref());
    platform.into_iter().flat_map(|p| p.properties.iter().map(|p| (p.name.as_str(), p.value.as_str())))
}

/// The outputs a command asks for: REAPI 2.1 `output_paths` when set (the 2.0 fields are then
/// ignored, as the protocol says), else 2.0 `output_files` and `output_directories`.
#[allow(deprecated)] // REAPI 2.0 clients (Bazel 4) send output_files and output_directories.
pub fn outputs(command: &reapi::Command) -> Vec<&String> {
    if command.output_paths.is_empty() {
        command.output_files.iter().chain(&command.output_directories).collect()
    } else {
        command.output_paths.iter().collect()
    }
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: since.as_secs() as i64, nanos: since.subsec_nanos() as i32 }
}
