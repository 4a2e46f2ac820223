//! GRUB's formats, on bytes in memory: the environment block (`grubenv`),
//! liverestore's marked block in `custom.cfg`, and the check that a
//! `grub.cfg` honours both.
//!
//! Written here rather than taken from a crate: no crate on crates.io
//! reads or writes GRUB's environment block, and the format is small
//! (GRUB's `grub-core/lib/envblk.c`): the signature line
//! `# GRUB Environment Block`, then `name=value` lines, padded with `#` to
//! a fixed size (1024 bytes) that never changes — GRUB rewrites the block
//! in place at boot, through its block list, so the file must keep its
//! size and its blocks.

use crate::error::{Error, ErrorKind, Result};

/// The first line of every environment block.
pub const SIGNATURE: &str = "# GRUB Environment Block\n";
/// The size `grub-editenv create` gives the block.
pub const ENV_SIZE: usize = 1024;

/// A parsed environment block: its lines in file order (comment lines,
/// such as the warning `grub-editenv` writes, are kept), and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrubEnv {
    lines: Vec<Line>,
    size: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// A `#` line ended by a newline (not the padding, which has none).
    Comment(String),
    Var(String, String),
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Corrupt, msg)
}

/// Whether `name` is a GRUB variable name liverestore may write.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl GrubEnv {
    /// An empty block of the standard size.
    pub fn new() -> GrubEnv {
        GrubEnv {
            lines: Vec::new(),
            size: ENV_SIZE,
        }
    }

    /// Parse a whole block. Refused: a missing signature, a line without
    /// `=`, a value cut off by the end of the block.
    pub fn parse(block: &[u8]) -> Result<GrubEnv> {
        let rest = block.strip_prefix(SIGNATURE.as_bytes()).ok_or_else(|| {
            corrupt("not a GRUB environment block (no '# GRUB Environment Block' line)")
        })?;
        let mut lines = Vec::new();
        let mut i = 0;
        while i < rest.len() {
            match rest[i] {
                // a comment line, or the padding that runs to the end
                b'#' => match rest[i..].iter().position(|&b| b == b'\n') {
                    Some(n) => {
                        let text = String::from_utf8_lossy(&rest[i..i + n]).into_owned();
                        lines.push(Line::Comment(text));
                        i += n + 1;
                    }
                    None => break,
                },
                b'\n' => i += 1,
                _ => {
                    let eq = rest[i..]
                        .iter()
                        .position(|&b| b == b'=' || b == b'\n')
                        .filter(|&p| rest[i + p] == b'=')
                        .ok_or_else(|| corrupt(format!("line at byte {i} has no '='")))?;
                    let name = String::from_utf8_lossy(&rest[i..i + eq]).into_owned();
                    i += eq + 1;
                    let mut value = Vec::new();
                    loop {
                        match rest.get(i) {
                            None => return Err(corrupt(format!("value of '{name}' is cut off"))),
                            Some(b'\n') => break,
                            Some(b'\\') => {
                                let c = *rest.get(i + 1).ok_or_else(|| {
                                    corrupt(format!("value of '{name}' is cut off"))
                                })?;
                                value.push(c);
                                i += 2;
                            }
                            Some(&c) => {
                                value.push(c);
                                i += 1;
                            }
                        }
                    }
                    i += 1;
                    lines.push(Line::Var(
                        name,
                        String::from_utf8_lossy(&value).into_owned(),
                    ));
                }
            }
        }
        Ok(GrubEnv {
            lines,
            size: block.len(),
        })
    }

    /// The block, padded with `#` to its size. Fails when the variables
    /// no longer fit.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = SIGNATURE.as_bytes().to_vec();
        for line in &self.lines {
            let (name, value) = match line {
                Line::Comment(text) => {
                    out.extend_from_slice(text.as_bytes());
                    out.push(b'\n');
                    continue;
                }
                Line::Var(name, value) => (name, value),
            };
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
            for &b in value.as_bytes() {
                if b == b'\\' || b == b'\n' {
                    out.push(b'\\');
                }
                out.push(b);
            }
            out.push(b'\n');
        }
        if out.len() > self.size {
            return Err(Error::new(
                ErrorKind::NoSpace,
                format!(
                    "the GRUB environment block is full ({} bytes needed, {} available)",
                    out.len(),
                    self.size
                ),
            ));
        }
        out.resize(self.size, b'#');
        Ok(out)
    }

    /// The value of `name`; an empty value counts as unset, as in GRUB's
    /// `[ "${name}" ]` (GRUB clears `next_entry` by saving it empty).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.lines
            .iter()
            .find_map(|l| match l {
                Line::Var(n, v) if n == name => Some(v.as_str()),
                _ => None,
            })
            .filter(|v| !v.is_empty())
    }

    /// Set `name` (kept in place if present, appended otherwise).
    pub fn set(&mut self, name: &str, value: &str) {
        assert!(valid_name(name), "GRUB variable name '{name}'");
        let existing = self.lines.iter_mut().find_map(|l| match l {
            Line::Var(n, v) if n == name => Some(v),
            _ => None,
        });
        match existing {
            Some(v) => *v = value.to_string(),
            None => self
                .lines
                .push(Line::Var(name.to_string(), value.to_string())),
        }
    }

    /// Remove `name`; whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.lines.len();
        self.lines
            .retain(|l| !matches!(l, Line::Var(n, _) if n == name));
        self.lines.len() != before
    }

    pub fn size(&self) -> usize {
        self.size
    }
}

impl Default for GrubEnv {
    fn default() -> Self {
        GrubEnv::new()
    }
}

/// Variables liverestore keeps in the environment block.
pub mod vars {
    /// GRUB's one-shot choice (Debian's `00_header` honours and clears it).
    pub const NEXT_ENTRY: &str = "next_entry";
    /// The menu entry id of the active liverestore activation: marks the
    /// block as the one activation found (the restored system checks it
    /// before it writes the block through the raw disk).
    pub const ENTRY: &str = "liverestore_entry";
    /// Set by `commit`: liverestore's `custom.cfg` block then makes its
    /// entry GRUB's default.
    pub const DEFAULT: &str = "liverestore_default";
    /// `activate --standby`: the entry id of the standby that GRUB starts
    /// once the installed system failed [`TRIES`] boots in a row.
    pub const STANDBY: &str = "liverestore_standby";
    /// `activate --standby`: the failed boots of the installed system
    /// left before GRUB starts the standby. The standby's block counts it
    /// down (and saves it) at every boot of the installed system; the
    /// installed system's `healthy-boot` unit sets it back to the full
    /// count once a boot reached `multi-user.target`. `0`: the standby
    /// starts.
    pub const TRIES: &str = "liverestore_tries";
}

/// The most failed boots a standby can wait for: GRUB's script has no
/// arithmetic, so the block counts down through one `elif` per value.
pub const MAX_STANDBY_TRIES: u32 = 9;

/// The failed boots left before the standby starts, as the block reads
/// [`vars::TRIES`]: a value it cannot count down from counts as 0 (GRUB's
/// block then starts the standby too).
pub fn tries_left(env: &GrubEnv) -> Option<u32> {
    env.get(vars::STANDBY)?;
    Some(
        env.get(vars::TRIES)
            .and_then(|t| t.parse().ok())
            .filter(|t| *t <= MAX_STANDBY_TRIES)
            .unwrap_or(0),
    )
}

fn begin_marker(name: &str) -> String {
    format!("### BEGIN liverestore {name} ###")
}

fn end_marker(name: &str) -> String {
    format!("### END liverestore {name} ###")
}

/// The menu entry id of staging `name`.
pub fn entry_id(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("liverestore-{safe}")
}

/// What the menu entry boots.
pub struct MenuEntry<'a> {
    pub name: &'a str,
    /// GRUB's module of the filesystem holding the kernel: `ext2`, `xfs`.
    pub fs_module: &'a str,
    pub fs_uuid: &'a str,
    /// Paths inside that filesystem, as GRUB sees them.
    pub kernel: &'a str,
    pub initrd: &'a str,
    pub args: &'a str,
    /// The standby of the installed system (`activate --standby`): the
    /// block also counts the installed system's boots down
    /// ([`vars::TRIES`]) and starts the entry when none are left.
    pub standby: bool,
}

/// Quote `s` for grub.cfg: single quotes, with `'` written as `'\''`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// liverestore's block for `custom.cfg`: the menu entry, and the line that
/// makes it the default once `commit` set [`vars::DEFAULT`] (unless this
/// boot is a one-shot choice of something else). A standby's block also
/// counts down [`vars::TRIES`] (saved with `save_env`, as Debian's
/// `recordfail` does) while the installed system boots, and makes the
/// entry the default once it reached 0.
pub fn custom_block(e: &MenuEntry<'_>) -> String {
    let id = entry_id(e.name);
    let (title, standby) = if e.standby {
        (
            format!("liverestore {} (standby)", e.name),
            standby_lines(&id),
        )
    } else {
        (
            format!("liverestore {} (restored system)", e.name),
            String::new(),
        )
    };
    format!(
        "{begin}\n\
         # Added by `liverestore activate`; `liverestore rollback` removes it.\n\
         menuentry {title} --id {id} {{\n\
         \tinsmod part_gpt\n\
         \tinsmod part_msdos\n\
         \tinsmod {fs}\n\
         \tsearch --no-floppy --fs-uuid --set=root {uuid}\n\
         \tlinux {kernel} {args}\n\
         \tinitrd {initrd}\n\
         }}\n\
         if [ \"${{{default}}}\" = \"{id}\" -a -z \"${{boot_once}}\" ]; then\n\
         \tset default=\"{id}\"\n\
         {standby}\
         fi\n\
         {end}\n",
        begin = begin_marker(e.name),
        end = end_marker(e.name),
        title = quote(&title),
        fs = e.fs_module,
        uuid = e.fs_uuid,
        kernel = quote(e.kernel),
        initrd = quote(e.initrd),
        args = e.args,
        default = vars::DEFAULT,
    )
}

/// The standby's branch of its block: no failed boots left, start it;
/// else count this boot of the installed system down, and save it.
fn standby_lines(id: &str) -> String {
    let (standby, tries) = (vars::STANDBY, vars::TRIES);
    let mut s = format!(
        "elif [ \"${{{standby}}}\" = \"{id}\" -a -z \"${{boot_once}}\" ]; then\n\
         \tif [ \"${{{tries}}}\" = \"0\" ]; then\n\
         \t\tset default=\"{id}\"\n"
    );
    for n in 1..=MAX_STANDBY_TRIES {
        s.push_str(&format!(
            "\telif [ \"${{{tries}}}\" = \"{n}\" ]; then\n\
             \t\tset {tries}=\"{}\"\n\
             \t\tsave_env {tries}\n",
            n - 1
        ));
    }
    s.push_str(&format!(
        "\telse\n\
         \t\tset default=\"{id}\"\n\
         \tfi\n"
    ));
    s
}

/// `custom.cfg` text without the blocks of `name` (unchanged when there
/// are none). A begin marker without its end marker is refused: that file
/// was edited by hand and liverestore will not guess.
pub fn without_block(text: &str, name: &str) -> Result<String> {
    let (begin, end) = (begin_marker(name), end_marker(name));
    let mut text = text.to_string();
    while let Some(b) = text.find(&begin) {
        let e = text[b..]
            .find(&end)
            .map(|i| b + i + end.len())
            .ok_or_else(|| {
                corrupt(format!(
                    "custom.cfg has '{begin}' without '{end}': fix it by hand"
                ))
            })?;
        let after = text[e..].strip_prefix('\n').unwrap_or(&text[e..]);
        text = format!("{}{}", &text[..b], after);
    }
    Ok(text)
}

/// `custom.cfg` text with `block` as the block of `name` (replacing any).
pub fn with_block(text: &str, name: &str, block: &str) -> Result<String> {
    let mut out = without_block(text, name)?;
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(block);
    Ok(out)
}

/// Check that `grub.cfg` loads the environment block, honours
/// `next_entry` and sources `custom.cfg` (as Debian's and Ubuntu's
/// generated configurations do: `00_header`, `41_custom`).
pub fn check_config(grub_cfg: &str) -> Result<()> {
    let missing: Vec<&str> = [
        ("load_env", "load_env"),
        ("next_entry", "${next_entry}"),
        ("custom.cfg", "source …/custom.cfg"),
    ]
    .iter()
    .filter(|(needle, _)| !grub_cfg.contains(needle))
    .map(|(_, what)| *what)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::UnsupportedBootLoader,
        format!(
            "grub.cfg lacks {}: liverestore needs a configuration made by grub-mkconfig with \
             Debian's 00_header and 41_custom (update-grub), which honour next_entry and source custom.cfg",
            missing.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_round_trip() {
        // as `grub-editenv grubenv set next_entry=x saved_entry=0` writes
        // it (GRUB 2.06 adds the warning line)
        let mut raw = b"# GRUB Environment Block\n# WARNING: Do not edit this file by tools other than grub-editenv!!!\nnext_entry=x\nsaved_entry=0\n".to_vec();
        raw.resize(ENV_SIZE, b'#');
        let mut env = GrubEnv::parse(&raw).unwrap();
        assert_eq!(env.get("next_entry"), Some("x"));
        assert_eq!(env.get("saved_entry"), Some("0"));
        assert_eq!(env.encode().unwrap(), raw);
        env.set("next_entry", "liverestore-web");
        env.set(vars::DEFAULT, "a\\b\nc");
        let again = GrubEnv::parse(&env.encode().unwrap()).unwrap();
        assert_eq!(again.get("next_entry"), Some("liverestore-web"));
        assert_eq!(again.get(vars::DEFAULT), Some("a\\b\nc"));
        assert_eq!(again.encode().unwrap().len(), ENV_SIZE);
        assert!(env.remove("next_entry"));
        assert!(!env.remove("next_entry"));
        // GRUB clears next_entry by saving it empty
        env.set("next_entry", "");
        assert_eq!(env.get("next_entry"), None);
        assert_eq!(GrubEnv::new().encode().unwrap().len(), ENV_SIZE);
    }

    #[test]
    fn env_refusals() {
        assert_eq!(
            GrubEnv::parse(b"hello").unwrap_err().kind(),
            ErrorKind::Corrupt
        );
        assert!(GrubEnv::parse(b"# GRUB Environment Block\nnoequals\n").is_err());
        assert!(GrubEnv::parse(b"# GRUB Environment Block\na=cut").is_err());
        assert!(GrubEnv::parse(b"# GRUB Environment Block\na=\\").is_err());
        let mut env = GrubEnv::new();
        env.set("x", &"v".repeat(ENV_SIZE));
        assert_eq!(env.encode().unwrap_err().kind(), ErrorKind::NoSpace);
    }

    fn entry() -> MenuEntry<'static> {
        MenuEntry {
            name: "web",
            fs_module: "ext2",
            fs_uuid: "0b5e-uuid",
            kernel: "/boot/liverestore/web/vmlinuz",
            initrd: "/boot/liverestore/web/initrd.img",
            args: "rdinit=/lr/init root=/dev/dm-0 rw",
            standby: false,
        }
    }

    #[test]
    fn a_standby_block_counts_the_failed_boots_down() {
        let block = custom_block(&MenuEntry {
            standby: true,
            ..entry()
        });
        assert!(block.contains("menuentry 'liverestore web (standby)' --id liverestore-web {"));
        // commit's default first; then the standby's count
        let default = block.find("${liverestore_default}").unwrap();
        let standby = block
            .find(
                "elif [ \"${liverestore_standby}\" = \"liverestore-web\" -a -z \"${boot_once}\" ]",
            )
            .unwrap();
        assert!(default < standby);
        assert!(block.contains(
            "\tif [ \"${liverestore_tries}\" = \"0\" ]; then\n\t\tset default=\"liverestore-web\"\n"
        ));
        for n in 1..=MAX_STANDBY_TRIES {
            assert!(block.contains(&format!(
                "\telif [ \"${{liverestore_tries}}\" = \"{n}\" ]; then\n\t\tset liverestore_tries=\"{}\"\n\t\tsave_env liverestore_tries\n",
                n - 1
            )));
        }
        // a value it cannot count down from starts the standby
        assert!(block.contains("\telse\n\t\tset default=\"liverestore-web\"\n\tfi\nfi\n"));
        // balanced: every if has its fi
        let words: Vec<&str> = block.split_whitespace().collect();
        let count = |w: &str| words.iter().filter(|x| **x == w).count();
        assert_eq!(count("if"), count("fi"));
        assert!(!custom_block(&entry()).contains("liverestore_tries"));
    }

    #[test]
    fn tries_left_as_grub_reads_them() {
        let mut env = GrubEnv::new();
        assert_eq!(tries_left(&env), None);
        env.set(vars::STANDBY, "liverestore-web");
        assert_eq!(tries_left(&env), Some(0), "no count: the standby starts");
        env.set(vars::TRIES, "2");
        assert_eq!(tries_left(&env), Some(2));
        env.set(vars::TRIES, "12");
        assert_eq!(tries_left(&env), Some(0));
        env.set(vars::TRIES, "x");
        assert_eq!(tries_left(&env), Some(0));
    }

    #[test]
    fn custom_cfg_block_in_and_out() {
        let block = custom_block(&entry());
        assert!(
            block.contains("menuentry 'liverestore web (restored system)' --id liverestore-web {")
        );
        assert!(block.contains("search --no-floppy --fs-uuid --set=root 0b5e-uuid"));
        assert!(block.contains("linux '/boot/liverestore/web/vmlinuz' rdinit=/lr/init"));
        assert!(block.contains(
            "if [ \"${liverestore_default}\" = \"liverestore-web\" -a -z \"${boot_once}\" ]"
        ));
        let user = "menuentry 'mine' { true }";
        let with = with_block(user, "web", &block).unwrap();
        assert!(with.starts_with("menuentry 'mine' { true }\n### BEGIN liverestore web ###"));
        // replacing keeps one block
        let twice = with_block(&with, "web", &block).unwrap();
        assert_eq!(twice.matches("### BEGIN").count(), 1);
        // a block copied twice by hand: both go
        let doubled = format!("{with}{block}");
        assert_eq!(
            without_block(&doubled, "web").unwrap(),
            "menuentry 'mine' { true }\n"
        );
        // another staging's block is left alone
        let other = with_block(
            &with,
            "db",
            &custom_block(&MenuEntry {
                name: "db",
                ..entry()
            }),
        )
        .unwrap();
        let back = without_block(&other, "web").unwrap();
        assert!(back.contains("liverestore db") && !back.contains("liverestore web"));
        assert_eq!(
            without_block(&with, "web").unwrap(),
            "menuentry 'mine' { true }\n"
        );
        assert_eq!(without_block(user, "web").unwrap(), user);
        let broken = with.replace("### END liverestore web ###", "");
        assert_eq!(
            without_block(&broken, "web").unwrap_err().kind(),
            ErrorKind::Corrupt
        );
    }

    #[test]
    fn entry_ids_and_quoting() {
        assert_eq!(entry_id("web-1.x"), "liverestore-web_1_x");
        assert_eq!(quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn config_check() {
        let debian = "if [ -s $prefix/grubenv ]; then\n  load_env\nfi\nif [ \"${next_entry}\" ] ; then\n\
                      set default=\"${next_entry}\"\nfi\nif [ -f ${config_directory}/custom.cfg ]; then\n\
                      source ${config_directory}/custom.cfg\nfi\n";
        check_config(debian).unwrap();
        let e = check_config("menuentry x { }").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsupportedBootLoader);
        assert!(e.to_string().contains("load_env"), "{e}");
    }
}
