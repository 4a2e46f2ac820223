//! A detached signature file's bytes → what it is: an OpenPGP signature
//! (armored `.asc` or binary `.sig`) or a minisign signature (`.minisig`).
//! Recognized by content, never by name; pure, and fuzzed
//! (`fuzz/fuzz_targets/signature_file.rs`).

use base64::Engine;

use super::rejected;
use crate::error::Result;

/// No signature file is this large; an image passed by mistake is.
pub const MAX_SIGNATURE_LEN: usize = 64 << 10;

/// A parsed detached signature.
pub enum SignatureFile {
    OpenPgp(Box<pgp::packet::Signature>),
    Minisign(Box<MinisignSignature>),
}

/// A minisign signature and the key ID it names.
pub struct MinisignSignature {
    pub signature: minisign_verify::Signature,
    /// The signing key's ID as minisign prints it (upper-case hex).
    pub key_id: String,
    /// Whether the data was hashed first (BLAKE2b-512): minisign's default
    /// since 0.8; only those can be checked while streaming.
    pub prehashed: bool,
}

impl SignatureFile {
    /// Who made it, as the signature says (before any key is found).
    pub fn issuer(&self) -> String {
        match self {
            SignatureFile::OpenPgp(s) => {
                if let Some(fp) = s.issuer_fingerprint().first() {
                    format!("the OpenPGP key {fp:X}")
                } else if let Some(id) = s.issuer_key_id().first() {
                    format!("the OpenPGP key ID {}", hex::encode_upper(id.as_ref()))
                } else {
                    "an OpenPGP key the signature does not name".to_string()
                }
            }
            SignatureFile::Minisign(m) => format!("the minisign key {}", m.key_id),
        }
    }

    pub fn format(&self) -> &'static str {
        match self {
            SignatureFile::OpenPgp(_) => "openpgp",
            SignatureFile::Minisign(_) => "minisign",
        }
    }
}

/// Parse a signature file. Anything else (an image, a key, a truncated
/// file, text) is [`crate::ErrorKind::SignatureRejected`] with what it
/// looks like.
pub fn parse(bytes: &[u8]) -> Result<SignatureFile> {
    if bytes.len() > MAX_SIGNATURE_LEN {
        return Err(rejected(format!(
            "the signature file has {} bytes, far more than a signature (at most {MAX_SIGNATURE_LEN}): is it the image itself?",
            bytes.len()
        )));
    }
    if bytes.is_empty() {
        return Err(rejected("the signature file is empty"));
    }
    let text = std::str::from_utf8(bytes).ok();
    if let Some(t) = text
        && t.starts_with("untrusted comment:")
    {
        return parse_minisign(t).map(|m| SignatureFile::Minisign(Box::new(m)));
    }
    let armored = text.is_some_and(|t| t.contains("-----BEGIN PGP SIGNATURE-----"));
    if let Some(t) = text
        && !armored
        && t.contains("-----BEGIN PGP")
    {
        return Err(rejected(
            "the signature file holds an OpenPGP key or message, not a detached signature",
        ));
    }
    // Binary OpenPGP starts with a packet tag, whose top bit is set.
    if armored || bytes[0] & 0x80 != 0 {
        return parse_openpgp(bytes, armored).map(|s| SignatureFile::OpenPgp(Box::new(s)));
    }
    Err(rejected(
        "the signature file is neither an OpenPGP signature (armored or binary) nor a minisign signature",
    ))
}

fn parse_openpgp(bytes: &[u8], armored: bool) -> Result<pgp::packet::Signature> {
    use pgp::composed::{Deserializable, DetachedSignature};
    let what = if armored { "armored" } else { "binary" };
    let parsed = DetachedSignature::from_reader_single(bytes).map_err(|e| {
        rejected(format!(
            "the signature file is not a valid {what} OpenPGP signature (truncated or damaged?): {e}"
        ))
    })?;
    let sig = parsed.0.signature;
    match sig.typ() {
        Some(pgp::packet::SignatureType::Binary) | Some(pgp::packet::SignatureType::Text) => {
            Ok(sig)
        }
        other => Err(rejected(format!(
            "the OpenPGP signature is a {other:?} signature, not a signature of a file"
        ))),
    }
}

fn parse_minisign(text: &str) -> Result<MinisignSignature> {
    let signature = minisign_verify::Signature::decode(text).map_err(|e| {
        rejected(format!(
            "the minisign signature cannot be read (truncated or damaged?): {e}"
        ))
    })?;
    // Line 2 is base64 of: algorithm (2 bytes) | key ID (8) | signature (64).
    let line = text.lines().nth(1).unwrap_or("").trim();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(line)
        .map_err(|e| rejected(format!("the minisign signature line is not base64: {e}")))?;
    if raw.len() != 74 {
        return Err(rejected("the minisign signature line has the wrong length"));
    }
    let prehashed = &raw[0..2] == b"ED";
    Ok(MinisignSignature {
        signature,
        key_id: minisign_key_id(&raw[2..10]),
        prehashed,
    })
}

/// A minisign key ID as minisign prints it: the 8 bytes as a little-endian
/// number in upper-case hex, without leading zeros (`%" PRIX64`).
pub(crate) fn minisign_key_id(bytes: &[u8]) -> String {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    format!("{:X}", u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn refused(bytes: &[u8]) -> String {
        match parse(bytes) {
            Ok(_) => panic!("accepted"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::SignatureRejected);
                e.to_string()
            }
        }
    }

    #[test]
    fn minisign_signatures_are_read_with_their_key_id() {
        let SignatureFile::Minisign(m) =
            parse(crate::trust::minisign::tests::SIGNATURE.as_bytes()).unwrap()
        else {
            panic!("not minisign")
        };
        assert!(m.prehashed);
        assert_eq!(m.key_id, crate::trust::minisign::tests::KEY_ID);
    }

    #[test]
    fn what_is_not_a_signature_is_refused_with_what_it_looks_like() {
        assert!(refused(&vec![0u8; MAX_SIGNATURE_LEN + 1]).contains("is it the image"));
        assert!(refused(b"").contains("empty"));
        assert!(refused(b"hello").contains("neither"));
        // An MBR boot sector starts with a jump, whose top bit is set.
        let mut mbr = vec![0xEB, 0x63, 0x90];
        mbr.resize(512, 0);
        assert!(refused(&mbr).contains("binary OpenPGP"));
        assert!(refused(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n").contains("key or message"));
        let sig = crate::trust::minisign::tests::SIGNATURE;
        assert!(refused(&sig.as_bytes()[..sig.len() / 2]).contains("minisign"));
        let armored =
            "-----BEGIN PGP SIGNATURE-----\n\niHUEABYKAB0WIQ\n-----END PGP SIGNATURE-----\n";
        assert!(refused(armored.as_bytes()).contains("armored OpenPGP"));
    }
}
