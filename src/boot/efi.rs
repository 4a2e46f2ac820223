//! UEFI boot variables as bytes (pure, unit-tested): `EFI_LOAD_OPTION`
//! with a hard-drive + file device path, `BootOrder`/`BootNext`, and the
//! efivarfs file layout (4 bytes of attributes, then the data); and
//! whether a PE image is signed at all (for Secure Boot).
//!
//! Written here rather than driving `efibootmgr`: it is not always
//! installed, and `efibootmgr -c` also puts the new entry first in
//! `BootOrder`, which would turn a trial boot into a permanent switch.

use crate::error::{Error, ErrorKind, Result};

/// `EFI_GLOBAL_VARIABLE`, the vendor GUID of `Boot####`, `BootOrder`, ….
pub const GLOBAL_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
pub const NV_BS_RT: u32 = 0x7;
/// `LOAD_OPTION_ACTIVE`.
pub const LOAD_OPTION_ACTIVE: u32 = 0x1;

/// The efivarfs file name of global variable `name`.
pub fn var_name(name: &str) -> String {
    format!("{name}-{GLOBAL_GUID}")
}

/// `Boot####` for `number`.
pub fn boot_var(number: u16) -> String {
    format!("Boot{number:04X}")
}

/// The number of a `Boot####-GUID` efivarfs file name.
pub fn boot_number_of(file_name: &str) -> Option<u16> {
    let rest = file_name.strip_prefix("Boot")?;
    let (hex, guid) = rest.split_at_checked(4)?;
    if guid != format!("-{GLOBAL_GUID}") || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

/// The lowest `Boot####` number not in `used`.
pub fn free_boot_number(used: &[u16]) -> Option<u16> {
    (0..=u16::MAX).find(|n| !used.contains(n))
}

/// A variable file's contents: attributes, then data.
pub fn var_file(attributes: u32, data: &[u8]) -> Vec<u8> {
    let mut out = attributes.to_le_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

/// Split a variable file into attributes and data.
pub fn parse_var_file(bytes: &[u8]) -> Result<(u32, &[u8])> {
    if bytes.len() < 4 {
        return Err(Error::new(
            ErrorKind::Corrupt,
            "an EFI variable shorter than its attributes",
        ));
    }
    let attrs = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    Ok((attrs, &bytes[4..]))
}

/// `BootOrder` (or any UINT16 array) as numbers.
pub fn parse_u16s(data: &[u8]) -> Vec<u16> {
    data.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

pub fn u16s(numbers: &[u16]) -> Vec<u8> {
    numbers.iter().flat_map(|n| n.to_le_bytes()).collect()
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// A GPT partition as a UEFI hard-drive device path node needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    pub number: u32,
    pub start_lba: u64,
    pub size_lba: u64,
    pub guid: uuid::Uuid,
}

/// Device path: `HD(number, GPT, guid, start, size)/\path`, then the end node.
pub fn device_path(part: &GptPartition, path: &str) -> Vec<u8> {
    let mut hd = vec![0x04, 0x01, 42, 0];
    hd.extend_from_slice(&part.number.to_le_bytes());
    hd.extend_from_slice(&part.start_lba.to_le_bytes());
    hd.extend_from_slice(&part.size_lba.to_le_bytes());
    hd.extend_from_slice(&part.guid.to_bytes_le());
    hd.extend_from_slice(&[0x02, 0x02]); // GPT, GUID signature
    let name = utf16z(path);
    let len = u16::try_from(4 + name.len()).expect("a short path");
    let mut file = vec![0x04, 0x04];
    file.extend_from_slice(&len.to_le_bytes());
    file.extend_from_slice(&name);
    let mut out = hd;
    out.extend_from_slice(&file);
    out.extend_from_slice(&[0x7f, 0xff, 0x04, 0x00]);
    out
}

/// The file path of a device path (its `File` node), e.g.
/// `\liverestore\web\vmlinuz.efi`.
pub fn file_path_of(device_path: &[u8]) -> Option<String> {
    let mut at = 0;
    while let Some(node) = device_path.get(at..at + 4) {
        let len = usize::from(u16::from_le_bytes([node[2], node[3]]));
        if len < 4 {
            return None;
        }
        if node[0] == 0x04 && node[1] == 0x04 {
            let units = parse_u16s(device_path.get(at + 4..at + len)?);
            let units: Vec<u16> = units.into_iter().take_while(|&u| u != 0).collect();
            return String::from_utf16(&units).ok();
        }
        if node[0] == 0x7f {
            return None;
        }
        at += len;
    }
    None
}

/// `order` with `number` first, once.
pub fn order_with_first(order: &[u16], number: u16) -> Vec<u16> {
    std::iter::once(number)
        .chain(order.iter().copied().filter(|&n| n != number))
        .collect()
}

/// An `EFI_LOAD_OPTION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOption {
    pub attributes: u32,
    pub description: String,
    pub device_path: Vec<u8>,
    /// For a Linux EFI stub: the kernel command line, UTF-16.
    pub optional_data: Vec<u8>,
}

impl LoadOption {
    /// An active option that starts the EFI executable `path` on `part`
    /// with the command line `args`.
    pub fn linux(description: &str, part: &GptPartition, path: &str, args: &str) -> LoadOption {
        LoadOption {
            attributes: LOAD_OPTION_ACTIVE,
            description: description.into(),
            device_path: device_path(part, path),
            optional_data: utf16z(args),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.attributes.to_le_bytes().to_vec();
        out.extend_from_slice(
            &u16::try_from(self.device_path.len())
                .expect("a short device path")
                .to_le_bytes(),
        );
        out.extend_from_slice(&utf16z(&self.description));
        out.extend_from_slice(&self.device_path);
        out.extend_from_slice(&self.optional_data);
        out
    }

    pub fn decode(b: &[u8]) -> Result<LoadOption> {
        let bad = |m: &str| Error::new(ErrorKind::Corrupt, format!("EFI load option: {m}"));
        if b.len() < 6 {
            return Err(bad("too short"));
        }
        let attributes = u32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
        let path_len = usize::from(u16::from_le_bytes([b[4], b[5]]));
        let mut units = Vec::new();
        let mut at = 6;
        loop {
            let pair = b
                .get(at..at + 2)
                .ok_or_else(|| bad("unterminated description"))?;
            at += 2;
            let u = u16::from_le_bytes([pair[0], pair[1]]);
            if u == 0 {
                break;
            }
            units.push(u);
        }
        let description =
            String::from_utf16(&units).map_err(|_| bad("description is not UTF-16"))?;
        let device_path = b
            .get(at..at + path_len)
            .ok_or_else(|| bad("device path past the end"))?
            .to_vec();
        Ok(LoadOption {
            attributes,
            description,
            device_path,
            optional_data: b[at + path_len..].to_vec(),
        })
    }

    /// The optional data as text (a Linux command line), if it is UTF-16.
    pub fn args(&self) -> Option<String> {
        let units: Vec<u16> = parse_u16s(&self.optional_data)
            .into_iter()
            .take_while(|&u| u != 0)
            .collect();
        String::from_utf16(&units).ok()
    }
}

/// Whether the PE image `image` (a kernel's EFI stub, a boot loader)
/// carries an Authenticode signature: its certificate table (data
/// directory 4, a file offset and size) is there and inside the file.
/// Who signed it is not looked at: under Secure Boot the firmware or shim
/// decides that; an image with no signature at all is refused by both.
/// An error: not a PE image.
pub fn pe_signed(image: &[u8]) -> Result<bool> {
    let bad = |m: &str| Error::new(ErrorKind::BadImage, format!("not a PE image: {m}"));
    let u16_at = |at: usize| {
        image
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| bad("truncated"))
    };
    let u32_at = |at: usize| {
        image
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| bad("truncated"))
    };
    if image.get(..2) != Some(b"MZ") {
        return Err(bad("no MZ header"));
    }
    let pe = u32_at(0x3c)? as usize;
    if image.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(bad("no PE signature"));
    }
    let optional = pe + 24;
    // PE32 and PE32+ differ in where the data directories start
    let (count_at, dirs_at) = match u16_at(optional)? {
        0x10b => (optional + 92, optional + 96),
        0x20b => (optional + 108, optional + 112),
        other => return Err(bad(&format!("optional header magic {other:#x}"))),
    };
    const SECURITY: usize = 4;
    if (u32_at(count_at)? as usize) <= SECURITY {
        return Ok(false);
    }
    let offset = u32_at(dirs_at + SECURITY * 8)? as u64;
    let size = u32_at(dirs_at + SECURITY * 8 + 4)? as u64;
    Ok(size >= 8 && offset > 0 && offset + size <= image.len() as u64)
}

#[cfg(test)]
mod tests {
    /// A PE32+ header with `dirs` data directories, the security one (if
    /// there) at `cert` (offset, size), in a file of `len` bytes.
    fn pe(dirs: u32, cert: (u32, u32), len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[..2].copy_from_slice(b"MZ");
        b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let opt = 0x80 + 24;
        b[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        b[opt + 108..opt + 112].copy_from_slice(&dirs.to_le_bytes());
        let sec = opt + 112 + 4 * 8;
        b[sec..sec + 4].copy_from_slice(&cert.0.to_le_bytes());
        b[sec + 4..sec + 8].copy_from_slice(&cert.1.to_le_bytes());
        b
    }

    #[test]
    fn signed_and_unsigned_kernels() {
        assert!(pe_signed(&pe(16, (0x1000, 0x5c0), 0x2000)).unwrap());
        assert!(!pe_signed(&pe(16, (0, 0), 0x2000)).unwrap(), "no table");
        assert!(
            !pe_signed(&pe(4, (0x1000, 0x5c0), 0x2000)).unwrap(),
            "no such directory"
        );
        assert!(
            !pe_signed(&pe(16, (0x1f00, 0x5c0), 0x2000)).unwrap(),
            "past the end"
        );
        assert!(pe_signed(b"\x7fELF").is_err());
        assert!(pe_signed(b"MZ").is_err());
        let mut odd = pe(16, (0x1000, 0x5c0), 0x2000);
        odd[0x80 + 24] = 0x99;
        assert!(pe_signed(&odd).is_err());
        for len in 0..0x200 {
            let _ = pe_signed(&pe(16, (0x1000, 0x5c0), 0x2000)[..len]);
        }
    }

    use super::*;

    fn esp() -> GptPartition {
        GptPartition {
            number: 1,
            start_lba: 2048,
            size_lba: 131072,
            guid: "c12a7328-f81f-11d2-ba4b-00a0c93ec93b".parse().unwrap(),
        }
    }

    #[test]
    fn load_option_bytes() {
        let o = LoadOption::linux("lr", &esp(), "\\a.efi", "x=1");
        let b = o.encode();
        assert_eq!(&b[..4], &[1, 0, 0, 0]);
        let path_len = u16::from_le_bytes([b[4], b[5]]) as usize;
        assert_eq!(path_len, 42 + 4 + 14 + 4, "HD + file(\\a.efi + NUL) + end");
        // "lr\0" in UTF-16
        assert_eq!(&b[6..12], &[b'l', 0, b'r', 0, 0, 0]);
        let dp = &b[12..12 + path_len];
        assert_eq!(&dp[..4], &[4, 1, 42, 0]);
        assert_eq!(u32::from_le_bytes(dp[4..8].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(dp[8..16].try_into().unwrap()), 2048);
        assert_eq!(u64::from_le_bytes(dp[16..24].try_into().unwrap()), 131072);
        // mixed-endian GUID: first field little-endian
        assert_eq!(&dp[24..28], &[0x28, 0x73, 0x2a, 0xc1]);
        assert_eq!(&dp[40..42], &[2, 2]);
        assert_eq!(&dp[42..44], &[4, 4]);
        assert_eq!(&dp[dp.len() - 4..], &[0x7f, 0xff, 4, 0]);
        let back = LoadOption::decode(&b).unwrap();
        assert_eq!(back, o);
        assert_eq!(back.args().as_deref(), Some("x=1"));
        assert!(LoadOption::decode(&b[..8]).is_err());
        assert!(LoadOption::decode(&b[..20]).is_err());
    }

    #[test]
    fn file_paths_and_orders() {
        let dp = device_path(&esp(), "\\liverestore\\web\\vmlinuz.efi");
        assert_eq!(
            file_path_of(&dp).as_deref(),
            Some("\\liverestore\\web\\vmlinuz.efi")
        );
        assert_eq!(file_path_of(&[0x7f, 0xff, 4, 0]), None);
        assert_eq!(file_path_of(&[4, 4, 2, 0]), None, "bad length");
        assert_eq!(order_with_first(&[0, 3, 1], 3), [3, 0, 1]);
        assert_eq!(order_with_first(&[0, 1], 4), [4, 0, 1]);
    }

    #[test]
    fn variables_and_numbers() {
        assert_eq!(boot_var(0x1a), "Boot001A");
        assert_eq!(
            boot_number_of(&var_name("Boot001A")),
            Some(0x1a),
            "efivarfs file name"
        );
        assert_eq!(boot_number_of(&var_name("BootOrder")), None);
        assert_eq!(boot_number_of("Boot0001-other-guid"), None);
        assert_eq!(free_boot_number(&[0, 1, 3]), Some(2));
        assert_eq!(parse_u16s(&u16s(&[3, 0x1001])), [3, 0x1001]);
        let f = var_file(NV_BS_RT, &[1, 2]);
        assert_eq!(parse_var_file(&f).unwrap(), (7, &[1u8, 2][..]));
        assert!(parse_var_file(&[1]).is_err());
    }
}
