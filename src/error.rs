//! One error type for the whole library: a matchable [`ErrorKind`] plus the
//! context a user needs (what was being done, on which path, at which offset).
//!
//! Every kind maps to a documented process exit code ([`ErrorKind::exit_code`]),
//! which is the contract scripts rely on; `--help` and docs/guide.md list
//! the same table.
//!
//! The cause underneath (an I/O error, a parser's error) is kept typed,
//! boxed, and printed once: [`Error`]'s message includes it (as
//! `std::io::Error` does with its inner error), so its `source()` starts
//! one level below, and a reporter that walks the chain never prints a
//! cause twice. [`Error::cause`] gives the typed cause itself, for
//! `downcast_ref`.

use std::fmt;
use std::path::PathBuf;

/// What went wrong, as a caller can match it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The operation needs root (CAP_SYS_ADMIN, CAP_LINUX_IMMUTABLE, raw disk access).
    NotRoot,
    /// The directory is on a filesystem liverestore cannot stage into
    /// (btrfs, tmpfs, overlay, network, …).
    UnsupportedFilesystem,
    /// The device stack under the filesystem is not supported (LUKS, md,
    /// an LVM volume other than linear, a kernel that forbids writing the
    /// disk).
    UnsupportedDevice,
    /// Not enough free space on the host filesystem.
    NoSpace,
    /// The image is missing, unreadable, shorter or longer than announced.
    BadImage,
    /// The staging name is not usable (empty, `/`, `..`, control characters).
    InvalidName,
    /// A staged image of that name already exists.
    NameInUse,
    /// No staged image of that name.
    NotFound,
    /// The container's physical extents differ from the recorded map (the
    /// file was replaced, moved or truncated).
    MapChanged,
    /// A state file or on-disk header failed its checksum or cannot be parsed.
    Corrupt,
    /// Data read back from the disk does not match the hashes recorded while
    /// staging.
    VerifyFailed,
    /// Another liverestore holds the lock.
    Busy,
    /// The staged image is not in a state that allows the operation
    /// (e.g. resuming a complete staging).
    InvalidState,
    /// An unexpected I/O error from the system.
    Io,
    /// The running kernel lacks what the operation needs (device-mapper,
    /// loop devices, FUSE).
    KernelLacks,
    /// No boot loader liverestore can drive: efivarfs missing or
    /// read-only and no GRUB configuration that honours `next_entry` and
    /// `custom.cfg`.
    UnsupportedBootLoader,
    /// An image signature was refused: it does not match the bytes, its
    /// key is not trusted (or expired, or revoked), or the signature file
    /// is not a signature.
    SignatureRejected,
    /// The machine's policy (`/etc/liverestore/policy.toml`) forbids it,
    /// e.g. activating a staging no trusted key signed.
    PolicyForbids,
}

impl ErrorKind {
    /// The process exit code for this kind. 0 is success, 1 an unexpected
    /// internal error, 2 a usage error (reported by the argument parser).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::NotRoot => 10,
            ErrorKind::UnsupportedFilesystem => 11,
            ErrorKind::UnsupportedDevice => 12,
            ErrorKind::NoSpace => 13,
            ErrorKind::BadImage => 14,
            ErrorKind::InvalidName => 15,
            ErrorKind::NameInUse => 16,
            ErrorKind::NotFound => 17,
            ErrorKind::MapChanged => 18,
            ErrorKind::Corrupt => 19,
            ErrorKind::VerifyFailed => 20,
            ErrorKind::Busy => 21,
            ErrorKind::InvalidState => 22,
            ErrorKind::Io => 23,
            ErrorKind::KernelLacks => 24,
            ErrorKind::UnsupportedBootLoader => 25,
            ErrorKind::SignatureRejected => 26,
            ErrorKind::PolicyForbids => 27,
        }
    }

    /// A stable snake_case name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotRoot => "not_root",
            ErrorKind::UnsupportedFilesystem => "unsupported_filesystem",
            ErrorKind::UnsupportedDevice => "unsupported_device",
            ErrorKind::NoSpace => "no_space",
            ErrorKind::BadImage => "bad_image",
            ErrorKind::InvalidName => "invalid_name",
            ErrorKind::NameInUse => "name_in_use",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MapChanged => "map_changed",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::VerifyFailed => "verify_failed",
            ErrorKind::Busy => "busy",
            ErrorKind::InvalidState => "invalid_state",
            ErrorKind::Io => "io",
            ErrorKind::KernelLacks => "kernel_lacks",
            ErrorKind::UnsupportedBootLoader => "unsupported_boot_loader",
            ErrorKind::SignatureRejected => "signature_rejected",
            ErrorKind::PolicyForbids => "policy_forbids",
        }
    }

    /// All kinds, for documentation and tests.
    pub const ALL: [ErrorKind; 18] = [
        ErrorKind::NotRoot,
        ErrorKind::UnsupportedFilesystem,
        ErrorKind::UnsupportedDevice,
        ErrorKind::NoSpace,
        ErrorKind::BadImage,
        ErrorKind::InvalidName,
        ErrorKind::NameInUse,
        ErrorKind::NotFound,
        ErrorKind::MapChanged,
        ErrorKind::Corrupt,
        ErrorKind::VerifyFailed,
        ErrorKind::Busy,
        ErrorKind::InvalidState,
        ErrorKind::Io,
        ErrorKind::KernelLacks,
        ErrorKind::UnsupportedBootLoader,
        ErrorKind::SignatureRejected,
        ErrorKind::PolicyForbids,
    ];
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A liverestore error: a kind, a one-line message that says what to do, and
/// optional context (path, offset, the typed error underneath).
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    path: Option<PathBuf>,
    offset: Option<u64>,
    cause: Option<Cause>,
}

/// The typed error underneath an [`Error`].
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

impl Error {
    /// A new error of `kind` with a message for the user.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            path: None,
            offset: None,
            cause: None,
        }
    }

    /// Keep `cause` (a typed error of another crate, or of the system) as
    /// what this error happened because of.
    pub fn with_source(mut self, cause: impl Into<Cause>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    /// The typed error underneath, if there is one (its text is already
    /// part of this error's message).
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.cause.as_deref()
    }

    /// An I/O error while doing `operation`, classified by its errno
    /// (ENOSPC becomes [`ErrorKind::NoSpace`], EPERM/EACCES [`ErrorKind::NotRoot`]
    /// when not running as root, everything else [`ErrorKind::Io`]).
    pub fn io(operation: impl Into<String>, err: std::io::Error) -> Self {
        let kind = match err.raw_os_error() {
            Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error() => ErrorKind::NoSpace,
            Some(code)
                if (code == rustix::io::Errno::PERM.raw_os_error()
                    || code == rustix::io::Errno::ACCESS.raw_os_error())
                    && !rustix::process::geteuid().is_root() =>
            {
                ErrorKind::NotRoot
            }
            _ => ErrorKind::Io,
        };
        Error {
            kind,
            message: operation.into(),
            path: None,
            offset: None,
            cause: Some(Box::new(err)),
        }
    }

    /// Attach the path the operation was about.
    pub fn with_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Attach the byte offset the operation was at.
    pub fn with_offset(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }

    /// Change the kind (e.g. an I/O error that really means a bad image).
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    pub fn offset(&self) -> Option<u64> {
        self.offset
    }

    /// The system error underneath, if there is one.
    pub fn errno(&self) -> Option<rustix::io::Errno> {
        self.cause()?
            .downcast_ref::<std::io::Error>()?
            .raw_os_error()
            .map(rustix::io::Errno::from_raw_os_error)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(path) = &self.path {
            write!(f, " ({})", path.display())?;
        }
        if let Some(offset) = self.offset {
            write!(f, " at offset {offset}")?;
        }
        if let Some(cause) = &self.cause {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    /// One level below the cause, whose text the message already has.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref()?.source()
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(errno: rustix::io::Errno) -> Self {
        Error::io("system call failed", errno.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for wrapping `std::io::Result`s with an operation description.
pub trait IoContext<T> {
    fn op(self, operation: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<std::io::Error>> IoContext<T> for std::result::Result<T, E> {
    fn op(self, operation: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(operation(), e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_reserved_codes_unused() {
        let mut seen = std::collections::HashSet::new();
        for kind in ErrorKind::ALL {
            let code = kind.exit_code();
            assert!(code >= 10, "{kind} uses reserved code {code}");
            assert!(seen.insert(code), "{kind} reuses exit code {code}");
        }
    }

    #[test]
    fn enospc_is_no_space() {
        let err = Error::io("fallocate", std::io::Error::from_raw_os_error(28));
        assert_eq!(err.kind(), ErrorKind::NoSpace);
    }

    /// A parser error with a cause of its own, as serde_json or a format
    /// crate gives.
    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("table unreadable")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_stay_typed_and_are_printed_once() {
        let err = Error::new(ErrorKind::Corrupt, "partition table")
            .with_source(Outer(std::io::Error::from_raw_os_error(5)));
        assert!(err.cause().unwrap().downcast_ref::<Outer>().is_some());
        // what an error reporter prints: the error, then each source
        let mut chain = vec![err.to_string()];
        let mut next = std::error::Error::source(&err);
        while let Some(e) = next {
            chain.push(e.to_string());
            next = e.source();
        }
        assert_eq!(chain[0], "partition table: table unreadable");
        assert_eq!(chain.len(), 2, "{chain:?}");
        assert!(chain[1].contains("Input/output error"), "{chain:?}");
        let joined = chain.join(": ");
        assert_eq!(joined.matches("table unreadable").count(), 1, "{joined}");
        // an I/O error keeps its errno
        let io = Error::io("read", std::io::Error::from_raw_os_error(5));
        assert_eq!(io.errno(), Some(rustix::io::Errno::IO));
        assert!(
            std::error::Error::source(&io).is_none(),
            "its text is in the message"
        );
    }

    #[test]
    fn display_carries_context() {
        let err = Error::new(ErrorKind::BadImage, "image ended early")
            .with_path("/x/y.img")
            .with_offset(4096);
        assert_eq!(
            err.to_string(),
            "image ended early (/x/y.img) at offset 4096"
        );
    }
}
