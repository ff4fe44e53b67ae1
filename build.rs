//! Generates the gRPC server and client of the Remote Workers API (Bots service). Its messages are
//! written by hand in `src/protocol/rwapi.rs`: no `protoc` is needed to build Strata.

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

fn main() {
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
}
