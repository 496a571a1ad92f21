//! PEM (RFC 7468) for certificates and PKCS#8 private keys: the `files` mode and tooling.

use pem_rfc7468::LineEnding;
use zeroize::Zeroizing;

use super::{CertDer, X509Error};

const CERTIFICATE: &str = "CERTIFICATE";
const PRIVATE_KEY: &str = "PRIVATE KEY";

/// Encodes certificates as consecutive `CERTIFICATE` blocks.
pub fn encode_certificates<C: AsRef<[u8]>>(certs: &[C]) -> Result<String, X509Error> {
    let mut out = String::new();
    for cert in certs {
        let block = pem_rfc7468::encode_string(CERTIFICATE, LineEnding::LF, cert.as_ref())
            .map_err(|e| X509Error::Pem(e.to_string()))?;
        out.push_str(&block);
    }
    Ok(out)
}

/// Encodes an unencrypted PKCS#8 key as a `PRIVATE KEY` block; the result is zeroized on drop.
pub fn encode_private_key(pkcs8_der: &[u8]) -> Result<Zeroizing<String>, X509Error> {
    pem_rfc7468::encode_string(PRIVATE_KEY, LineEnding::LF, pkcs8_der)
        .map(Zeroizing::new)
        .map_err(|e| X509Error::Pem(e.to_string()))
}

/// Every `CERTIFICATE` block in `text`, in order. Text between blocks is ignored (as openssl
/// does); blocks with other labels are an error, so a key is never mistaken for a certificate.
pub fn decode_certificates(text: &str) -> Result<Vec<CertDer>, X509Error> {
    let blocks = decode_blocks(text)?;
    let mut certs = Vec::with_capacity(blocks.len());
    for (label, der) in blocks {
        if label != CERTIFICATE {
            return Err(X509Error::Pem(format!(
                "expected CERTIFICATE blocks, found {label:?}"
            )));
        }
        certs.push(CertDer(der.to_vec()));
    }
    if certs.is_empty() {
        return Err(X509Error::Pem("no CERTIFICATE block found".to_owned()));
    }
    Ok(certs)
}

/// The single `PRIVATE KEY` (PKCS#8) block in `text`.
pub fn decode_private_key(text: &str) -> Result<Zeroizing<Vec<u8>>, X509Error> {
    let mut blocks = decode_blocks(text)?.into_iter();
    match (blocks.next(), blocks.next()) {
        (Some((label, der)), None) if label == PRIVATE_KEY => Ok(der),
        (Some((label, _)), None) => Err(X509Error::Pem(format!(
            "expected a PRIVATE KEY block, found {label:?}"
        ))),
        (None, _) => Err(X509Error::Pem("no PRIVATE KEY block found".to_owned())),
        (Some(_), Some(_)) => Err(X509Error::Pem(
            "expected exactly one PRIVATE KEY block".to_owned(),
        )),
    }
}

const BEGIN: &str = "-----BEGIN ";

/// One decoded PEM block: its label and its DER contents.
pub(crate) type PemBlock = (String, Zeroizing<Vec<u8>>);

/// Splits `text` into (label, DER) blocks. DER is kept in zeroizing buffers since it may be a key.
pub(crate) fn decode_blocks(text: &str) -> Result<Vec<PemBlock>, X509Error> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let from_begin = rest.get(start..).unwrap_or("");
        let label_end = from_begin
            .get(BEGIN.len()..)
            .and_then(|s| s.find("-----"))
            .ok_or_else(|| X509Error::Pem("unterminated BEGIN line".to_owned()))?;
        let label = from_begin
            .get(BEGIN.len()..BEGIN.len() + label_end)
            .unwrap_or("");
        let end_marker = format!("-----END {label}-----");
        let end = from_begin
            .find(&end_marker)
            .ok_or_else(|| X509Error::Pem(format!("missing END line for {label:?}")))?;
        let block_len = end + end_marker.len();
        let block = from_begin.get(..block_len).unwrap_or("");
        let (decoded_label, der) =
            pem_rfc7468::decode_vec(block.as_bytes()).map_err(|e| X509Error::Pem(e.to_string()))?;
        blocks.push((decoded_label.to_owned(), Zeroizing::new(der)));
        rest = from_begin.get(block_len..).unwrap_or("");
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_round_trip_with_text_between_blocks() {
        let certs = vec![CertDer(vec![0x30, 0x00]), CertDer(vec![0x30, 0x01, 0x05])];
        let text = encode_certificates(&certs).expect("encode");
        let noisy = format!("subject=whatever\n{text}\ntrailing text\n");
        assert_eq!(decode_certificates(&noisy).expect("decode"), certs);
    }

    #[test]
    fn keys_and_certificates_are_not_confused() {
        let key = encode_private_key(&[1, 2, 3]).expect("encode");
        assert!(decode_certificates(&key).is_err());
        assert_eq!(
            decode_private_key(&key).expect("decode").as_slice(),
            &[1, 2, 3]
        );
        let certs = encode_certificates(&[vec![0x30, 0x00]]).expect("encode");
        assert!(decode_private_key(&certs).is_err());
        assert!(decode_private_key("").is_err());
        assert!(decode_certificates("-----BEGIN CERTIFICATE-----\nAAA").is_err());
    }
}
