//! Generates the gRPC code Strata needs beyond the REAPI crate, without a system `protoc`:
//! - the Remote Workers API's Bots service, whose messages are written by hand in
//!   `src/protocol/rwapi.rs`;
//! - Strata's own admin API from `proto/` (parsed by `protox`).

use tonic_build::manual::{Method, Service};

fn method(name: &str, route: &str, input: &str, output: &str) -> Method {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type(format!("crate::protocol::rwapi::{input}"))
        .output_type(output)
        .codec_path("tonic_prost::ProstCodec")
        .build()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bots = Service::builder()
        .name("Bots")
        .package("google.devtools.remoteworkers.v1test2")
        .method(method("create_bot_session", "CreateBotSession", "CreateBotSessionRequest", "crate::protocol::rwapi::BotSession"))
        .method(method("update_bot_session", "UpdateBotSession", "UpdateBotSessionRequest", "crate::protocol::rwapi::BotSession"))
        .method(method(
            "post_bot_event_temp",
            "PostBotEventTemp",
            "PostBotEventTempRequest",
            "bazel_remote_apis::google::protobuf::Empty",
        ))
        .build();
    tonic_build::manual::Builder::new().compile(&[bots]);

    let admin = "proto/strata/admin/v1/admin.proto";
    println!("cargo:rerun-if-changed={admin}");
    let descriptors = protox::compile([admin], ["proto"])?;
    // Serialize: `strata status --json` prints the messages as they are.
    tonic_prost_build::configure().type_attribute(".", "#[derive(serde::Serialize)]").compile_fds(descriptors)?;
    Ok(())
}
