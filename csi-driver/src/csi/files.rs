//! The `files` mode: what goes in the volume (a plain function of the snapshot) and the atomic
//! writer (kubelet's scheme: a fresh `..<generation>` directory, then the `..data` symlink renamed
//! over, so a reader sees either the old set or the new one, never a mix).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use wimsey_core::x509::pem::{encode_certificates, encode_private_key};
use zeroize::Zeroizing;

use super::error::CsiError;
use super::request::{FilesConfig, jwt_file_name};
use crate::workload_api::IssuedIdentities;

const DATA_LINK: &str = "..data";
const DATA_LINK_TMP: &str = "..data_tmp";

/// One file to write, relative to the volume root (at most one directory level).
#[derive(Clone)]
pub struct VolumeFile {
    pub path: String,
    pub contents: Zeroizing<Vec<u8>>,
    pub mode: u32,
}

impl std::fmt::Debug for VolumeFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Contents may be a key or a bearer token.
        f.debug_struct("VolumeFile")
            .field("path", &self.path)
            .field("mode", &format_args!("{:o}", self.mode))
            .finish_non_exhaustive()
    }
}

/// The files for `identities`: the default X.509-SVID chain (leaf first) and its PKCS#8 key, our
/// bundle, one PEM per federated trust domain, the JWT-SVIDs already minted for `jwts`
/// (audience, token), and the WIT-SVID with its key when asked for.
pub fn render_files(
    config: &FilesConfig,
    identities: &IssuedIdentities,
    jwts: &[(String, Zeroizing<String>)],
) -> Result<Vec<VolumeFile>, CsiError> {
    let public = 0o644;
    let secret = if config.fs_group.is_some() {
        0o640
    } else {
        0o600
    };
    let mut files = Vec::new();
    if let Some(svid) = identities.x509_svids.first() {
        let chain =
            encode_certificates(&svid.chain).map_err(|e| CsiError::Render(e.to_string()))?;
        files.push(file(&config.svid, chain.into_bytes(), public));
        let key = encode_private_key(&svid.private_key_pkcs8)
            .map_err(|e| CsiError::Render(e.to_string()))?;
        files.push(file(&config.svid_key, key.as_bytes().to_vec(), secret));
    }
    files.push(file(
        &config.bundle,
        identities.bundle.x509_authorities_pem().into_bytes(),
        public,
    ));
    for bundle in identities.all_bundles().skip(1) {
        files.push(file(
            &format!("{}/{}.pem", config.federated_dir, bundle.trust_domain),
            bundle.x509_authorities_pem().into_bytes(),
            public,
        ));
    }
    for (audience, token) in jwts {
        files.push(file(
            &jwt_file_name(audience),
            token.as_bytes().to_vec(),
            secret,
        ));
    }
    if config.wit
        && let Some(wit) = identities.wit_svids.as_ref().and_then(|w| w.first())
    {
        files.push(file(
            &config.wit_file,
            wit.token.as_bytes().to_vec(),
            secret,
        ));
        files.push(file(
            &config.wit_key_file,
            wit.private_jwk.as_bytes().to_vec(),
            secret,
        ));
    }
    Ok(files)
}

fn file(path: &str, contents: Vec<u8>, mode: u32) -> VolumeFile {
    VolumeFile {
        path: path.to_owned(),
        contents: Zeroizing::new(contents),
        mode,
    }
}

/// Distinguishes generations written within the same nanosecond.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Replaces the visible file set under `root` with `files`, atomically. Each top-level name is a
/// symlink into `..data`; names no longer present disappear; old generations are removed.
pub fn write_atomically(
    root: &Path,
    files: &[VolumeFile],
    fs_group: Option<u32>,
) -> Result<(), CsiError> {
    let dir_mode = if fs_group.is_some() { 0o750 } else { 0o755 };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let generation = format!("..{nanos}.{}", GENERATION.fetch_add(1, Ordering::Relaxed));
    let data_dir = root.join(&generation);
    make_dir(&data_dir, dir_mode, fs_group)?;

    let mut top_level = BTreeSet::new();
    for entry in files {
        let path = data_dir.join(&entry.path);
        if let Some(parent) = path.parent()
            && parent != data_dir
            && !parent.exists()
        {
            make_dir(parent, dir_mode, fs_group)?;
        }
        write_file(&path, &entry.contents, entry.mode, fs_group)?;
        let first = entry.path.split('/').next().unwrap_or(&entry.path);
        top_level.insert(first.to_owned());
    }

    // The switch: a new `..data` link renamed over the old one.
    let tmp_link = root.join(DATA_LINK_TMP);
    remove_if_present(&tmp_link)?;
    std::os::unix::fs::symlink(&generation, &tmp_link)
        .map_err(CsiError::io("symlink", &tmp_link))?;
    let data_link = root.join(DATA_LINK);
    fs::rename(&tmp_link, &data_link).map_err(CsiError::io("rename into", &data_link))?;

    for name in &top_level {
        let link = root.join(name);
        if fs::symlink_metadata(&link).is_err() {
            let staged = root.join(format!("..{name}.tmp"));
            remove_if_present(&staged)?;
            std::os::unix::fs::symlink(Path::new(DATA_LINK).join(name), &staged)
                .map_err(CsiError::io("symlink", &staged))?;
            fs::rename(&staged, &link).map_err(CsiError::io("rename into", &link))?;
        }
    }
    // Clean up: visible links whose target went away, and old generations.
    let entries = fs::read_dir(root).map_err(CsiError::io("list", root))?;
    for entry in entries {
        let entry = entry.map_err(CsiError::io("list", root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with("..") {
            let old_generation = name != generation
                && name != DATA_LINK
                && entry.file_type().is_ok_and(|t| t.is_dir());
            if old_generation {
                fs::remove_dir_all(&path).map_err(CsiError::io("remove", &path))?;
            }
        } else if !top_level.contains(&name) && entry.file_type().is_ok_and(|t| t.is_symlink()) {
            fs::remove_file(&path).map_err(CsiError::io("remove", &path))?;
        }
    }
    Ok(())
}

fn make_dir(path: &Path, mode: u32, fs_group: Option<u32>) -> Result<(), CsiError> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(CsiError::io("create", path))?;
    // The umask may have narrowed the mode.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(CsiError::io("chmod", path))?;
    if let Some(gid) = fs_group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(CsiError::io("chown", path))?;
    }
    Ok(())
}

fn write_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    fs_group: Option<u32>,
) -> Result<(), CsiError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(CsiError::io("create", path))?;
    if let Some(gid) = fs_group {
        std::os::unix::fs::fchown(&file, None, Some(gid)).map_err(CsiError::io("chown", path))?;
    }
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(CsiError::io("chmod", path))?;
    file.write_all(contents)
        .map_err(CsiError::io("write", path))
}

fn remove_if_present(path: &Path) -> Result<(), CsiError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CsiError::io("remove", path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[(&str, &str)]) -> Vec<VolumeFile> {
        names
            .iter()
            .map(|(p, c)| file(p, c.as_bytes().to_vec(), 0o644))
            .collect()
    }

    #[test]
    fn swaps_the_whole_set_and_drops_stale_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write_atomically(root, &files(&[("a.pem", "1"), ("fed/x.pem", "x1")]), None)
            .expect("first");
        assert_eq!(fs::read_to_string(root.join("a.pem")).expect("a"), "1");
        assert_eq!(fs::read_to_string(root.join("fed/x.pem")).expect("x"), "x1");
        write_atomically(root, &files(&[("a.pem", "2"), ("b.pem", "b")]), None).expect("second");
        assert_eq!(fs::read_to_string(root.join("a.pem")).expect("a"), "2");
        assert_eq!(fs::read_to_string(root.join("b.pem")).expect("b"), "b");
        assert!(
            fs::symlink_metadata(root.join("fed")).is_err(),
            "stale link removed"
        );
        let generations = fs::read_dir(root)
            .expect("list")
            .filter(|e| {
                let e = e.as_ref().expect("entry");
                e.file_name().to_string_lossy().starts_with("..")
                    && e.file_type().expect("type").is_dir()
            })
            .count();
        assert_eq!(generations, 1, "old generation removed");
        assert!(
            fs::symlink_metadata(root.join("a.pem"))
                .expect("a")
                .file_type()
                .is_symlink()
        );
    }
}
