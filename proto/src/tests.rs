//! The generated gRPC paths are part of the wire contract: a client built from the upstream
//! protos must reach our server. Each test asserts the exact paths the generated code routes.

use std::collections::BTreeSet;

/// Every `"/<service>/<method>"` literal in generated source, for the given service.
fn paths_in(source: &str, service: &str) -> BTreeSet<String> {
    let prefix = format!("\"/{service}/");
    source
        .match_indices(&prefix)
        .filter_map(|(at, _)| {
            let rest = &source[at + 1..];
            rest.find('"').map(|end| rest[..end].to_owned())
        })
        .collect()
}

fn generated(file: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("OUT_DIR")).join(file))
        .expect("generated file")
}

fn expected(service: &str, methods: &[&str]) -> BTreeSet<String> {
    methods.iter().map(|m| format!("/{service}/{m}")).collect()
}

#[test]
fn workload_api_paths_have_no_package() {
    let source = generated("_.rs");
    let want = expected(
        "SpiffeWorkloadAPI",
        &[
            "FetchX509SVID",
            "FetchX509Bundles",
            "FetchJWTSVID",
            "FetchJWTBundles",
            "ValidateJWTSVID",
            "FetchWITSVID",
            "FetchWITBundles",
        ],
    );
    assert_eq!(paths_in(&source, "SpiffeWorkloadAPI"), want);
    assert_eq!(
        <crate::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer<()> as tonic::server::NamedService>::NAME,
        "SpiffeWorkloadAPI"
    );
}

#[test]
fn csi_paths_are_in_csi_v1() {
    let source = generated("csi.v1.rs");
    assert_eq!(
        paths_in(&source, "csi.v1.Identity"),
        expected(
            "csi.v1.Identity",
            &["GetPluginInfo", "GetPluginCapabilities", "Probe"]
        )
    );
    assert_eq!(
        paths_in(&source, "csi.v1.Node"),
        expected(
            "csi.v1.Node",
            &[
                "NodeStageVolume",
                "NodeUnstageVolume",
                "NodePublishVolume",
                "NodeUnpublishVolume",
                "NodeGetVolumeStats",
                "NodeExpandVolume",
                "NodeGetCapabilities",
                "NodeGetInfo",
            ]
        )
    );
    assert!(
        paths_in(&source, "csi.v1.Controller").is_empty(),
        "no Controller service"
    );
}

#[test]
fn plugin_registration_paths() {
    let source = generated("pluginregistration.rs");
    assert_eq!(
        paths_in(&source, "pluginregistration.Registration"),
        expected(
            "pluginregistration.Registration",
            &["GetInfo", "NotifyRegistrationStatus"]
        )
    );
}

#[test]
fn field_numbers_round_trip_on_the_wire() {
    use prost::Message;
    // X509SVID.hint is field 5 (tag 0x2a), JWTSVIDRequest.spiffe_id is field 2 (tag 0x12),
    // WITBundlesResponse.bundles is a map<string,string> at field 1.
    let svid = crate::workload::X509svid {
        hint: "h".into(),
        ..Default::default()
    };
    assert_eq!(svid.encode_to_vec(), vec![0x2a, 0x01, b'h']);
    let request = crate::workload::JwtsvidRequest {
        audience: vec![],
        spiffe_id: "x".into(),
    };
    assert_eq!(request.encode_to_vec(), vec![0x12, 0x01, b'x']);
    let publish = crate::csi::v1::NodePublishVolumeRequest {
        readonly: true,
        ..Default::default()
    };
    assert_eq!(publish.encode_to_vec(), vec![0x30, 0x01]);
}

#[test]
fn workload_descriptor_set_holds_the_service_and_its_imports() {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(crate::workload::FILE_DESCRIPTOR_SET)
        .expect("descriptor set decodes");
    let names: BTreeSet<&str> = set.file.iter().map(|f| f.name()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["workloadapi.proto", "google/protobuf/struct.proto"])
    );
    let workload = set
        .file
        .iter()
        .find(|f| f.name() == "workloadapi.proto")
        .expect("workloadapi.proto");
    assert_eq!(workload.package(), "", "no proto package");
    let service = workload
        .service
        .iter()
        .find(|s| s.name() == "SpiffeWorkloadAPI")
        .expect("service");
    let methods: BTreeSet<&str> = service.method.iter().map(|m| m.name()).collect();
    assert!(methods.contains("FetchJWTSVID") && methods.contains("ValidateJWTSVID"));
    assert_eq!(methods.len(), 7);
}
