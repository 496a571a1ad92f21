//! Compiles the .proto files with protox (a protobuf compiler in Rust), so building needs no
//! `protoc` on the machine.

const PROTOS: [&str; 4] = [
    "proto/workloadapi.proto",
    "proto/csi/v1/csi.proto",
    "proto/pluginregistration/v1/api.proto",
    "proto/wimsey/node/v1/node.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
