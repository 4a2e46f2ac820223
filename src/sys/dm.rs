//! Device-mapper: build `linear` and `snapshot` devices from a table, find
//! them, remove them. The ioctl buffers are encoded and decoded here as
//! bytes (pure, unit-tested); `crate::sys::ioctl::dm_ioctl` only carries them.
//!
//! Written here rather than taken from the `devicemapper` crate: we need
//! five commands and two target types, and that crate brings a large
//! dependency tree (nix, bindgen-era types) for them.

use std::path::{Path, PathBuf};

use rustix::io::Errno;

use crate::error::{Error, ErrorKind, Result};
use crate::sys::dev_node;
use crate::sys::ioctl::{self, DM_IOCTL_SIZE};

pub const CONTROL: &str = "/dev/mapper/control";

const DM_VERSION: [u32; 3] = [4, 0, 0];
const NAME_LEN: usize = 128;
const UUID_LEN: usize = 129;
const SPEC_SIZE: usize = 40;

// Command numbers from <linux/dm-ioctl.h>.
const DM_DEV_CREATE: u8 = 3;
const DM_DEV_REMOVE: u8 = 4;
const DM_DEV_SUSPEND: u8 = 6;
const DM_DEV_STATUS: u8 = 7;
const DM_TABLE_LOAD: u8 = 9;
const DM_TABLE_STATUS: u8 = 12;

// Flags.
pub const DM_READONLY_FLAG: u32 = 1 << 0;
const DM_STATUS_TABLE_FLAG: u32 = 1 << 4;
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;

/// One line of a table: `length` sectors at `start` served by `kind`
/// (`linear`, `snapshot`) with `params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub start: u64,
    pub length: u64,
    pub kind: String,
    pub params: String,
}

impl Target {
    /// A `linear` target: `length` sectors at `start`, from `params`
    /// (`MAJOR:MINOR OFFSET`).
    pub fn linear(start: u64, length: u64, params: &str) -> Target {
        Target {
            start,
            length,
            kind: "linear".into(),
            params: params.into(),
        }
    }
}

/// What the kernel says about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    /// Its UUID (LVM's: `LVM-` with the group's and the volume's).
    pub uuid: String,
    pub major: u32,
    pub minor: u32,
    pub open_count: i32,
    pub flags: u32,
    pub targets: Vec<Target>,
}

impl DeviceInfo {
    /// The node devtmpfs creates for it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/dm-{}", self.minor))
    }
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn get_cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn bad_name(name: &str) -> Error {
    Error::new(
        ErrorKind::InvalidName,
        format!("'{name}' cannot be a device-mapper name"),
    )
}

/// Encode a request: the `struct dm_ioctl` header for `name` (and `uuid`),
/// `flags`, then `targets` as `struct dm_target_spec`s with their
/// parameters, with at least `room` bytes for the answer.
pub fn encode(
    name: &str,
    uuid: Option<&str>,
    flags: u32,
    targets: &[Target],
    room: usize,
) -> Result<Vec<u8>> {
    if name.is_empty() || name.len() >= NAME_LEN || name.contains('/') {
        return Err(bad_name(name));
    }
    let mut payload = Vec::new();
    for t in targets {
        if t.kind.len() >= 16 || t.params.contains('\0') {
            return Err(Error::new(
                ErrorKind::Io,
                format!("bad device-mapper target '{}'", t.kind),
            ));
        }
        let len = (SPEC_SIZE + t.params.len() + 1).next_multiple_of(8);
        let mut spec = vec![0u8; len];
        put_u64(&mut spec, 0, t.start);
        put_u64(&mut spec, 8, t.length);
        put_u32(&mut spec, 20, len as u32); // next: relative to this spec
        spec[24..24 + t.kind.len()].copy_from_slice(t.kind.as_bytes());
        spec[SPEC_SIZE..SPEC_SIZE + t.params.len()].copy_from_slice(t.params.as_bytes());
        payload.extend_from_slice(&spec);
    }
    let total = (DM_IOCTL_SIZE + payload.len().max(room)).next_multiple_of(8);
    let mut b = vec![0u8; total];
    for (i, v) in DM_VERSION.iter().enumerate() {
        put_u32(&mut b, 4 * i, *v);
    }
    put_u32(&mut b, 12, total as u32); // data_size
    put_u32(&mut b, 16, DM_IOCTL_SIZE as u32); // data_start
    put_u32(&mut b, 20, targets.len() as u32);
    put_u32(&mut b, 28, flags);
    b[48..48 + name.len()].copy_from_slice(name.as_bytes());
    if let Some(u) = uuid {
        if u.len() >= UUID_LEN {
            return Err(bad_name(u));
        }
        b[176..176 + u.len()].copy_from_slice(u.as_bytes());
    }
    b[DM_IOCTL_SIZE..DM_IOCTL_SIZE + payload.len()].copy_from_slice(&payload);
    Ok(b)
}

/// Decode an answer: the header and, for a table status, its targets.
pub fn decode(b: &[u8]) -> Result<DeviceInfo> {
    let bad = |what: &str| Error::new(ErrorKind::Io, format!("device-mapper answer: {what}"));
    if b.len() < DM_IOCTL_SIZE {
        return Err(bad("too short"));
    }
    let data_start = get_u32(b, 16) as usize;
    let data_size = (get_u32(b, 12) as usize).min(b.len());
    let count = get_u32(b, 20);
    let dev = get_u64(b, 40);
    // new_encode_dev
    let major = ((dev & 0xfff00) >> 8) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    let mut targets = Vec::new();
    let mut at = data_start;
    for _ in 0..count {
        if at < DM_IOCTL_SIZE || at + SPEC_SIZE > data_size {
            return Err(bad("target outside the buffer"));
        }
        let s = &b[at..data_size];
        let next = get_u32(s, 20) as usize;
        targets.push(Target {
            start: get_u64(s, 0),
            length: get_u64(s, 8),
            kind: get_cstr(&s[24..40]),
            params: get_cstr(&s[SPEC_SIZE..]),
        });
        if next == 0 {
            break;
        }
        // In answers, `next` is relative to the start of the data; the
        // next spec starts past this one (a `next` that points back would
        // loop over the same bytes, `count` times)
        let following = data_start.saturating_add(next);
        if following < at + SPEC_SIZE {
            return Err(bad("a target's next spec does not move forward"));
        }
        at = following;
    }
    Ok(DeviceInfo {
        name: get_cstr(&b[48..48 + NAME_LEN]),
        uuid: get_cstr(&b[176..176 + UUID_LEN]),
        major,
        minor,
        open_count: get_u32(b, 24) as i32,
        flags: get_u32(b, 28),
        targets,
    })
}

/// Whether device-mapper is usable here.
pub fn available() -> bool {
    // The node alone proves nothing: libdevmapper users (grub-probe,
    // dmsetup) create it even where the kernel has no device-mapper.
    Path::new(CONTROL).exists() && Path::new("/sys/class/misc/device-mapper").exists()
}

/// Run `cmd` with `req`; the answer, or None when the kernel says there is
/// no such device (ENXIO). Other failures are returned as the errno.
fn call(cmd: u8, mut req: Vec<u8>) -> Result<std::result::Result<Option<Vec<u8>>, Errno>> {
    let ctl = dev_node::open_control(
        CONTROL,
        "this kernel has no device-mapper (no /dev/mapper/control; try `modprobe dm-mod`)",
    )?;
    Ok(match ioctl::dm_ioctl(&ctl, cmd, &mut req) {
        Ok(()) => Ok(Some(req)),
        Err(e) if e == Errno::NXIO => Ok(None),
        Err(e) => Err(e),
    })
}

/// [`call`] where any failure, and a missing device, is an error.
fn call_ok(cmd: u8, what: &str, req: Vec<u8>) -> Result<Vec<u8>> {
    let fail = |e: Errno| Error::io(format!("device-mapper: {what}"), e.into());
    call(cmd, req)?
        .map_err(fail)?
        .ok_or_else(|| fail(Errno::NXIO))
}

/// Create device `name` with `targets` and activate it; wait for its node.
pub fn create(name: &str, uuid: &str, targets: &[Target], read_only: bool) -> Result<DeviceInfo> {
    let flags = if read_only { DM_READONLY_FLAG } else { 0 };
    call_ok(
        DM_DEV_CREATE,
        &format!("create {name}"),
        encode(name, Some(uuid), flags, &[], 0)?,
    )?;
    let loaded = call_ok(
        DM_TABLE_LOAD,
        &format!("load the table of {name}"),
        encode(name, None, flags, targets, 0)?,
    )
    .and_then(|_| {
        call_ok(
            DM_DEV_SUSPEND,
            &format!("activate {name}"),
            encode(name, None, 0, &[], 0)?,
        )
    });
    if let Err(e) = loaded {
        let _ = remove(name);
        return Err(e);
    }
    let info = status(name)?.ok_or_else(|| {
        Error::new(
            ErrorKind::Io,
            format!("device-mapper device {name} vanished"),
        )
    })?;
    dev_node::wait_for(&info.path())?;
    Ok(info)
}

/// The device `name` with its live table, or None if there is none.
pub fn status(name: &str) -> Result<Option<DeviceInfo>> {
    let mut room = 16 << 10;
    loop {
        let req = encode(name, None, DM_STATUS_TABLE_FLAG, &[], room)?;
        let buf = call(DM_TABLE_STATUS, req)?
            .map_err(|e| Error::io(format!("device-mapper: status of {name}"), e.into()))?;
        let Some(buf) = buf else { return Ok(None) };
        if get_u32(&buf, 28) & DM_BUFFER_FULL_FLAG != 0 && room < 64 << 20 {
            room *= 4;
            continue;
        }
        return decode(&buf).map(Some);
    }
}

/// Whether a device `name` exists.
pub fn exists(name: &str) -> Result<bool> {
    call(DM_DEV_STATUS, encode(name, None, 0, &[], 0)?)?
        .map(|answer| answer.is_some())
        .map_err(|e| Error::io(format!("device-mapper: status of {name}"), e.into()))
}

/// Remove device `name` (an error if it is open, e.g. mounted); removing
/// one that is not there is not an error.
pub fn remove(name: &str) -> Result<()> {
    match call(DM_DEV_REMOVE, encode(name, None, 0, &[], 0)?)? {
        Ok(_) => Ok(()),
        Err(e) if e == Errno::BUSY => Err(Error::new(
            ErrorKind::Busy,
            format!("{name} is in use (mounted or open): unmount it first"),
        )),
        Err(e) => Err(Error::io(format!("device-mapper: remove {name}"), e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let t = [
            Target::linear(0, 8, "7:0 2048"),
            Target::linear(8, 16, "7:0 100000"),
        ];
        let b = encode("lr-x", Some("LIVERESTORE-1"), DM_READONLY_FLAG, &t, 0).unwrap();
        assert_eq!(b.len() % 8, 0);
        assert_eq!(get_u32(&b, 0), 4);
        assert_eq!(get_u32(&b, 12) as usize, b.len());
        assert_eq!(get_u32(&b, 16) as usize, DM_IOCTL_SIZE);
        assert_eq!(get_u32(&b, 20), 2);
        assert_eq!(get_u32(&b, 28), DM_READONLY_FLAG);
        assert_eq!(get_cstr(&b[48..]), "lr-x");
        assert_eq!(get_cstr(&b[176..]), "LIVERESTORE-1");
        let s0 = &b[DM_IOCTL_SIZE..];
        assert_eq!(get_u64(s0, 8), 8);
        assert_eq!(get_cstr(&s0[24..]), "linear");
        assert_eq!(get_cstr(&s0[40..]), "7:0 2048");
        let next = get_u32(s0, 20) as usize;
        assert_eq!(next % 8, 0);
        assert_eq!(get_cstr(&s0[next + 40..]), "7:0 100000");
        assert_eq!(get_u64(&s0[next..], 0), 8);
    }

    #[test]
    fn names_are_checked() {
        assert!(encode("", None, 0, &[], 0).is_err());
        assert!(encode("a/b", None, 0, &[], 0).is_err());
        assert!(encode(&"x".repeat(128), None, 0, &[], 0).is_err());
        assert!(encode(&"x".repeat(127), None, 0, &[], 0).is_ok());
    }

    #[test]
    fn answer_decoding() {
        // A table-status answer: `next` counts from the start of the data.
        let mut b = encode("lr-y", None, 0, &[], 256).unwrap();
        put_u64(&mut b, 40, (253 << 8) | 3); // dev 253:3
        put_u32(&mut b, 20, 2);
        let d = DM_IOCTL_SIZE;
        put_u64(&mut b, d, 0);
        put_u64(&mut b, d + 8, 8);
        put_u32(&mut b, d + 20, 56);
        b[d + 24..d + 30].copy_from_slice(b"linear");
        b[d + 40..d + 48].copy_from_slice(b"7:0 2048");
        put_u64(&mut b, d + 56, 8);
        put_u64(&mut b, d + 64, 4);
        put_u32(&mut b, d + 76, 0);
        b[d + 80..d + 86].copy_from_slice(b"linear");
        b[d + 96..d + 102].copy_from_slice(b"7:0 10");
        let info = decode(&b).unwrap();
        assert_eq!((info.major, info.minor), (253, 3));
        assert_eq!(info.path(), PathBuf::from("/dev/dm-3"));
        assert_eq!(
            info.targets,
            vec![
                Target::linear(0, 8, "7:0 2048"),
                Target::linear(8, 4, "7:0 10")
            ]
        );
        // a `next` that points back at the first spec, with a huge count:
        // refused, not looped over (found by the `dm_table` fuzz target)
        let mut looped = b.clone();
        put_u32(&mut looped, 20, u32::MAX);
        put_u32(&mut looped, d + 20, 0x10);
        assert!(decode(&looped).is_err());
        // Lies about counts or offsets are errors, not panics.
        put_u32(&mut b, 16, 1 << 30);
        assert!(decode(&b).is_err());
        assert!(decode(&b[..100]).is_err());
    }
}
