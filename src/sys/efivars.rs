//! Reading and writing UEFI variables through efivarfs. The kernel marks
//! most variable files immutable; a write clears the flag first, and
//! writes attributes and data in one `write` (efivarfs takes nothing else).

use std::io::Write;
use std::path::{Path, PathBuf};

use rustix::fs::IFlags;

use crate::boot::efi;
use crate::error::{Error, ErrorKind, Result};

/// Where efivarfs is mounted.
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";
/// `EFIVARFS_MAGIC` from `<linux/magic.h>`.
const EFIVARFS_MAGIC: u64 = 0xde5e_81e4;

/// Whether the firmware runs with Secure Boot on (its `SecureBoot`
/// variable is 1, read from efivarfs where it is mounted). False where
/// there is no UEFI or the variable cannot be read.
pub fn secure_boot() -> bool {
    let path = Path::new(EFIVARS).join(efi::var_name("SecureBoot"));
    std::fs::read(path).is_ok_and(|d| efi::parse_var_file(&d).is_ok_and(|(_, data)| data == [1]))
}

/// The variables of the running firmware.
pub struct EfiVars {
    dir: PathBuf,
}

impl EfiVars {
    /// efivarfs at its usual place, checked: booted with UEFI, mounted,
    /// writable.
    pub fn open() -> Result<EfiVars> {
        EfiVars::at(Path::new(EFIVARS))
    }

    pub fn at(dir: &Path) -> Result<EfiVars> {
        if !Path::new("/sys/firmware/efi").exists() {
            return Err(Error::new(
                ErrorKind::KernelLacks,
                "this system was not booted with UEFI (no /sys/firmware/efi): UEFI activation is impossible",
            ));
        }
        let st = rustix::fs::statfs(dir).map_err(|e| Error::from(e).with_path(dir))?;
        if st.f_type as u64 != EFIVARFS_MAGIC {
            return Err(Error::new(
                ErrorKind::KernelLacks,
                format!(
                    "efivarfs is not mounted at {} (modprobe efivarfs; mount -t efivarfs efivarfs {})",
                    dir.display(),
                    dir.display()
                ),
            ));
        }
        let vfs = rustix::fs::statvfs(dir).map_err(|e| Error::from(e).with_path(dir))?;
        if vfs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
            return Err(Error::new(
                ErrorKind::KernelLacks,
                format!(
                    "efivarfs at {} is read-only (mount -o remount,rw {})",
                    dir.display(),
                    dir.display()
                ),
            ));
        }
        Ok(EfiVars {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(efi::var_name(name))
    }

    /// The data of global variable `name`, if it exists.
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(efi::parse_var_file(&bytes)?.1.to_vec())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read an EFI variable", e).with_path(&path)),
        }
    }

    fn make_mutable(path: &Path) -> Result<()> {
        let Ok(f) = std::fs::File::open(path) else {
            return Ok(());
        };
        let flags = rustix::fs::ioctl_getflags(&f).map_err(|e| Error::from(e).with_path(path))?;
        if flags.contains(IFlags::IMMUTABLE) {
            rustix::fs::ioctl_setflags(&f, flags - IFlags::IMMUTABLE)
                .map_err(|e| Error::from(e).with_path(path))?;
        }
        Ok(())
    }

    /// Create or replace global variable `name` (non-volatile, boot and
    /// runtime access).
    pub fn set(&self, name: &str, data: &[u8]) -> Result<()> {
        let path = self.path(name);
        EfiVars::make_mutable(&path)?;
        let bytes = efi::var_file(efi::NV_BS_RT, data);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open an EFI variable for writing", e).with_path(&path))?;
        let n = f
            .write(&bytes)
            .map_err(|e| Error::io("write an EFI variable", e).with_path(&path))?;
        if n != bytes.len() {
            return Err(Error::new(
                ErrorKind::Io,
                format!("efivarfs took {n} of {} bytes", bytes.len()),
            )
            .with_path(&path));
        }
        Ok(())
    }

    /// Delete global variable `name`; a missing one is not an error.
    pub fn remove(&self, name: &str) -> Result<()> {
        let path = self.path(name);
        if !path.exists() {
            return Ok(());
        }
        EfiVars::make_mutable(&path)?;
        std::fs::remove_file(&path)
            .map_err(|e| Error::io("delete an EFI variable", e).with_path(&path))
    }

    /// The numbers of every `Boot####` variable.
    pub fn boot_numbers(&self) -> Result<Vec<u16>> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io("list EFI variables", e).with_path(&self.dir))?;
        Ok(entries
            .flatten()
            .filter_map(|e| efi::boot_number_of(&e.file_name().to_string_lossy()))
            .collect())
    }

    /// `BootOrder`: empty when it is not set.
    pub fn boot_order(&self) -> Result<Vec<u16>> {
        Ok(self
            .get("BootOrder")?
            .map(|d| efi::parse_u16s(&d))
            .unwrap_or_default())
    }

    /// Delete `BootNext` when it names `number` (someone else's stays).
    pub fn clear_boot_next(&self, number: u16) -> Result<()> {
        if self.get_u16("BootNext")? == Some(number) {
            self.remove("BootNext")?;
        }
        Ok(())
    }

    /// A `u16` variable (`BootNext`, `BootCurrent`).
    pub fn get_u16(&self, name: &str) -> Result<Option<u16>> {
        Ok(self
            .get(name)?
            .and_then(|d| efi::parse_u16s(&d).first().copied()))
    }
}
