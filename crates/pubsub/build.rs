//! Generates the `google.pubsub.v1` messages and gRPC servers from the vendored protos
//! (`proto/`), compiled by `protox` so that building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["google/pubsub/v1/pubsub.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
