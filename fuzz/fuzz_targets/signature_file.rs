//! A signature file (and a trusted key file) is whatever the server or the
//! administrator put there: reading it, naming its issuer, matching it
//! against keys and checking it over some bytes must never panic, and a
//! refusal is always `signature_rejected`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use liverestore::ErrorKind;
use liverestore::trust::{TrustedKey, TrustedKeys, minisign, openpgp, signature_file};

/// A minisign key (Debian's minisign 0.11) so that matching runs too.
const MINISIGN_KEY: &str = "untrusted comment: minisign public key 2E8A1445FF6E8323\nRWQjg27/RRSKLqDofEPZVMIhQ3zY/RxXnhNEUXxwk3dnFMnnrjymkTXb\n";

fuzz_target!(|data: &[u8]| {
    for k in [openpgp::Key::parse(data).err(), minisign::Key::parse(data).err()]
        .into_iter()
        .flatten()
    {
        assert_eq!(k.kind(), ErrorKind::SignatureRejected, "{k}");
    }
    let sig = match signature_file::parse(data) {
        Ok(s) => s,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::SignatureRejected, "{e}");
            return;
        }
    };
    let _ = (sig.issuer(), sig.format());
    let key = minisign::Key::parse(MINISIGN_KEY.as_bytes()).expect("a good key");
    let keys = TrustedKeys {
        dir: "/k".into(),
        keys: vec![("/k/m.pub".into(), TrustedKey::Minisign(key))],
    };
    if let Ok(m) = keys.match_signature(&sig, "fuzz", 1_800_000_000) {
        let mut check = m.start();
        check.update(data);
        if let Err(e) = check.finish() {
            assert_eq!(e.kind(), ErrorKind::SignatureRejected, "{e}");
        }
    }
});
