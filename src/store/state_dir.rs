//! The state directory (default `/var/lib/liverestore`) and every file in
//! it: one checksummed record per staged image under `images/`, the
//! activation record (`activation.json`), one record per attachment
//! (`attached/NAME.json`), and the lock that lets only one liverestore
//! change state at a time.
//!
//! Every file is replaced durably by [`crate::store::durable::replace_file`]
//! (a temporary file, fsync, rename, fsync the directory), so a reader or a
//! crash sees the old or the new file, never a mix. Anyone may read; only
//! the holder of the lock may write: the writing methods are those of
//! [`StateLock`], which a command takes once ([`StateDir::lock`]) and
//! passes down for its whole run, so no code path changes state without
//! it and none takes it twice. The records of other
//! parts (activations, attachments) are typed by their owners; this
//! module stores them as JSON and never needs their types.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::store::durable;
use crate::store::record::{self, StagingRecord};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/liverestore";

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// The exclusive lock of a state directory, held by a command for its
/// whole run; released on drop. It reads as its [`StateDir`] (`Deref`)
/// and is the only way to write one: holding it is the proof, checked by
/// the compiler, that a function changing state runs under the lock.
#[derive(Debug)]
pub struct StateLock<'a> {
    state: &'a StateDir,
    _file: File,
}

impl std::ops::Deref for StateLock<'_> {
    type Target = StateDir;
    fn deref(&self) -> &StateDir {
        self.state
    }
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn record_path(&self, name: &str) -> PathBuf {
        self.images().join(format!("{name}.json"))
    }

    fn ensure(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.images())
            .op(|| "cannot create the state directory".into())
            .map_err(|e| e.with_path(&self.root))
    }

    /// Take the exclusive lock, or fail at once with [`ErrorKind::Busy`].
    ///
    /// The lock is `flock(2)` on the state directory itself, not on a file
    /// in it: that works on a read-only filesystem too, where a restored
    /// system (a kiosk's read-only root, say) runs `commit` and
    /// `rollback`, which change boot entries but no state file. When the
    /// directory cannot be made there, the nearest existing directory
    /// above it is locked instead (two liverestores still exclude each
    /// other; nothing can be written there anyway).
    pub fn lock(&self) -> Result<StateLock<'_>> {
        let path = match fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.images())
        {
            Ok(()) => self.root.clone(),
            Err(e) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => self
                .root
                .ancestors()
                .find(|p| p.is_dir())
                .unwrap_or(Path::new("/"))
                .to_path_buf(),
            Err(e) => {
                return Err(Error::io("cannot create the state directory", e).with_path(&self.root));
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::DIRECTORY.bits() as i32)
            .open(&path)
            .op(|| "cannot open the state directory".into())
            .map_err(|e| e.with_path(&path))?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(StateLock {
                state: self,
                _file: file,
            }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(Error::new(
                ErrorKind::Busy,
                "another liverestore is changing state; wait for it to finish and try again",
            )
            .with_path(&path)),
            Err(e) => Err(Error::from(e).with_path(&path)),
        }
    }

    pub fn exists(&self, name: &str) -> bool {
        self.record_path(name).exists()
    }

    /// Load and check the record of `name`.
    pub fn load(&self, name: &str) -> Result<StagingRecord> {
        record::validate_name(name)?;
        let path = self.record_path(name);
        let bytes = fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::new(
                    ErrorKind::NotFound,
                    format!("no staged image named '{name}' (see `liverestore list`)"),
                )
            } else {
                Error::io("cannot read the state file", e)
            }
            .with_path(&path)
        })?;
        let rec = record::decode_state_file(&bytes).map_err(|e| e.with_path(&path))?;
        if rec.name != name {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("state file holds '{}', not '{name}'", rec.name),
            )
            .with_path(&path));
        }
        Ok(rec)
    }

    /// Where the activation record is (`boot::activate` owns its type).
    pub fn activation_path(&self) -> PathBuf {
        self.root.join("activation.json")
    }

    /// Where an armed standby's failed-boot count is kept when the boot
    /// loader keeps none (`boot::activate::standby` owns its type).
    pub fn standby_count_path(&self) -> PathBuf {
        self.root.join("standby-count.json")
    }

    /// Where attachments keep their records and overlay stores.
    pub fn attachments_dir(&self) -> PathBuf {
        self.root.join("attached")
    }

    /// Where the record of `name`'s attachment is (`attach` owns its type).
    pub fn attachment_path(&self, name: &str) -> PathBuf {
        self.attachments_dir().join(format!("{name}.json"))
    }

    /// A JSON state file of another part, if it exists.
    pub fn read_state<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Result<Option<T>> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::new(ErrorKind::Corrupt, "damaged state file")
                    .with_source(e)
                    .with_path(path)
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read a state file", e).with_path(path)),
        }
    }

    /// The stagings the activation record names (the activated one and
    /// the partitions activated with it), without knowing its type: what
    /// `discard` and `customize` must leave alone.
    pub fn activated_names(&self) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Names {
            name: String,
            #[serde(default)]
            companions: Vec<String>,
        }
        Ok(self
            .read_state::<Names>(&self.activation_path())?
            .map(|n| std::iter::once(n.name).chain(n.companions).collect())
            .unwrap_or_default())
    }

    /// Every record, sorted by name; refused (naming the record and how to
    /// fix it) when any of them cannot be read. A record that does not
    /// load hides where its staging's bytes are: treating it as absent
    /// would let a new staging be planned over them, so what cannot be
    /// read counts as occupied and stops the operation instead.
    pub fn load_all(&self) -> Result<Vec<StagingRecord>> {
        self.names()?
            .iter()
            .map(|n| {
                self.load(n).map_err(|e| {
                    Error::new(
                        e.kind(),
                        format!(
                            "the record of staging '{n}' cannot be read, so the disk space it holds is unknown and nothing new is placed until it is fixed ({}); restore the file, or `liverestore discard {n} --force` to give up that staging",
                            e.message()
                        ),
                    )
                    .with_path(self.record_path(n))
                    .with_source(e)
                })
            })
            .collect()
    }

    /// Names of all records, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let dir = match fs::read_dir(self.images()) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(
                    Error::io("cannot read the state directory", e).with_path(self.images())
                );
            }
        };
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                let stem = n.strip_suffix(".json")?;
                record::validate_name(stem).ok().map(|()| stem.to_string())
            })
            .collect();
        names.sort();
        Ok(names)
    }
}

/// Writing: only under the lock.
impl StateLock<'_> {
    /// Atomically store `rec`.
    pub fn save(&self, rec: &StagingRecord) -> Result<()> {
        self.ensure()?;
        durable::replace_file(
            &self.record_path(&rec.name),
            &record::encode_state_file(rec),
            0o600,
        )
    }

    /// Store a JSON state file of another part, durably.
    pub fn write_state<T: serde::Serialize>(&self, path: &Path, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| {
            Error::new(ErrorKind::Io, "encode a state file")
                .with_source(e)
                .with_path(path)
        })?;
        durable::replace_file(path, &bytes, 0o600)
    }

    /// Remove a state file of another part (gone already is fine), durably.
    pub fn remove_state(&self, path: &Path) -> Result<()> {
        durable::remove_file(path).map(|_| ())
    }

    /// Forget `name`.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.remove_state(&self.record_path(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::tests::sample_record;

    #[test]
    fn save_load_list_remove() {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::new(t.path().join("state"));
        assert!(dir.names().unwrap().is_empty());
        let s = dir.lock().unwrap();
        let rec = sample_record();
        s.save(&rec).unwrap();
        assert_eq!(s.load("web-01").unwrap(), rec);
        assert_eq!(s.names().unwrap(), vec!["web-01".to_string()]);
        assert_eq!(s.load("other").unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(s.load("../x").unwrap_err().kind(), ErrorKind::InvalidName);
        s.remove("web-01").unwrap();
        assert!(!s.exists("web-01"));
    }

    #[test]
    fn corrupt_record_is_reported() {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::new(t.path());
        let s = dir.lock().unwrap();
        s.save(&sample_record()).unwrap();
        let p = s.record_path("web-01");
        let text = fs::read_to_string(&p)
            .unwrap()
            .replace("web-01.lrc", "web-02.lrc");
        fs::write(&p, text).unwrap();
        assert_eq!(s.load("web-01").unwrap_err().kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn load_all_refuses_an_unreadable_record() {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::new(t.path());
        let s = dir.lock().unwrap();
        s.save(&sample_record()).unwrap();
        assert_eq!(dir.load_all().unwrap().len(), 1);
        let p = s.record_path("web-01");
        let bytes = fs::read(&p).unwrap();
        fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let e = dir.load_all().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(
            e.message().contains("staging 'web-01' cannot be read"),
            "{e}"
        );
        assert_eq!(e.path(), Some(p.as_path()));
    }

    #[test]
    fn second_lock_is_busy() {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::new(t.path());
        let held = s.lock().unwrap();
        assert_eq!(s.lock().unwrap_err().kind(), ErrorKind::Busy);
        drop(held);
        s.lock().unwrap();
    }
}
