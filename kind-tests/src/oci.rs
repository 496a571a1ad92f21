//! A minimal OCI image-layout writer: one uncompressed layer, a config, a manifest and an index, packed
//! as a tar that `ctr images import` and `kind load image-archive` accept.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

/// One file copied into the image's single layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    /// Path on the build host.
    pub src: PathBuf,
    /// Absolute path inside the image.
    pub dst: String,
    /// Unix mode bits.
    pub mode: u32,
}

impl LayerFile {
    /// Parses `SRC:DST[:MODE]` (MODE in octal, default 0755).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut parts = spec.splitn(3, ':');
        let src = parts.next().filter(|s| !s.is_empty());
        let dst = parts.next().filter(|d| d.starts_with('/'));
        let (Some(src), Some(dst)) = (src, dst) else {
            return Err(format!("--add {spec:?}: want SRC:/ABS/DST[:MODE]"));
        };
        let mode = match parts.next() {
            Some(m) => {
                u32::from_str_radix(m, 8).map_err(|_| format!("--add {spec:?}: bad octal mode"))?
            }
            None => 0o755,
        };
        Ok(Self {
            src: src.into(),
            dst: dst.to_string(),
            mode,
        })
    }
}

/// What goes into the image.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    /// Full references, e.g. `localhost/wimsey/pause:abc1234`.
    pub names: Vec<String>,
    pub files: Vec<LayerFile>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub user: Option<String>,
    pub env: Vec<String>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(kind);
    h.set_cksum();
    Ok(h)
}

/// Builds the layer tar in memory: parent directories first, then the files, in a stable order.
pub fn build_layer(files: &[LayerFile]) -> io::Result<Vec<u8>> {
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let mut p = Path::new(f.dst.trim_start_matches('/')).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(format!("{}/", d.display()));
            p = d.parent();
        }
    }
    let mut b = tar::Builder::new(Vec::new());
    for d in &dirs {
        b.append(
            &header(d, 0, 0o755, tar::EntryType::Directory)?,
            io::empty(),
        )?;
    }
    for f in files {
        let data = std::fs::read(&f.src)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", f.src.display())))?;
        let path = f.dst.trim_start_matches('/');
        b.append(
            &header(path, data.len() as u64, f.mode, tar::EntryType::Regular)?,
            data.as_slice(),
        )?;
    }
    b.into_inner()
}

/// The OCI blobs of an image, keyed by digest, plus the manifest digest.
#[derive(Debug)]
pub struct ImageBlobs {
    pub layer: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl ImageBlobs {
    pub fn build(spec: &ImageSpec) -> io::Result<Self> {
        let layer = build_layer(&spec.files)?;
        let layer_digest = format!("sha256:{}", sha256_hex(&layer));
        let mut cfg = serde_json::Map::new();
        if !spec.entrypoint.is_empty() {
            cfg.insert("Entrypoint".into(), json!(spec.entrypoint));
        }
        if !spec.cmd.is_empty() {
            cfg.insert("Cmd".into(), json!(spec.cmd));
        }
        if let Some(user) = &spec.user {
            cfg.insert("User".into(), json!(user));
        }
        let mut env = vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_string()];
        env.extend(spec.env.iter().cloned());
        cfg.insert("Env".into(), json!(env));
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": cfg,
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        }))?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{}", sha256_hex(&config)),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer.len(),
            }],
        }))?;
        Ok(Self {
            layer,
            config,
            manifest,
        })
    }

    pub fn manifest_digest(&self) -> String {
        format!("sha256:{}", sha256_hex(&self.manifest))
    }
}

/// The `index.json` naming the manifest once per reference.
pub fn index_json(names: &[String], blobs: &ImageBlobs) -> io::Result<Vec<u8>> {
    let manifests: Vec<_> = names
        .iter()
        .map(|name| {
            let tag = name
                .rsplit_once(':')
                .map(|(_, t)| t)
                .filter(|t| !t.contains('/'))
                .unwrap_or("latest");
            json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": blobs.manifest_digest(),
                "size": blobs.manifest.len(),
                "platform": { "architecture": "amd64", "os": "linux" },
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": tag,
                },
            })
        })
        .collect();
    Ok(serde_json::to_vec(
        &json!({ "schemaVersion": 2, "manifests": manifests }),
    )?)
}

/// Writes the image-layout tar to `out` and returns the manifest digest.
pub fn write_image_layout_tar(spec: &ImageSpec, out: &Path) -> io::Result<String> {
    let blobs = ImageBlobs::build(spec)?;
    let index = index_json(&spec.names, &blobs)?;
    let tmp = out.with_extension("tar.tmp");
    {
        let file = std::fs::File::create(&tmp)?;
        let mut b = tar::Builder::new(io::BufWriter::new(file));
        let layout: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
        let mut entries: Vec<(String, &[u8])> =
            vec![("oci-layout".into(), layout), ("index.json".into(), &index)];
        b.append(
            &header("blobs/", 0, 0o755, tar::EntryType::Directory)?,
            io::empty(),
        )?;
        b.append(
            &header("blobs/sha256/", 0, 0o755, tar::EntryType::Directory)?,
            io::empty(),
        )?;
        for blob in [&blobs.layer, &blobs.config, &blobs.manifest] {
            entries.push((
                format!("blobs/sha256/{}", sha256_hex(blob)),
                blob.as_slice(),
            ));
        }
        for (path, data) in entries {
            b.append(
                &header(&path, data.len() as u64, 0o644, tar::EntryType::Regular)?,
                data,
            )?;
        }
        b.into_inner()?.flush()?;
    }
    std::fs::rename(&tmp, out)?;
    Ok(blobs.manifest_digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_layer_file_specs() {
        let f = LayerFile::parse("target/x:/usr/bin/x:0700").expect("valid");
        assert_eq!(f.dst, "/usr/bin/x");
        assert_eq!(f.mode, 0o700);
        assert_eq!(LayerFile::parse("a:/b").expect("valid").mode, 0o755);
        assert!(LayerFile::parse("a:relative").is_err());
        assert!(LayerFile::parse("a").is_err());
    }

    #[test]
    fn layout_is_reproducible_and_well_formed() {
        let dir = std::env::temp_dir().join(format!("wimsey-oci-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let bin = dir.join("app");
        std::fs::write(&bin, b"#!not really\n").expect("write");
        let spec = ImageSpec {
            names: vec![
                "localhost/wimsey/app:abc".into(),
                "localhost/wimsey/app:sandbox".into(),
            ],
            files: vec![LayerFile {
                src: bin,
                dst: "/usr/bin/app".into(),
                mode: 0o755,
            }],
            entrypoint: vec!["/usr/bin/app".into()],
            user: Some("65535:65535".into()),
            ..ImageSpec::default()
        };
        let a = write_image_layout_tar(&spec, &dir.join("a.tar")).expect("write a");
        let b = write_image_layout_tar(&spec, &dir.join("b.tar")).expect("write b");
        assert_eq!(a, b, "same input, same manifest digest");

        let mut names = Vec::new();
        let mut index = None;
        let file = std::fs::File::open(dir.join("a.tar")).expect("open");
        for entry in tar::Archive::new(file).entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").display().to_string();
            if path == "index.json" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut entry, &mut s).expect("read");
                index = Some(s);
            }
            names.push(path);
        }
        assert!(names.contains(&"oci-layout".to_string()));
        assert_eq!(
            names
                .iter()
                .filter(|n| n.starts_with("blobs/sha256/") && n.len() > 20)
                .count(),
            3
        );
        let index: serde_json::Value =
            serde_json::from_str(&index.expect("index.json")).expect("json");
        let manifests = index["manifests"].as_array().expect("manifests");
        assert_eq!(manifests.len(), 2);
        assert_eq!(
            manifests[1]["annotations"]["io.containerd.image.name"],
            "localhost/wimsey/app:sandbox"
        );
        assert_eq!(
            manifests[1]["annotations"]["org.opencontainers.image.ref.name"],
            "sandbox"
        );
        assert_eq!(manifests[0]["digest"], a);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
