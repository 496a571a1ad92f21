//! Compiles the .proto files with protox (a protobuf compiler in Rust), so building needs no
//! `protoc` on the machine. Also writes the Workload API's encoded file descriptor set (with its
//! imports) for gRPC server reflection.

use std::path::PathBuf;

const PROTOS: [&str; 6] = [
    "proto/workloadapi.proto",
    "proto/csi/v1/csi.proto",
    "proto/pluginregistration/v1/api.proto",
    "proto/wimsey/node/v1/node.proto",
    "proto/spire/api/server/entry/v1/entry.proto",
    "proto/spire/api/server/trustdomain/v1/trustdomain.proto",
];

/// The file under `OUT_DIR` that `wimsey_proto::workload::FILE_DESCRIPTOR_SET` includes.
const WORKLOAD_DESCRIPTOR_SET: &str = "workloadapi_descriptor_set.bin";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;

    let workload = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .open_file("workloadapi.proto")?
        .encode_file_descriptor_set();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join(WORKLOAD_DESCRIPTOR_SET), workload)?;
    Ok(())
}
