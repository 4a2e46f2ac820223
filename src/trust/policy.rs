//! The machine's policy: `policy.toml` in the configuration directory
//! (`/etc/liverestore`). Today one rule:
//!
//! ```toml
//! # Nothing becomes bootable unless a trusted key signed it.
//! require_signature = true
//! ```
//!
//! A missing file is the default policy (nothing required); a file that
//! cannot be read or parsed, or names a rule this version does not know,
//! is an error: a policy someone wrote is never half-applied.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};

/// What the policy file says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// `activate` refuses a staging that was not verified against a
    /// trusted key when it was staged.
    #[serde(default)]
    pub require_signature: bool,
    /// Where the policy was read from (None: no policy file).
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

impl Policy {
    /// Parse a policy file's text.
    pub fn parse(text: &str) -> Result<Policy> {
        toml::from_str(text).map_err(|e| {
            Error::new(
                ErrorKind::PolicyForbids,
                format!("the policy file cannot be used: {}", e.message()),
            )
        })
    }

    /// `DIR/policy.toml`, or the default policy when there is none.
    pub fn load(config_dir: &Path) -> Result<Policy> {
        let path = config_dir.join("policy.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => Policy::parse(&text)
                .map(|p| Policy {
                    file: Some(path.clone()),
                    ..p
                })
                .map_err(|e| e.with_path(&path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Policy::default()),
            Err(e) => Err(Error::io("cannot read the policy file", e).with_path(&path)),
        }
    }

    /// The machine's policy (see [`super::config_dir`]).
    pub fn of_this_machine() -> Result<Policy> {
        Policy::load(&super::config_dir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_is_read_and_anything_unknown_refused() {
        assert!(
            Policy::parse("# c\nrequire_signature = true\n")
                .unwrap()
                .require_signature
        );
        assert!(!Policy::parse("").unwrap().require_signature);
        let e = Policy::parse("require_signatures = true").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PolicyForbids);
        assert!(e.message().contains("require_signatures"), "{e}");
        assert!(Policy::parse("require_signature = \"yes\"").is_err());
    }

    #[test]
    fn no_file_is_the_default_policy() {
        let p = Policy::load(Path::new("/nonexistent/liverestore")).unwrap();
        assert_eq!(p, Policy::default());
    }
}
