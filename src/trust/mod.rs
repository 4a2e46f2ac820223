//! Who may make what this machine boots: detached image signatures
//! (OpenPGP and minisign) checked against the administrator's trusted keys,
//! and the machine's policy (`policy.toml`).
//!
//! The flow: [`signature_file::parse`] reads a signature file's bytes
//! (pure, fuzzed); [`TrustedKeys::load`] reads the keys of a directory;
//! [`TrustedKeys::match_signature`] finds the key the signature names and
//! refuses an unknown, expired or revoked one before anything is staged;
//! [`SignatureMatch::start`] then checks the image's bytes while they
//! stream ([`StreamingCheck`]: a thread of its own, fed a copy of each
//! source read), and [`StreamingCheck::finish`] says whether the signature
//! holds over exactly the bytes that were staged.
//!
//! Owns: signatures, keys and the policy. May not: read an image or write
//! anything (the image's bytes come from [`crate::input`]'s tap).
//!
//! The OpenPGP parsing and cryptography are the `pgp` crate's (rPGP, pure
//! Rust); minisign's are `minisign-verify`'s. What is ours: choosing the
//! key (issuer fingerprint or key ID, primary key or a bound subkey),
//! refusing expired and revoked keys, and the streaming around both.

pub mod minisign;
pub mod openpgp;
pub mod policy;
pub mod signature_file;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
pub use signature_file::SignatureFile;

/// The directory of the machine's configuration: `/etc/liverestore`, or
/// `$LIVERESTORE_CONFIG_DIR` (for tests and installs under another root;
/// there is deliberately no command-line flag for it, so that a policy is
/// not bypassed by a flag someone adds to a script).
pub fn config_dir() -> PathBuf {
    std::env::var_os("LIVERESTORE_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/liverestore"))
}

/// The trusted keys directory when `--trusted-keys` is not given:
/// `trusted.d` of [`config_dir`].
pub fn default_trusted_keys() -> PathBuf {
    config_dir().join("trusted.d")
}

/// A refusal of a signature, as [`ErrorKind::SignatureRejected`].
pub(crate) fn rejected(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::SignatureRejected, msg)
}

/// What a successful check proved, kept in the staging's record and its
/// on-disk header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedSignature {
    /// `openpgp` or `minisign`.
    pub format: String,
    /// The signing key: an OpenPGP fingerprint (of the subkey that signed,
    /// when a subkey did) or a minisign key ID, upper-case hex.
    pub key: String,
    /// The OpenPGP primary key's fingerprint (None for minisign).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<String>,
    /// Who the key belongs to: its primary user ID, or the minisign key
    /// file's comment.
    pub signer: Option<String>,
    /// When the signature says it was made (OpenPGP's creation time,
    /// minisign's trusted `timestamp:`).
    pub signed_unix: Option<u64>,
    /// When liverestore checked it.
    pub verified_unix: u64,
    /// Where the signature came from (a path or URL).
    pub signature: String,
    /// The trusted key file that holds the key.
    pub key_file: String,
    /// minisign's trusted comment (signed with the data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_comment: Option<String>,
    /// When the signature is of a bmap file (bmaptool's model): the bmap,
    /// whose SHA-256 of every mapped range was checked while staging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmap: Option<String>,
}

/// The signature a staging waits for, in its record (so a resumed staging
/// checks the same one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedSignature {
    /// The signature file's path or URL.
    pub signature: String,
    /// The trusted keys directory.
    pub trusted_keys: String,
    /// When the signature is the bmap file's: that bmap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmap: Option<String>,
}

/// A trusted key, from one file of the trusted keys directory.
pub enum TrustedKey {
    OpenPgp(Box<openpgp::Key>),
    Minisign(minisign::Key),
}

/// Every key of a trusted keys directory.
pub struct TrustedKeys {
    pub dir: PathBuf,
    pub keys: Vec<(PathBuf, TrustedKey)>,
}

impl TrustedKeys {
    /// Read every key file of `dir`: OpenPGP certificates (armored or
    /// binary, as `gpg --export` writes them; `*.asc`, `*.gpg`, `*.pgp`,
    /// `*.key`) and minisign public keys (`*.pub`). A file that cannot be
    /// read as its kind is an error, never skipped silently: a broken key
    /// file is something the administrator must hear about. A missing
    /// directory holds no keys.
    pub fn load(dir: &Path) -> Result<TrustedKeys> {
        let mut keys = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(TrustedKeys {
                    dir: dir.to_path_buf(),
                    keys,
                });
            }
            Err(e) => {
                return Err(Error::io("cannot read the trusted keys directory", e).with_path(dir));
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        for path in paths {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let bytes = || {
                std::fs::read(&path)
                    .map_err(|e| Error::io("cannot read a trusted key", e).with_path(&path))
            };
            let key = match ext {
                "asc" | "gpg" | "pgp" | "key" => openpgp::Key::parse(&bytes()?)
                    .map(|k| TrustedKey::OpenPgp(Box::new(k)))
                    .map_err(|e| e.with_path(&path))?,
                "pub" => minisign::Key::parse(&bytes()?)
                    .map(TrustedKey::Minisign)
                    .map_err(|e| e.with_path(&path))?,
                _ => continue,
            };
            keys.push((path, key));
        }
        Ok(TrustedKeys {
            dir: dir.to_path_buf(),
            keys,
        })
    }

    /// Find the trusted key that made `sig` and check that it may sign
    /// now (not expired, not revoked, the signature itself not expired).
    /// `origin` names where the signature came from, for the record.
    pub fn match_signature(
        &self,
        sig: &SignatureFile,
        origin: &str,
        now_unix: u64,
    ) -> Result<SignatureMatch> {
        if self.keys.is_empty() {
            return Err(rejected(format!(
                "there are no trusted keys in {} to check the signature {origin} with: put the signer's public key there (or pass --trusted-keys DIR)",
                self.dir.display()
            )));
        }
        let found = match sig {
            SignatureFile::OpenPgp(s) => self.keys.iter().find_map(|(path, k)| match k {
                TrustedKey::OpenPgp(key) => key
                    .signer_of(s, now_unix)
                    .map(|r| r.map(|m| (path, Matched::OpenPgp(Box::new(m))))),
                TrustedKey::Minisign(_) => None,
            }),
            SignatureFile::Minisign(s) => self.keys.iter().find_map(|(path, k)| match k {
                TrustedKey::Minisign(key) => key
                    .signer_of(s)
                    .map(|r| r.map(|m| (path, Matched::Minisign(Box::new(m))))),
                TrustedKey::OpenPgp(_) => None,
            }),
        };
        let (path, matched) = match found {
            Some(r) => r?,
            None => {
                return Err(rejected(format!(
                    "the signature {origin} was made by {}, which is not among the trusted keys in {}",
                    sig.issuer(),
                    self.dir.display()
                )));
            }
        };
        Ok(SignatureMatch {
            matched,
            origin: origin.to_string(),
            key_file: path.display().to_string(),
        })
    }
}

/// A signature matched with the trusted key that can check it.
pub struct SignatureMatch {
    matched: Matched,
    origin: String,
    key_file: String,
}

enum Matched {
    OpenPgp(Box<openpgp::Matched>),
    Minisign(Box<minisign::Matched>),
}

/// Pieces in flight to the checking thread, and their size: enough to
/// keep it busy, and at most 4 MiB on top of the staging's own buffers
/// (measured: 16 MiB of 4 MiB reads took a signed staging to 76 MiB RSS).
const CHECK_QUEUE: usize = 4;
const CHECK_PIECE: usize = 1 << 20;

impl SignatureMatch {
    /// The key that will check the image, for messages.
    pub fn describe(&self) -> String {
        match &self.matched {
            Matched::OpenPgp(m) => m.describe(),
            Matched::Minisign(m) => m.describe(),
        }
    }

    /// Start checking: feed the image's bytes in order with
    /// [`StreamingCheck::update`], then [`StreamingCheck::finish`].
    pub fn start(self) -> StreamingCheck {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(CHECK_QUEUE);
        let SignatureMatch {
            matched,
            origin,
            key_file,
        } = self;
        let handle = std::thread::spawn(move || {
            let proof = match matched {
                Matched::OpenPgp(m) => m.check(ChannelReader::new(rx)),
                Matched::Minisign(m) => m.check(rx),
            }?;
            let verified_unix = crate::progress::unix_now();
            Ok(VerifiedSignature {
                format: proof.format.to_string(),
                key: proof.key,
                primary_key: proof.primary_key,
                signer: proof.signer,
                signed_unix: proof.signed_unix,
                verified_unix,
                signature: origin,
                key_file,
                trusted_comment: proof.trusted_comment,
                bmap: None,
            })
        });
        StreamingCheck {
            tx: Some(tx),
            handle: Some(handle),
            fed: 0,
        }
    }
}

/// What a format's check proved (see [`VerifiedSignature`]).
pub(crate) struct Proof {
    pub format: &'static str,
    pub key: String,
    pub primary_key: Option<String>,
    pub signer: Option<String>,
    pub signed_unix: Option<u64>,
    pub trusted_comment: Option<String>,
}

/// A signature being checked over bytes fed in order.
pub struct StreamingCheck {
    tx: Option<mpsc::SyncSender<Vec<u8>>>,
    handle: Option<JoinHandle<Result<VerifiedSignature>>>,
    fed: u64,
}

impl StreamingCheck {
    /// The next bytes of the signed file.
    pub fn update(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.fed += data.len() as u64;
        for piece in data.chunks(CHECK_PIECE) {
            // A checking thread that already ended has its answer: `finish`
            // gives it.
            if let Some(tx) = &self.tx
                && tx.send(piece.to_vec()).is_err()
            {
                self.tx = None;
            }
        }
    }

    /// The end of the signed bytes: the verdict.
    pub fn finish(mut self) -> Result<VerifiedSignature> {
        self.tx = None;
        let fed = self.fed;
        let handle = self.handle.take().expect("finish is called once");
        match handle.join() {
            Ok(r) => r.map_err(|e| {
                Error::new(
                    e.kind(),
                    format!("{} (over the {fed} bytes of the image file)", e.message()),
                )
            }),
            Err(_) => Err(Error::new(
                ErrorKind::Io,
                "the signature check stopped unexpectedly",
            )),
        }
    }
}

/// The chunks of a channel as one `Read` (for APIs that take a reader).
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Vec<u8>>) -> ChannelReader {
        ChannelReader {
            rx,
            current: Vec::new(),
            at: 0,
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            match self.rx.recv() {
                Ok(next) => {
                    self.current = next;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_channel_reads_as_one_stream() {
        let (tx, rx) = mpsc::sync_channel(4);
        tx.send(b"ab".to_vec()).unwrap();
        tx.send(Vec::new()).unwrap();
        tx.send(b"cde".to_vec()).unwrap();
        drop(tx);
        let mut out = String::new();
        ChannelReader::new(rx).read_to_string(&mut out).unwrap();
        assert_eq!(out, "abcde");
    }

    #[test]
    fn a_missing_directory_holds_no_keys_and_refuses_every_signature() {
        let keys = TrustedKeys::load(Path::new("/nonexistent/liverestore-keys")).unwrap();
        assert!(keys.keys.is_empty());
        let sig = signature_file::parse(minisign::tests::SIGNATURE.as_bytes()).unwrap();
        let e = keys.match_signature(&sig, "x.minisig", 0).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::SignatureRejected);
        assert!(e.message().contains("no trusted keys"), "{e}");
    }
}
