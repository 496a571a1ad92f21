//! CRD YAML, generated from the Rust types (`wimsey-operator crd`, `make generate`).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use crate::crd::all_crds;

#[derive(Debug, thiserror::Error)]
pub enum CrdGenError {
    #[error("serializing CRD {name} to YAML: {source}")]
    Yaml {
        name: String,
        source: serde_saphyr::SerializeError,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl CrdGenError {
    pub fn label(&self) -> &'static str {
        match self {
            CrdGenError::Yaml { .. } => "yaml",
            CrdGenError::Write { .. } => "write",
        }
    }
}

fn crd_name(crd: &CustomResourceDefinition) -> String {
    crd.metadata.name.clone().unwrap_or_default()
}

const HEADER: &str = "# Generated from operator/src/crd by `make generate`; do not edit.\n";

/// One CRD as a YAML document.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, CrdGenError> {
    let yaml = serde_saphyr::to_string(crd).map_err(|source| CrdGenError::Yaml {
        name: crd_name(crd),
        source,
    })?;
    Ok(format!("{HEADER}{yaml}"))
}

/// `(file name, YAML)` for every CRD: `<plural>.<group>.yaml`, the CRD's own name.
pub fn crd_files() -> Result<Vec<(String, String)>, CrdGenError> {
    all_crds()
        .iter()
        .map(|crd| Ok((format!("{}.yaml", crd_name(crd)), crd_yaml(crd)?)))
        .collect()
}

/// Every CRD in one multi-document YAML stream.
pub fn all_crds_yaml() -> Result<String, CrdGenError> {
    let mut out = String::new();
    for (_, yaml) in crd_files()? {
        out.push_str("---\n");
        out.push_str(&yaml);
    }
    Ok(out)
}

/// Writes one file per CRD into `dir`.
pub fn write_crd_files(dir: &std::path::Path) -> Result<Vec<String>, CrdGenError> {
    let files = crd_files()?;
    let mut written = Vec::with_capacity(files.len());
    for (name, yaml) in files {
        let path = dir.join(&name);
        std::fs::write(&path, yaml).map_err(|source| CrdGenError::Write {
            path: path.display().to_string(),
            source,
        })?;
        written.push(path.display().to_string());
    }
    Ok(written)
}
