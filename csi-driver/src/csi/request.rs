//! Plain functions from CSI requests to what the volume manager acts on: validation with the
//! spec's codes and messages that name the field, the volume mode, pod info and files options.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use wimsey_proto::csi::v1 as csi;
use wimsey_proto::csi::v1::volume_capability::AccessType;
use wimsey_proto::csi::v1::volume_capability::access_mode::Mode as AccessMode;
use zeroize::Zeroizing;

use super::error::CsiError;
use crate::identity::PodInfo;
use crate::volume_mode::VolumeMode;

/// Volume context keys kubelet adds (podInfoOnMount, tokenRequests).
pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
pub const SERVICE_ACCOUNT: &str = "csi.storage.k8s.io/serviceAccount.name";
pub const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";
pub const SERVICE_ACCOUNT_TOKENS: &str = "csi.storage.k8s.io/serviceAccount.tokens";
const KUBELET_PREFIX: &str = "csi.storage.k8s.io/";

/// The tokenRequests audience whose token identifies the pod to the operator.
pub const TOKEN_AUDIENCE: &str = "wimsey";

/// User volume attributes (`volumeAttributes` in the pod spec).
pub const ATTR_MODE: &str = "mode";
pub const ATTR_FS_GROUP: &str = "fsGroup";
pub const ATTR_SVID_FILE: &str = "svidFileName";
pub const ATTR_SVID_KEY_FILE: &str = "svidKeyFileName";
pub const ATTR_BUNDLE_FILE: &str = "bundleFileName";
pub const ATTR_FEDERATED_DIR: &str = "federatedBundlesDir";
pub const ATTR_JWT_AUDIENCES: &str = "jwtAudiences";
pub const ATTR_WIT: &str = "wit";
pub const ATTR_WIT_FILE: &str = "witFileName";
pub const ATTR_WIT_KEY_FILE: &str = "witKeyFileName";

const FILES_ATTRS: [&str; 8] = [
    ATTR_SVID_FILE,
    ATTR_SVID_KEY_FILE,
    ATTR_BUNDLE_FILE,
    ATTR_FEDERATED_DIR,
    ATTR_JWT_AUDIENCES,
    ATTR_WIT,
    ATTR_WIT_FILE,
    ATTR_WIT_KEY_FILE,
];

/// Longest volume ID we accept; it names a directory and a file on the host.
const MAX_VOLUME_ID_LEN: usize = 128;

/// How a volume delivers identity (volume attribute `mode`).
/// Whether `mode` issues identities, and so needs the pod's info.
fn needs_pod(mode: VolumeMode) -> bool {
    matches!(mode, VolumeMode::WorkloadApi | VolumeMode::Files)
}

/// A validated NodePublishVolume request.
#[derive(Debug, Clone)]
pub struct PublishSpec {
    pub volume_id: String,
    pub target: PathBuf,
    pub mode: VolumeMode,
    /// The pod, for modes that issue identities.
    pub pod: Option<PodInfo>,
    /// User attributes (kubelet's `csi.storage.k8s.io/*` keys removed).
    pub attributes: BTreeMap<String, String>,
    /// Group that may read the files (attribute `fsGroup`, else the capability's volume_mount_group).
    pub fs_group: Option<u32>,
}

/// Validates a NodePublishVolume request (order and codes as spiffe-csi, §1.2 / §3.4).
pub fn parse_publish(request: &csi::NodePublishVolumeRequest) -> Result<PublishSpec, CsiError> {
    let volume_id = check_volume_id(&request.volume_id)?;
    let target = check_target(&request.target_path, "target_path")?;
    let Some(capability) = &request.volume_capability else {
        return Err(CsiError::invalid("volume_capability is required"));
    };
    let mount = match &capability.access_type {
        None => {
            return Err(CsiError::invalid(
                "volume_capability.access_type is required",
            ));
        }
        Some(AccessType::Block(_)) => {
            return Err(CsiError::invalid(
                "volume_capability.access_type: block volumes are not supported, only mount",
            ));
        }
        Some(AccessType::Mount(mount)) => mount,
    };
    if !mount.fs_type.is_empty() {
        return Err(CsiError::invalid(format!(
            "volume_capability.mount.fs_type must be empty, got {:?}",
            mount.fs_type
        )));
    }
    if !mount.mount_flags.is_empty() {
        return Err(CsiError::invalid(
            "volume_capability.mount.mount_flags must be empty",
        ));
    }
    match capability.access_mode.as_ref().map(|m| m.mode()) {
        None | Some(AccessMode::Unknown) => {
            return Err(CsiError::invalid(
                "volume_capability.access_mode is required",
            ));
        }
        Some(_) => {}
    }

    let context = &request.volume_context;
    let mode = match context.get(ATTR_MODE) {
        None => VolumeMode::WorkloadApi,
        Some(value) => VolumeMode::parse(value).ok_or_else(|| {
            CsiError::invalid(format!(
                "volume_context[{ATTR_MODE}]: unknown mode {value:?} (expected workload-api, files or spire-agent)"
            ))
        })?,
    };
    // Every mode is read-only in the pod: a socket must not be replaced, and files are written by
    // the plugin alone (a pod that could write could plant symlinks for the writer).
    if !request.readonly {
        return Err(CsiError::invalid(format!(
            "readonly must be true for mode {}: set `readOnly: true` on the CSI volume (pod.spec.volumes[].csi.readOnly)",
            mode.as_str()
        )));
    }
    match context.get(EPHEMERAL).map(String::as_str) {
        Some("true") => {}
        _ => {
            return Err(CsiError::invalid(format!(
                "volume_context[{EPHEMERAL}] must be \"true\": only inline ephemeral volumes are supported (the CSIDriver needs podInfoOnMount)"
            )));
        }
    }

    let attributes: BTreeMap<String, String> = context
        .iter()
        .filter(|(key, _)| !key.starts_with(KUBELET_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    check_attribute_keys(mode, &attributes)?;
    let fs_group = match attributes.get(ATTR_FS_GROUP) {
        Some(value) => Some(parse_gid(
            value,
            &format!("volume_context[{ATTR_FS_GROUP}]"),
        )?),
        None if mount.volume_mount_group.is_empty() => None,
        None => Some(parse_gid(
            &mount.volume_mount_group,
            "volume_capability.mount.volume_mount_group",
        )?),
    };
    let pod = if needs_pod(mode) {
        Some(pod_info(context, &request.secrets)?)
    } else {
        None
    };
    if mode == VolumeMode::Files {
        FilesConfig::from_attributes(&attributes, fs_group)?;
    }
    Ok(PublishSpec {
        volume_id,
        target,
        mode,
        pod,
        attributes,
        fs_group,
    })
}

/// Validates a NodeUnpublishVolume request.
pub fn parse_unpublish(
    request: &csi::NodeUnpublishVolumeRequest,
) -> Result<(String, PathBuf), CsiError> {
    let volume_id = check_volume_id(&request.volume_id)?;
    let target = check_target(&request.target_path, "target_path")?;
    Ok((volume_id, target))
}

/// Validates a NodeGetVolumeStats request.
pub fn parse_volume_stats(
    request: &csi::NodeGetVolumeStatsRequest,
) -> Result<(String, PathBuf), CsiError> {
    let volume_id = check_volume_id(&request.volume_id)?;
    if request.volume_path.is_empty() {
        return Err(CsiError::invalid("volume_path is required"));
    }
    Ok((volume_id, PathBuf::from(&request.volume_path)))
}

/// The volume ID names a directory and a record file, so it must be one safe path component.
pub fn check_volume_id(volume_id: &str) -> Result<String, CsiError> {
    if volume_id.is_empty() {
        return Err(CsiError::invalid("volume_id is required"));
    }
    let safe = volume_id.len() <= MAX_VOLUME_ID_LEN
        && !volume_id.starts_with('.')
        && volume_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !safe {
        return Err(CsiError::invalid(format!(
            "volume_id {volume_id:?} must be at most {MAX_VOLUME_ID_LEN} characters of [A-Za-z0-9._-], not starting with '.'"
        )));
    }
    Ok(volume_id.to_owned())
}

fn check_target(path: &str, field: &str) -> Result<PathBuf, CsiError> {
    if path.is_empty() {
        return Err(CsiError::invalid(format!("{field} is required")));
    }
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(CsiError::invalid(format!(
            "{field} {} must be an absolute path",
            path.display()
        )));
    }
    Ok(path.to_owned())
}

fn check_attribute_keys(
    mode: VolumeMode,
    attributes: &BTreeMap<String, String>,
) -> Result<(), CsiError> {
    for key in attributes.keys() {
        let known = key == ATTR_MODE || key == ATTR_FS_GROUP || FILES_ATTRS.contains(&key.as_str());
        if !known {
            return Err(CsiError::invalid(format!(
                "volume_context[{key}]: unknown volume attribute"
            )));
        }
        if mode != VolumeMode::Files && FILES_ATTRS.contains(&key.as_str()) {
            return Err(CsiError::invalid(format!(
                "volume_context[{key}] applies only to mode files, not {}",
                mode.as_str()
            )));
        }
    }
    Ok(())
}

fn parse_gid(value: &str, field: &str) -> Result<u32, CsiError> {
    // u32::MAX is chown's "leave the group as it is".
    value
        .parse::<u32>()
        .ok()
        .filter(|gid| *gid > 0 && *gid < u32::MAX)
        .ok_or_else(|| {
            CsiError::invalid(format!(
                "{field}: {value:?} is not a group ID (1-4294967294)"
            ))
        })
}

/// The pod from podInfoOnMount keys, with its `wimsey`-audience token from tokenRequests
/// (`secrets` first, as kubelet sends it with serviceAccountTokenInSecrets, then the context).
pub fn pod_info(
    context: &std::collections::HashMap<String, String>,
    secrets: &std::collections::HashMap<String, String>,
) -> Result<PodInfo, CsiError> {
    let get = |key: &str| {
        context
            .get(key)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| {
                CsiError::invalid(format!(
                    "volume_context[{key}] is required (the CSIDriver needs podInfoOnMount: true)"
                ))
            })
    };
    let tokens = secrets
        .get(SERVICE_ACCOUNT_TOKENS)
        .or_else(|| context.get(SERVICE_ACCOUNT_TOKENS));
    let token = match tokens {
        None => None,
        Some(json) => audience_token(json)?,
    };
    Ok(PodInfo {
        uid: get(POD_UID)?,
        namespace: get(POD_NAMESPACE)?,
        name: get(POD_NAME)?,
        service_account: get(SERVICE_ACCOUNT)?,
        token,
    })
}

#[derive(Deserialize)]
struct TokenEntry {
    token: String,
}

/// The `wimsey`-audience token from kubelet's tokens JSON (`{"<aud>":{"token":..}}`).
fn audience_token(json: &str) -> Result<Option<Zeroizing<String>>, CsiError> {
    // Parse errors must not echo the JSON: it holds bearer tokens.
    let mut tokens: std::collections::HashMap<String, TokenEntry> = serde_json::from_str(json)
        .map_err(|_| {
            CsiError::invalid(format!(
                "{SERVICE_ACCOUNT_TOKENS} is not a JSON object of audience to {{token, expirationTimestamp}}"
            ))
        })?;
    Ok(tokens
        .remove(TOKEN_AUDIENCE)
        .map(|entry| Zeroizing::new(entry.token)))
}

/// What the files writer puts in a `files` volume, from the volume attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesConfig {
    pub svid: String,
    pub svid_key: String,
    pub bundle: String,
    /// Directory holding `<trust domain>.pem` per federated trust domain.
    pub federated_dir: String,
    /// A `jwt-<audience>.token` file per audience.
    pub jwt_audiences: Vec<String>,
    /// Whether to write the WIT-SVID and its key.
    pub wit: bool,
    pub wit_file: String,
    pub wit_key_file: String,
    pub fs_group: Option<u32>,
}

impl FilesConfig {
    pub fn from_attributes(
        attributes: &BTreeMap<String, String>,
        fs_group: Option<u32>,
    ) -> Result<Self, CsiError> {
        let name = |key: &str, default: &str| -> Result<String, CsiError> {
            let value = attributes.get(key).map_or(default, String::as_str);
            check_file_name(value, key)?;
            Ok(value.to_owned())
        };
        let wit = match attributes.get(ATTR_WIT).map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(CsiError::invalid(format!(
                    "volume_context[{ATTR_WIT}]: {other:?} is not true or false"
                )));
            }
        };
        let jwt_audiences: Vec<String> = attributes
            .get(ATTR_JWT_AUDIENCES)
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let config = Self {
            svid: name(ATTR_SVID_FILE, "svid.pem")?,
            svid_key: name(ATTR_SVID_KEY_FILE, "svid_key.pem")?,
            bundle: name(ATTR_BUNDLE_FILE, "bundle.pem")?,
            federated_dir: name(ATTR_FEDERATED_DIR, "federated")?,
            jwt_audiences,
            wit,
            wit_file: name(ATTR_WIT_FILE, "wit.jwt")?,
            wit_key_file: name(ATTR_WIT_KEY_FILE, "wit_key.jwk")?,
            fs_group,
        };
        let mut names = vec![
            &config.svid,
            &config.svid_key,
            &config.bundle,
            &config.federated_dir,
        ];
        if config.wit {
            names.extend([&config.wit_file, &config.wit_key_file]);
        }
        let jwt_names: Vec<String> = config
            .jwt_audiences
            .iter()
            .map(|a| jwt_file_name(a))
            .collect();
        names.extend(jwt_names.iter());
        let mut seen = std::collections::BTreeSet::new();
        for name in names {
            if !seen.insert(name) {
                return Err(CsiError::invalid(format!(
                    "volume_context: file name {name:?} is used twice"
                )));
            }
        }
        Ok(config)
    }
}

/// `jwt-<audience>.token`, with every byte outside [A-Za-z0-9._-] replaced by `_` so a URL
/// audience still names one file.
pub fn jwt_file_name(audience: &str) -> String {
    let safe: String = audience
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("jwt-{safe}.token")
}

/// A file name in the volume: one path component that is not the writer's own (`..`-prefixed).
fn check_file_name(name: &str, key: &str) -> Result<(), CsiError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with("..")
        && name != "."
        && !name.contains('/')
        && !name.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(CsiError::invalid(format!(
            "volume_context[{key}]: {name:?} must be a plain file name (no '/', not starting with '..')"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(context: &[(&str, &str)]) -> csi::NodePublishVolumeRequest {
        csi::NodePublishVolumeRequest {
            volume_id: "csi-abc".into(),
            target_path: "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/v/mount".into(),
            volume_capability: Some(csi::VolumeCapability {
                access_type: Some(AccessType::Mount(
                    csi::volume_capability::MountVolume::default(),
                )),
                access_mode: Some(csi::volume_capability::AccessMode {
                    mode: AccessMode::SingleNodeWriter as i32,
                }),
            }),
            readonly: true,
            volume_context: context
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }
    }

    const POD: [(&str, &str); 5] = [
        (POD_NAME, "web-0"),
        (POD_NAMESPACE, "default"),
        (POD_UID, "uid-1"),
        (SERVICE_ACCOUNT, "web"),
        (EPHEMERAL, "true"),
    ];

    fn message(result: Result<PublishSpec, CsiError>) -> String {
        match result {
            Err(CsiError::InvalidArgument(message)) => message,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn default_mode_is_workload_api_with_pod_and_token() {
        let tokens = r#"{"wimsey":{"token":"tok","expirationTimestamp":"2030-01-01T00:00:00Z"},"":{"token":"other"}}"#;
        let mut context = POD.to_vec();
        context.push((SERVICE_ACCOUNT_TOKENS, tokens));
        let spec = parse_publish(&request(&context)).expect("valid");
        assert_eq!(spec.mode, VolumeMode::WorkloadApi);
        let pod = spec.pod.expect("pod");
        assert_eq!(pod.uid, "uid-1");
        assert_eq!(pod.token.as_deref().map(String::as_str), Some("tok"));
        assert!(spec.attributes.is_empty());
    }

    #[test]
    fn every_mode_needs_readonly() {
        for mode in ["workload-api", "files", "spire-agent"] {
            let mut context = POD.to_vec();
            context.push((ATTR_MODE, mode));
            let mut req = request(&context);
            req.readonly = false;
            let text = message(parse_publish(&req));
            assert!(
                text.contains("readonly must be true") && text.contains("`readOnly: true`"),
                "{mode}: {text}"
            );
            req.readonly = true;
            assert_eq!(parse_publish(&req).expect(mode).mode.as_str(), mode);
        }
    }

    #[test]
    fn rejects_unknown_mode_attribute_and_misplaced_file_names() {
        let mut context = POD.to_vec();
        context.push((ATTR_MODE, "socket"));
        assert!(message(parse_publish(&request(&context))).contains("unknown mode \"socket\""));
        let mut context = POD.to_vec();
        context.push(("jwtAudience", "x"));
        assert!(message(parse_publish(&request(&context))).contains("volume_context[jwtAudience]"));
        let mut context = POD.to_vec();
        context.push((ATTR_SVID_FILE, "a.pem"));
        assert!(message(parse_publish(&request(&context))).contains("only to mode files"));
    }

    #[test]
    fn rejects_unsafe_ids_and_names() {
        let mut req = request(&POD);
        req.volume_id = "../etc".into();
        assert!(message(parse_publish(&req)).contains("volume_id"));
        let mut context = POD.to_vec();
        context.extend([(ATTR_MODE, "files"), (ATTR_SVID_FILE, "../x")]);
        assert!(message(parse_publish(&request(&context))).contains(ATTR_SVID_FILE));
        let mut context = POD.to_vec();
        context.extend([(ATTR_MODE, "files"), (ATTR_SVID_FILE, "bundle.pem")]);
        assert!(message(parse_publish(&request(&context))).contains("used twice"));
    }

    #[test]
    fn needs_pod_info_and_ephemeral() {
        let context: Vec<_> = POD.iter().copied().filter(|(k, _)| *k != POD_UID).collect();
        assert!(message(parse_publish(&request(&context))).contains(POD_UID));
        let context: Vec<_> = POD
            .iter()
            .copied()
            .filter(|(k, _)| *k != EPHEMERAL)
            .collect();
        assert!(message(parse_publish(&request(&context))).contains(EPHEMERAL));
        // spire-agent needs no pod identity.
        let context = [(EPHEMERAL, "true"), (ATTR_MODE, "spire-agent")];
        assert!(
            parse_publish(&request(&context))
                .expect("spire-agent")
                .pod
                .is_none()
        );
    }

    #[test]
    fn fs_group_from_attribute_beats_capability() {
        let mut context = POD.to_vec();
        context.extend([(ATTR_MODE, "files"), (ATTR_FS_GROUP, "2000")]);
        let mut req = request(&context);
        if let Some(AccessType::Mount(m)) = req
            .volume_capability
            .as_mut()
            .and_then(|c| c.access_type.as_mut())
        {
            m.volume_mount_group = "3000".into();
        }
        assert_eq!(parse_publish(&req).expect("valid").fs_group, Some(2000));
        let mut context = POD.to_vec();
        context.extend([(ATTR_MODE, "files"), (ATTR_FS_GROUP, "root")]);
        assert!(message(parse_publish(&request(&context))).contains(ATTR_FS_GROUP));
        // chown's "no change" value is no group.
        let mut context = POD.to_vec();
        context.extend([(ATTR_MODE, "files"), (ATTR_FS_GROUP, "4294967295")]);
        assert!(message(parse_publish(&request(&context))).contains(ATTR_FS_GROUP));
    }

    #[test]
    fn bad_token_json_does_not_echo_the_tokens() {
        let mut context = POD.to_vec();
        context.push((SERVICE_ACCOUNT_TOKENS, "{\"wimsey\": \"secret-token\""));
        let text = message(parse_publish(&request(&context)));
        assert!(!text.contains("secret-token"), "{text}");
    }

    #[test]
    fn jwt_file_names_are_single_components() {
        assert_eq!(
            jwt_file_name("https://api.example/x"),
            "jwt-https___api.example_x.token"
        );
    }
}
