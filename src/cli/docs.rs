//! What is generated from the clap definitions, so that it cannot drift
//! from the program: shell completions (`liverestore completions SHELL`),
//! and (hidden, for `scripts/package.sh`) one man page per command and
//! the command reference `docs/commands.md`. A unit test fails when the
//! committed `docs/commands.md` differs from what the code generates.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use serde::Serialize;

use super::output::Report;
use super::{Cli, Context};
use crate::error::{Error, Result};

/// Print the shell completion script for SHELL.
///
/// SHELL is bash, zsh, fish, elvish or powershell.
///
///   liverestore completions bash > /etc/bash_completion.d/liverestore
///
/// The Debian package installs them for bash, zsh and fish already.
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct CompletionsArgs {
    shell: clap_complete::Shell,
}

#[derive(Debug, Serialize)]
pub struct Completions {
    pub shell: String,
    pub script: String,
}

impl CompletionsArgs {
    pub fn run(self, _cx: &Context) -> Result<Completions> {
        let mut out = Vec::new();
        clap_complete::generate(self.shell, &mut Cli::command(), "liverestore", &mut out);
        Ok(Completions {
            shell: self.shell.to_string(),
            script: String::from_utf8_lossy(&out).into_owned(),
        })
    }
}

impl Report for Completions {
    fn print_text(&self) {
        print!("{}", self.script);
    }
}

/// (internal, for packaging) Write a man page per command into
/// --man DIR (section 8) and the command reference into --markdown FILE.
#[derive(clap::Args, Debug)]
pub struct GenerateDocsArgs {
    #[arg(long, value_name = "DIR")]
    man: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct GeneratedDocs {
    pub files: Vec<PathBuf>,
}

impl GenerateDocsArgs {
    pub fn run(self, _cx: &Context) -> Result<GeneratedDocs> {
        let mut files = Vec::new();
        if let Some(dir) = &self.man {
            files.extend(man_pages(dir)?);
        }
        if let Some(path) = &self.markdown {
            write(path, markdown_reference().as_bytes())?;
            files.push(path.clone());
        }
        Ok(GeneratedDocs { files })
    }
}

impl Report for GeneratedDocs {
    fn print_text(&self) {
        for f in &self.files {
            println!("{}", f.display());
        }
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io("write a generated file", e).with_path(path))
}

/// The visible subcommands, in the order `--help` lists them.
fn commands() -> Vec<clap::Command> {
    Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .cloned()
        .collect()
}

/// `liverestore.8` and `liverestore-COMMAND.8` for every visible command.
fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io("create the man page directory", e).with_path(dir))?;
    let version = env!("CARGO_PKG_VERSION");
    let mut pages = vec![("liverestore".to_string(), Cli::command())];
    for sub in commands() {
        let name = format!("liverestore-{}", sub.get_name());
        pages.push((name.clone(), sub.name(name).version(version)));
    }
    let mut files = Vec::new();
    for (name, cmd) in pages {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd)
            .section("8")
            .manual("liverestore")
            .render(&mut out)
            .map_err(|e| Error::io("render a man page", e))?;
        let path = dir.join(format!("{name}.8"));
        write(&path, &out)?;
        files.push(path);
    }
    Ok(files)
}

/// `docs/commands.md`: every command's `--help`, as the program prints it.
pub fn markdown_reference() -> String {
    let mut md = String::from(
        "# Command reference\n\n\
         Generated from the program's own help (`liverestore generate-docs \
         --markdown docs/commands.md`; a unit test fails when this file is \
         stale). The JSON every command prints with `--json` is described in \
         [json-output.md](json-output.md).\n\n",
    );
    let mut top = Cli::command();
    md.push_str(&format!(
        "## liverestore\n\n```text\n{}\n```\n\n",
        top.render_long_help().to_string().trim_end()
    ));
    for sub in commands() {
        let name = format!("liverestore {}", sub.get_name());
        let mut sub = sub.bin_name(&name);
        md.push_str(&format!(
            "## {name}\n\n```text\n{}\n```\n\n",
            sub.render_long_help().to_string().trim_end()
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_command_reference_is_what_the_code_generates() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/commands.md");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == markdown_reference(),
            "docs/commands.md is stale: run `cargo run -- generate-docs --markdown docs/commands.md`"
        );
    }

    #[test]
    fn man_pages_and_completions_are_generated() {
        let t = tempfile::tempdir().unwrap();
        let files = man_pages(t.path()).unwrap();
        assert_eq!(files.len(), commands().len() + 1);
        let stage = std::fs::read_to_string(t.path().join("liverestore-stage.8")).unwrap();
        assert!(stage.contains(".TH liverestore-stage 8"), "{stage}");
        assert!(stage.contains("\\-\\-resume"), "{stage}");
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "liverestore", &mut out);
            assert!(
                String::from_utf8(out).unwrap().contains("test-restore"),
                "{shell}"
            );
        }
    }
}
