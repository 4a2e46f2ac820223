//! Which signature a staging is checked against, and with which key:
//! settled before anything is allocated or written, so that an unknown,
//! expired or revoked key, or a file that is not a signature, costs
//! nothing. The check itself runs over the image's bytes while they are
//! staged ([`crate::input::source_tap`]); `finish` marks the staging
//! complete only when it holds.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Result;
use crate::input::OpenOptions;
use crate::input::source_tap::SourceTap;
use crate::input::transport::fetch_small;
use crate::progress::Progress;
use crate::trust::signature_file::{self, MAX_SIGNATURE_LEN};
use crate::trust::{ExpectedSignature, SignatureMatch, TrustedKeys, VerifiedSignature, rejected};

/// What the user said about signatures.
#[derive(Debug, Clone, Default)]
pub struct SignatureRequest {
    /// `--signature`: a path or URL.
    pub signature: Option<String>,
    /// `--trusted-keys`; by default [`crate::trust::default_trusted_keys`].
    pub trusted_keys: Option<PathBuf>,
}

/// The signature files looked for next to an image, in this order.
pub const SIDECARS: [&str; 3] = ["sig", "asc", "minisig"];
/// A bmap's signature files, as bmaptool looks for them.
pub const BMAP_SIDECARS: [&str; 2] = ["asc", "sig"];

/// How a staging's bytes are bound to a signature.
pub enum Signed {
    /// The image file's own signature, checked over its bytes while they
    /// stream.
    Stream(Box<SignatureMatch>),
    /// The bmap file's signature (bmaptool's model), checked already over
    /// these bytes of it; the staged bytes are bound to it by the bmap's
    /// SHA-256 of every mapped range, checked as each range goes by (the
    /// rest is staged as zeros, as the bmap says).
    Bmap(Arc<Vec<u8>>, Box<VerifiedSignature>),
}

/// A signature ready to be checked, and what the record keeps of it.
pub struct Prepared {
    pub signed: Signed,
    pub expected: ExpectedSignature,
}

impl Prepared {
    /// Set up `open` so that the image is read under this signature.
    pub fn apply(self, open: &mut OpenOptions) -> ExpectedSignature {
        match self.signed {
            Signed::Stream(m) => open.tap = Some(SourceTap::new(m.start())),
            Signed::Bmap(bytes, v) => open.signed_bmap = Some((bytes, *v)),
        }
        self.expected
    }
}

/// The bmap file a staging of `image` with `open` uses: `--bmap`, or
/// `IMAGE.bmap` next to a local image.
pub fn bmap_of(image: &str, open: &OpenOptions) -> Option<PathBuf> {
    if let Some(b) = &open.bmap {
        return Some(b.clone());
    }
    let local = !(image == "-" || image.starts_with("http://") || image.starts_with("https://"));
    let side = PathBuf::from(format!("{image}.bmap"));
    (local && !open.no_bmap && side.is_file()).then_some(side)
}

/// Find the signature of `image` and the trusted key that made it.
/// `None` when there is nothing to check: no signature given or found
/// next to the image, or one found but no trusted keys configured (said
/// in a note). Refused ([`crate::ErrorKind::SignatureRejected`]): a given
/// signature that cannot be read, one that is not a signature, an
/// unknown, expired or revoked key.
pub fn prepare(
    image: &str,
    bmap: Option<&Path>,
    req: &SignatureRequest,
    progress: &dyn Progress,
) -> Result<Option<Prepared>> {
    let dir = req
        .trusted_keys
        .clone()
        .unwrap_or_else(crate::trust::default_trusted_keys);
    let read = |origin: &str| -> Result<Option<Vec<u8>>> {
        fetch_small(origin, MAX_SIGNATURE_LEN)
            .map_err(|e| rejected(format!("cannot read the signature {origin}: {e}")))
    };
    let sidecars = |of: &str, exts: &[&str]| -> Result<Vec<(String, Vec<u8>)>> {
        let mut found = Vec::new();
        for ext in exts {
            let origin = format!("{of}.{ext}");
            if let Some(bytes) = read(&origin)? {
                found.push((origin, bytes));
            }
        }
        Ok(found)
    };
    let mut of_bmap = None;
    let mut candidates: Vec<(String, Vec<u8>)> = match &req.signature {
        Some(origin) => match read(origin)? {
            Some(bytes) => vec![(origin.clone(), bytes)],
            None => return Err(rejected(format!("the signature {origin} does not exist"))),
        },
        None if image == "-" => Vec::new(),
        None => sidecars(image, &SIDECARS)?,
    };
    if candidates.is_empty()
        && req.signature.is_none()
        && let Some(b) = bmap
    {
        // bmaptool's signed bmap: BMAP.asc or BMAP.sig.
        candidates = sidecars(&b.display().to_string(), &BMAP_SIDECARS)?;
        of_bmap = Some(b);
    }
    if candidates.is_empty() {
        return Ok(None);
    }
    let keys = TrustedKeys::load(&dir)?;
    if keys.keys.is_empty() && req.signature.is_none() && req.trusted_keys.is_none() {
        progress.note(&format!(
            "{} is next to the image, but there are no trusted keys in {}: the signature is not checked (put the signer's key there to check it)",
            candidates[0].0,
            dir.display()
        ));
        return Ok(None);
    }
    let now = crate::progress::unix_now();
    let mut first_refusal = None;
    for (origin, bytes) in candidates {
        let matched = signature_file::parse(&bytes)
            .map_err(|e| rejected(format!("{origin}: {}", e.message())))
            .and_then(|sig| keys.match_signature(&sig, &origin, now));
        match matched {
            Ok(m) => {
                let expected = ExpectedSignature {
                    signature: origin.clone(),
                    trusted_keys: dir.display().to_string(),
                    bmap: of_bmap.map(|b| b.display().to_string()),
                };
                let Some(bmap) = of_bmap else {
                    progress.note(&format!(
                        "checking the signature {origin} ({}) over the image's bytes while staging",
                        m.describe()
                    ));
                    return Ok(Some(Prepared {
                        signed: Signed::Stream(Box::new(m)),
                        expected,
                    }));
                };
                let bytes = std::fs::read(bmap).map_err(|e| {
                    crate::error::Error::io("cannot read the bmap file", e).with_path(bmap)
                })?;
                let mut check = m.start();
                check.update(&bytes);
                let mut verified = check.finish()?;
                verified.bmap = Some(bmap.display().to_string());
                progress.note(&format!(
                    "the bmap {} is signed ({origin}, {}): every mapped range is checked against its SHA-256 while staging",
                    bmap.display(),
                    verified.key
                ));
                return Ok(Some(Prepared {
                    signed: Signed::Bmap(Arc::new(bytes), Box::new(verified)),
                    expected,
                }));
            }
            Err(e) => {
                first_refusal.get_or_insert(e);
            }
        }
    }
    Err(first_refusal.expect("at least one candidate was refused"))
}

/// The same check again for a resumed staging.
pub fn prepare_again(
    image: &str,
    expected: &ExpectedSignature,
    progress: &dyn Progress,
) -> Result<Prepared> {
    let trusted_keys = Some(PathBuf::from(&expected.trusted_keys));
    let found = match &expected.bmap {
        // The bmap's own signature, found next to it again.
        Some(b) => prepare(
            image,
            Some(Path::new(b)),
            &SignatureRequest {
                signature: None,
                trusted_keys,
            },
            progress,
        )?,
        None => prepare(
            image,
            None,
            &SignatureRequest {
                signature: Some(expected.signature.clone()),
                trusted_keys,
            },
            progress,
        )?,
    };
    found.ok_or_else(|| {
        rejected(format!(
            "the signature {} the staging was started with is gone",
            expected.signature
        ))
    })
}
