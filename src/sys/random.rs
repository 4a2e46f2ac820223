//! Random bytes that never wait for the kernel's random number generator.
//!
//! liverestore needs randomness only for identifiers (staging ids, segment
//! set ids, partition GUIDs): they must be unique, not secret. It runs
//! where the kernel's generator may not be initialised yet — the early-boot
//! step runs before anything has fed it, and a virtual machine without
//! RDRAND or virtio-rng may take minutes or forever to initialise it. The
//! `getrandom` crate (behind `uuid`'s `v4`) waits for initialisation, and in
//! a static build it cannot find libc's `getrandom` and falls back to
//! `poll()` on `/dev/random`: `stage` was seen blocked there for good.
//!
//! So identifiers come from here: `getrandom(2)` with `GRND_INSECURE`
//! (Linux 5.6 and later: never blocks, the best bytes the kernel has), and
//! on older kernels `/dev/urandom`, which never blocks there. No crate
//! offers "never block" as a choice, hence this file.

use std::io::Read;

use rustix::io::Errno;
use rustix::rand::{GetRandomFlags, getrandom};

use crate::error::{Error, Result};

/// Fill `buf` with random bytes without ever waiting for the kernel's
/// generator to be initialised.
pub fn fill(buf: &mut [u8]) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match getrandom(&mut buf[done..], GetRandomFlags::INSECURE) {
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            // Before Linux 5.6 GRND_INSECURE is unknown (EINVAL); without
            // the syscall (ENOSYS, a seccomp filter) likewise.
            Err(Errno::INVAL | Errno::NOSYS | Errno::PERM) => {
                return std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| f.read_exact(&mut buf[done..]))
                    .map_err(|e| Error::io("read /dev/urandom", e));
            }
            Err(e) => return Err(Error::io("getrandom(GRND_INSECURE)", e.into())),
        }
    }
    Ok(())
}

/// A random (version 4) UUID, made without waiting for the kernel's
/// generator.
pub fn uuid_v4() -> Result<uuid::Uuid> {
    let mut b = [0u8; 16];
    fill(&mut b)?;
    Ok(uuid::Builder::from_random_bytes(b).into_uuid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_differ() {
        let a = uuid_v4().unwrap();
        let b = uuid_v4().unwrap();
        assert_eq!(a.get_version_num(), 4);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(a, b);
    }

    #[test]
    fn fills_large_buffers() {
        let mut buf = vec![0u8; 1 << 20];
        fill(&mut buf).unwrap();
        assert!(buf.iter().filter(|&&b| b == 0).count() < 1 << 14);
    }
}
