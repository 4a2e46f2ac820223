//! The state directory (default `/var/lib/liverestore`) and every file in
//! it: one checksummed record per staged image under `images/`, the
//! activation record (`activation.json`), one record per attachment
//! (`attached/NAME.json`), and the lock that lets only one liverestore
//! change state at a time.
//!
//! Every file is replaced durably by [`crate::store::durable::replace_file`]
//! (a temporary file, fsync, rename, fsync the directory), so a reader or a
//! crash sees the old or the new file, never a mix. The records of other
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

/// Held while a command changes state; released on drop.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
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
    pub fn lock(&self) -> Result<StateLock> {
        self.ensure()?;
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .op(|| "cannot open the lock file".into())
            .map_err(|e| e.with_path(&path))?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(StateLock { _file: file }),
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

    /// Atomically store `rec`.
    pub fn save(&self, rec: &StagingRecord) -> Result<()> {
        self.ensure()?;
        durable::replace_file(
            &self.record_path(&rec.name),
            &record::encode_state_file(rec),
            0o600,
        )
    }

    /// Where the activation record is (`boot::activate` owns its type).
    pub fn activation_path(&self) -> PathBuf {
        self.root.join("activation.json")
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

    /// Store a JSON state file of another part, durably.
    pub fn write_state<T: serde::Serialize>(&self, path: &Path, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| {
            Error::new(ErrorKind::Io, "encode a state file")
                .with_source(e)
                .with_path(path)
        })?;
        durable::replace_file(path, &bytes, 0o600)
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

    /// Forget `name`.
    pub fn remove(&self, name: &str) -> Result<()> {
        let path = self.record_path(name);
        match fs::remove_file(&path) {
            Ok(()) => File::open(self.images())
                .and_then(|d| d.sync_all())
                .op(|| "sync the state directory".into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("cannot delete the state file", e).with_path(&path)),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::tests::sample_record;

    #[test]
    fn save_load_list_remove() {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::new(t.path().join("state"));
        assert!(s.names().unwrap().is_empty());
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
        let s = StateDir::new(t.path());
        s.save(&sample_record()).unwrap();
        let p = s.record_path("web-01");
        let text = fs::read_to_string(&p)
            .unwrap()
            .replace("web-01.lrc", "web-02.lrc");
        fs::write(&p, text).unwrap();
        assert_eq!(s.load("web-01").unwrap_err().kind(), ErrorKind::Corrupt);
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
