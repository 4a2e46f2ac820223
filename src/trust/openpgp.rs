//! OpenPGP: certificates (what `gpg --export` writes, armored or binary),
//! choosing the key a detached signature names, refusing expired and
//! revoked keys, and checking the signature over a stream. rPGP (`pgp`)
//! parses and verifies; the choices above are ours, as `gpgv` makes them.

use std::io::Read;

use pgp::composed::{Deserializable, SignedPublicKey};
use pgp::packet::{self, SignatureType};
use pgp::types::KeyDetails;

use super::{Proof, rejected};
use crate::error::Result;

/// The certificates of one trusted key file.
pub struct Key {
    pub certs: Vec<SignedPublicKey>,
}

fn fingerprint(k: &impl KeyDetails) -> String {
    format!("{:X}", k.fingerprint())
}

impl Key {
    /// One or more certificates, armored or binary. Their self-signatures
    /// must verify (a tampered key file is refused here, not trusted).
    pub fn parse(bytes: &[u8]) -> Result<Key> {
        let (certs, _) = SignedPublicKey::from_reader_many(bytes)
            .map_err(|e| rejected(format!("not an OpenPGP public key file: {e}")))?;
        let certs = certs
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| rejected(format!("not an OpenPGP public key file: {e}")))?;
        if certs.is_empty() {
            return Err(rejected("the OpenPGP key file holds no public key"));
        }
        for c in &certs {
            c.verify_bindings().map_err(|e| {
                rejected(format!(
                    "the OpenPGP key {}'s own signatures do not verify: {e}",
                    fingerprint(&c.primary_key)
                ))
            })?;
        }
        Ok(Key { certs })
    }

    /// `None` when no key of this file made `sig`. When one did: the key,
    /// or why it may not sign now (revoked, expired, not bound, the
    /// signature expired or older than its key).
    pub(crate) fn signer_of(
        &self,
        sig: &packet::Signature,
        now_unix: u64,
    ) -> Option<Result<Matched>> {
        let names = |k: &dyn KeyDetails| made_by(sig, k);
        for cert in &self.certs {
            let signer = cert
                .details
                .users
                .iter()
                .find(|u| u.is_primary())
                .or(cert.details.users.first())
                .map(|u| String::from_utf8_lossy(u.id.id()).into_owned());
            let primary_fp = fingerprint(&cert.primary_key);
            if names(&cert.primary_key) {
                return Some(usable_primary(cert, sig, now_unix).map(|()| Matched {
                    sig: sig.clone(),
                    key: SigningKey::Primary(cert.primary_key.clone()),
                    fingerprint: primary_fp.clone(),
                    primary: primary_fp,
                    signer,
                }));
            }
            for sub in &cert.public_subkeys {
                if names(&sub.key) {
                    let fp = fingerprint(&sub.key);
                    let usable = usable_primary(cert, sig, now_unix)
                        .and_then(|()| usable_subkey(cert, sub, sig, now_unix));
                    return Some(usable.map(|()| Matched {
                        sig: sig.clone(),
                        key: SigningKey::Subkey(sub.key.clone()),
                        fingerprint: fp,
                        primary: primary_fp,
                        signer,
                    }));
                }
            }
        }
        None
    }
}

/// The end of a key's validity, if it has one: what the newest of its
/// self-signatures says (a newer one without an expiry lifts it).
fn expiry(created: u64, self_sigs: &[&packet::Signature]) -> Option<u64> {
    let newest = self_sigs
        .iter()
        .max_by_key(|s| s.created().map(|t| t.as_secs()))?;
    let secs = newest.key_expiration_time()?.as_secs();
    (secs > 0).then(|| created + u64::from(secs))
}

/// Whether `sig` was made by `key` (a self-signature, when `key` is the
/// primary key), as far as its issuer subpackets say.
fn made_by(sig: &packet::Signature, key: &dyn KeyDetails) -> bool {
    sig.issuer_fingerprint()
        .iter()
        .any(|f| **f == key.fingerprint())
        || sig
            .issuer_key_id()
            .iter()
            .any(|id| **id == key.legacy_key_id())
}

/// The checks of the signature against a key's own times.
fn check_times(
    what: &str,
    created: u64,
    expires: Option<u64>,
    sig: &packet::Signature,
    now: u64,
) -> Result<()> {
    if let Some(end) = expires
        && now >= end
    {
        return Err(rejected(format!(
            "{what} expired on {}",
            crate::progress::utc_time(end)
        )));
    }
    let made = sig.created().map(|t| u64::from(t.as_secs()));
    if let Some(m) = made {
        if m < created {
            return Err(rejected(format!(
                "the signature is dated {}, before {what} was created ({})",
                crate::progress::utc_time(m),
                crate::progress::utc_time(created)
            )));
        }
        if let Some(exp) = sig.signature_expiration_time().map(|d| d.as_secs())
            && exp > 0
            && now >= m + u64::from(exp)
        {
            return Err(rejected(format!(
                "the signature expired on {}",
                crate::progress::utc_time(m + u64::from(exp))
            )));
        }
    }
    Ok(())
}

fn usable_primary(cert: &SignedPublicKey, sig: &packet::Signature, now: u64) -> Result<()> {
    let fp = fingerprint(&cert.primary_key);
    let what = format!("the OpenPGP key {fp}");
    // Revocations were checked to be the key's own when it was loaded.
    if let Some(r) = cert.details.revocation_signatures.first() {
        let when = r
            .created()
            .map(|t| crate::progress::utc_time(u64::from(t.as_secs())));
        return Err(rejected(format!(
            "{what} was revoked{}: it signs nothing any more",
            when.map(|w| format!(" on {w}")).unwrap_or_default()
        )));
    }
    // Certifications by others (on a user ID) say nothing of its expiry.
    let mut self_sigs: Vec<&packet::Signature> = cert.details.direct_signatures.iter().collect();
    for u in &cert.details.users {
        self_sigs.extend(u.signatures.iter());
    }
    self_sigs.retain(|s| made_by(s, &cert.primary_key));
    let created = u64::from(cert.primary_key.created_at().as_secs());
    check_times(&what, created, expiry(created, &self_sigs), sig, now)
}

fn usable_subkey(
    cert: &SignedPublicKey,
    sub: &pgp::composed::SignedPublicSubKey,
    sig: &packet::Signature,
    now: u64,
) -> Result<()> {
    let what = format!("the OpenPGP signing subkey {}", fingerprint(&sub.key));
    if sub
        .signatures
        .iter()
        .any(|s| s.typ() == Some(SignatureType::SubkeyRevocation))
    {
        return Err(rejected(format!("{what} was revoked")));
    }
    sub.verify_bindings(&cert.primary_key)
        .map_err(|e| rejected(format!("{what} is not bound to its primary key: {e}")))?;
    let bindings: Vec<&packet::Signature> = sub
        .signatures
        .iter()
        .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding))
        .collect();
    let created = u64::from(sub.key.created_at().as_secs());
    check_times(&what, created, expiry(created, &bindings), sig, now)
}

enum SigningKey {
    Primary(packet::PublicKey),
    Subkey(packet::PublicSubkey),
}

/// A detached signature with the key that made it.
pub(crate) struct Matched {
    sig: packet::Signature,
    key: SigningKey,
    fingerprint: String,
    primary: String,
    signer: Option<String>,
}

impl Matched {
    pub(crate) fn describe(&self) -> String {
        match &self.signer {
            Some(s) => format!("OpenPGP key {} ({s})", self.fingerprint),
            None => format!("OpenPGP key {}", self.fingerprint),
        }
    }

    /// Hash `data` to its end as the signature says, then check.
    pub(crate) fn check(self, data: impl Read) -> Result<Proof> {
        let r = match &self.key {
            SigningKey::Primary(k) => self.sig.verify(k, data),
            SigningKey::Subkey(k) => self.sig.verify(k, data),
        };
        r.map_err(|e| {
            rejected(format!(
                "the OpenPGP signature of key {} does not match the image's bytes: {e}",
                self.fingerprint
            ))
        })?;
        Ok(Proof {
            format: "openpgp",
            key: self.fingerprint,
            primary_key: Some(self.primary),
            signer: self.signer,
            signed_unix: self.sig.created().map(|t| u64::from(t.as_secs())),
            trusted_comment: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::signature_file::{self, SignatureFile};

    /// Made with Debian's GnuPG 2.2 (`gpg --quick-gen-key … ed25519 sign
    /// never`, `gpg --armor --export`, then `gpg --armor --detach-sign` of
    /// the 4 bytes "test").
    pub(crate) const KEY: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----

mDMEaxFANhYJKwYBBAHaRw8BAQdA7ot1KnGAkIJOHqL70edWSmElLW+FPzaUnn6a
tWSDpFS0IkltYWdlIEJ1aWxkZXIgPGltYWdlc0BleGFtcGxlLm9yZz6IkAQTFggA
OBYhBOOZ+H/x9Q9IhyN13sW5ggtG1c48BQJrEUA2AhsDBQsJCAcCBhUKCQgLAgQW
AgMBAh4BAheAAAoJEMW5ggtG1c48eCwA/itjQQmmg3bBjJTbXBq9VKmmc/bPF+bO
H3vtZUOFHgAlAP9USVOwjssVszXrtSuS5vjn5Vst94mP6N0fWLddCnYPDQ==
=YBlq
-----END PGP PUBLIC KEY BLOCK-----
";
    pub(crate) const FINGERPRINT: &str = "E399F87FF1F50F48872375DEC5B9820B46D5CE3C";
    pub(crate) const SIGNATURE: &str = "-----BEGIN PGP SIGNATURE-----

iHUEABYIAB0WIQTjmfh/8fUPSIcjdd7FuYILRtXOPAUCaxFANgAKCRDFuYILRtXO
PP+NAQC9Y4DyZOJ0ttBEFFpyQmlknca2hgMW/xUW2PrhEOKYZgD/YIGoYQK02Fp/
Cjv0UO2CK7Lu+x0bmk5ROV7oNQo6qwM=
=YB5t
-----END PGP SIGNATURE-----
";
    const NOW: u64 = 1_800_000_000;

    fn matched(now: u64) -> Result<Matched> {
        let key = Key::parse(KEY.as_bytes()).unwrap();
        let SignatureFile::OpenPgp(sig) = signature_file::parse(SIGNATURE.as_bytes()).unwrap()
        else {
            panic!()
        };
        key.signer_of(&sig, now).expect("this key made it")
    }

    #[test]
    fn the_signed_bytes_pass_and_others_fail() {
        let proof = matched(NOW).unwrap().check(&b"test"[..]).unwrap();
        assert_eq!(proof.key, FINGERPRINT);
        assert_eq!(
            proof.signer.as_deref(),
            Some("Image Builder <images@example.org>")
        );
        assert!(proof.signed_unix.is_some());
        let e = matched(NOW).unwrap().check(&b"Test"[..]).err().unwrap();
        assert_eq!(e.kind(), crate::ErrorKind::SignatureRejected);
        assert!(e.message().contains("does not match"), "{e}");
    }

    #[test]
    fn a_signature_dated_before_its_key_is_refused() {
        let e = matched(0).err();
        assert!(e.is_none(), "no expiry: the clock alone does not refuse");
        let key = Key::parse(KEY.as_bytes()).unwrap();
        let created = u64::from(key.certs[0].primary_key.created_at().as_secs());
        let SignatureFile::OpenPgp(sig) = signature_file::parse(SIGNATURE.as_bytes()).unwrap()
        else {
            panic!()
        };
        // Its own expiry a second after creation: expired by now.
        let e = check_times("the key", created, Some(created + 1), &sig, NOW).unwrap_err();
        assert!(e.message().contains("expired on"), "{e}");
        let e = check_times("the key", created + 10_000_000, None, &sig, NOW).unwrap_err();
        assert!(e.message().contains("before the key was created"), "{e}");
    }

    #[test]
    fn a_key_file_that_is_not_a_key_is_refused() {
        assert!(Key::parse(b"hello").is_err());
        assert!(Key::parse(SIGNATURE.as_bytes()).is_err());
        let broken = KEY.replace("tWSDpFS0", "tWSDpFS1");
        assert!(Key::parse(broken.as_bytes()).is_err());
    }
}
