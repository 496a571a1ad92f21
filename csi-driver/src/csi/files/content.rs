//! What goes in a files-mode volume: a plain function of the pod's identities.

use wimsey_core::x509::pem::{encode_certificates, encode_private_key};
use zeroize::Zeroizing;

use crate::csi::error::CsiError;
use crate::csi::request::{FilesConfig, jwt_file_name};
use crate::identity::IssuedIdentities;

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

/// The files for `identities`: our bundle, one PEM per federated trust domain, the JWT-SVIDs
/// already minted for `jwts` (audience, token), the WIT-SVID with its key when asked for, and
/// last the default X.509-SVID's PKCS#8 key and chain (leaf first).
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
    // The chain goes last: on a volume's first write its name appears after every other one,
    // so a workload that waits for the certificate finds its key and the rest already there.
    if let Some(svid) = identities.x509_svids.first() {
        let key = encode_private_key(&svid.private_key_pkcs8)
            .map_err(|e| CsiError::Render(e.to_string()))?;
        files.push(file(&config.svid_key, key.as_bytes().to_vec(), secret));
        let chain =
            encode_certificates(&svid.chain).map_err(|e| CsiError::Render(e.to_string()))?;
        files.push(file(&config.svid, chain.into_bytes(), public));
    }
    Ok(files)
}

pub(super) fn file(path: &str, contents: Vec<u8>, mode: u32) -> VolumeFile {
    VolumeFile {
        path: path.to_owned(),
        contents: Zeroizing::new(contents),
        mode,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wimsey_core::bundle::TrustDomainBundle;
    use wimsey_core::x509::CertDer;
    use wimsey_core::{SpiffeId, TrustDomain};

    use super::*;
    use crate::identity::X509SvidEntry;

    #[test]
    fn the_svid_chain_comes_last_right_after_its_key() {
        let config = FilesConfig::from_attributes(&BTreeMap::new(), None).expect("defaults");
        let identities = IssuedIdentities {
            bundle: TrustDomainBundle::new(TrustDomain::new("example.org").expect("td")),
            federated_bundles: BTreeMap::new(),
            x509_svids: vec![X509SvidEntry {
                spiffe_id: SpiffeId::parse("spiffe://example.org/a").expect("id"),
                chain: vec![CertDer::new(vec![0x30, 0x00])],
                private_key_pkcs8: Zeroizing::new(vec![0x30, 0x00]),
                hint: String::new(),
            }],
            wit_svids: None,
        };
        let jwts = [("api".to_owned(), Zeroizing::new("a.b.c".to_owned()))];
        let files = render_files(&config, &identities, &jwts).expect("render");
        let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            names,
            ["bundle.pem", "jwt-api.token", "svid_key.pem", "svid.pem"]
        );
    }
}
