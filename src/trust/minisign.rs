//! minisign: public keys (`minisign.pub`) and checking a prehashed
//! signature while the file streams (`minisign-verify` does the
//! cryptography). minisign keys have no expiry or revocation: removing the
//! key file from the trusted keys is how one is withdrawn.

use std::sync::mpsc;

use base64::Engine;

use super::signature_file::{MinisignSignature, minisign_key_id};
use super::{Proof, rejected};
use crate::error::Result;

/// A minisign public key and what its file says of it.
pub struct Key {
    key: minisign_verify::PublicKey,
    /// Upper-case hex, as minisign prints it.
    pub key_id: String,
    /// The file's comment line (`minisign public key …` by default).
    pub comment: Option<String>,
}

impl Key {
    /// A `minisign.pub` file: an optional `untrusted comment:` line, then
    /// the base64 key.
    pub fn parse(bytes: &[u8]) -> Result<Key> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| rejected("the minisign public key file is not text"))?;
        let mut comment = None;
        let mut line = None;
        for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match l.strip_prefix("untrusted comment:") {
                Some(c) => comment = Some(c.trim().to_string()),
                None => {
                    line = Some(l);
                    break;
                }
            }
        }
        let line = line.ok_or_else(|| rejected("the minisign public key file has no key"))?;
        let key = minisign_verify::PublicKey::from_base64(line)
            .map_err(|e| rejected(format!("not a minisign public key: {e}")))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(line)
            .map_err(|e| rejected(format!("not a minisign public key: {e}")))?;
        Ok(Key {
            key,
            key_id: minisign_key_id(&raw[2..10]),
            comment,
        })
    }

    /// `None` when this key did not make `sig`; a refusal when it did but
    /// the signature cannot be checked while streaming.
    pub(crate) fn signer_of(&self, sig: &MinisignSignature) -> Option<Result<Matched>> {
        if sig.key_id != self.key_id {
            return None;
        }
        if !sig.prehashed {
            return Some(Err(rejected(
                "the minisign signature is a legacy one (minisign -l), which signs the whole file at once and cannot be checked while it streams: sign it again without -l",
            )));
        }
        Some(Ok(Matched {
            key: self.key.clone(),
            key_id: self.key_id.clone(),
            comment: self.comment.clone(),
            signature: sig.signature.clone(),
        }))
    }
}

/// A minisign signature with its key.
pub(crate) struct Matched {
    key: minisign_verify::PublicKey,
    key_id: String,
    comment: Option<String>,
    signature: minisign_verify::Signature,
}

impl Matched {
    pub(crate) fn describe(&self) -> String {
        format!("minisign key {}", self.key_id)
    }

    /// Hash what arrives on `rx` until it closes, then check.
    pub(crate) fn check(self, rx: mpsc::Receiver<Vec<u8>>) -> Result<Proof> {
        let mut stream = self
            .key
            .verify_stream(&self.signature)
            .map_err(|e| rejected(format!("the minisign signature cannot be checked: {e}")))?;
        for chunk in rx {
            stream.update(&chunk);
        }
        stream.finalize().map_err(|e| {
            rejected(format!(
                "the minisign signature of key {} does not match the image's bytes: {e}",
                self.key_id
            ))
        })?;
        let trusted = self.signature.trusted_comment().to_string();
        Ok(Proof {
            format: "minisign",
            key: self.key_id,
            primary_key: None,
            signer: self.comment,
            signed_unix: signed_time(&trusted),
            trusted_comment: Some(trusted),
        })
    }
}

/// `timestamp:N` of minisign's trusted comment.
fn signed_time(trusted_comment: &str) -> Option<u64> {
    trusted_comment
        .split('\t')
        .find_map(|f| f.trim().strip_prefix("timestamp:"))
        .and_then(|t| t.parse().ok())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::trust::signature_file::{self, SignatureFile};

    /// Made with Debian's minisign 0.11 (`minisign -G -W`, then `-S` of
    /// the 4 bytes "test" with that trusted comment).
    pub(crate) const PUBLIC_KEY: &str = "untrusted comment: minisign public key 2E8A1445FF6E8323\nRWQjg27/RRSKLqDofEPZVMIhQ3zY/RxXnhNEUXxwk3dnFMnnrjymkTXb\n";
    pub(crate) const KEY_ID: &str = "2E8A1445FF6E8323";
    pub(crate) const SIGNATURE: &str = "untrusted comment: signature from minisign secret key
RUQjg27/RRSKLmKtQXW5W0vjeaofMYDxk/Wmv75+nVcEHbN9psUemgRTrsjQCFNdFMR0wgYYcAVKYFDyFdUqdyd/dKq6HaUKEgU=
trusted comment: timestamp:1555779966\tfile:test
gpxd+FjXigndTv7Ne9RdxxbUfhd4lj1vtEuhhvlKWemILcLbiLqXPRwHT+2KGRLtiTQscJTFDib2UnoBsHrODQ==
";
    /// The same key's legacy signature (`minisign -S -l`).
    const LEGACY_SIGNATURE_LINE: &str = "RWQjg27/RRSKLjiV1hVdnQdprnfpDp6nijeT0KTj0RBX3NjV4k5M3GxO21/7fKBSLKy1JrdrVMcwl7JQyKYNUD41VtuuQ+1qQwE=";

    fn matched() -> Matched {
        let key = Key::parse(PUBLIC_KEY.as_bytes()).unwrap();
        assert_eq!(key.key_id, KEY_ID);
        let SignatureFile::Minisign(sig) = signature_file::parse(SIGNATURE.as_bytes()).unwrap()
        else {
            panic!()
        };
        key.signer_of(&sig).unwrap().unwrap()
    }

    fn check(parts: &[&[u8]]) -> Result<Proof> {
        let (tx, rx) = mpsc::sync_channel(8);
        for p in parts {
            tx.send(p.to_vec()).unwrap();
        }
        drop(tx);
        matched().check(rx)
    }

    #[test]
    fn the_signed_bytes_pass_in_any_split_and_others_fail() {
        let proof = check(&[b"te", b"", b"st"]).unwrap();
        assert_eq!(proof.key, KEY_ID);
        assert_eq!(proof.signed_unix, Some(1555779966));
        assert_eq!(
            proof.signer.as_deref(),
            Some("minisign public key 2E8A1445FF6E8323")
        );
        let e = check(&[b"tesT"]).err().unwrap();
        assert_eq!(e.kind(), crate::ErrorKind::SignatureRejected);
        assert!(e.message().contains("does not match"), "{e}");
        assert!(check(&[b"test", b"\n"]).is_err());
    }

    #[test]
    fn another_key_does_not_match() {
        let other =
            "untrusted comment: x\nRWQAAAAAAAAAAHmlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3\n";
        let key = Key::parse(other.as_bytes()).unwrap();
        let SignatureFile::Minisign(sig) = signature_file::parse(SIGNATURE.as_bytes()).unwrap()
        else {
            panic!()
        };
        assert!(key.signer_of(&sig).is_none());
        assert!(Key::parse(b"untrusted comment: only a comment\n").is_err());
    }

    #[test]
    fn a_legacy_signature_is_refused_with_how_to_sign_again() {
        let lines: Vec<&str> = SIGNATURE.lines().collect();
        let legacy = format!(
            "{}\n{LEGACY_SIGNATURE_LINE}\n{}\n{}\n",
            lines[0], lines[2], lines[3]
        );
        let SignatureFile::Minisign(sig) = signature_file::parse(legacy.as_bytes()).unwrap() else {
            panic!()
        };
        assert!(!sig.prehashed);
        let key = Key::parse(PUBLIC_KEY.as_bytes()).unwrap();
        let e = key.signer_of(&sig).unwrap().err().unwrap();
        assert!(e.message().contains("without -l"), "{e}");
    }
}
