//! Generates the ByteStream service and client over the messages of `src/bytestream.rs`, whose
//! `data` fields are `Bytes`: decoding slices the receive buffer instead of copying every chunk.

use tonic_build::manual::{Method, Service};

fn method(name: &str, route: &str, input: &str, output: &str) -> tonic_build::manual::MethodBuilder {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type(format!("crate::bytestream::{input}"))
        .output_type(format!("crate::bytestream::{output}"))
        .codec_path("tonic_prost::ProstCodec")
}

fn main() {
    let bytestream = Service::builder()
        .name("ByteStream")
        .package("google.bytestream")
        .method(method("read", "Read", "ReadRequest", "ReadResponse").server_streaming().build())
        .method(method("write", "Write", "WriteRequest", "WriteResponse").client_streaming().build())
        .method(method("query_write_status", "QueryWriteStatus", "QueryWriteStatusRequest", "QueryWriteStatusResponse").build())
        .build();
    tonic_build::manual::Builder::new().build_transport(false).compile(&[bytestream]);
}
