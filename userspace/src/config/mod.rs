//! Momentum's configuration language (`ecelerity-cluster.conf`) and the typed model built
//! from it. See `reference/momentum.md` §1–2 and the `duraplane { }` scope in docs/.
//!
//! Entry point: [`load`]. Everything else in the daemon reads [`Config`].
//! `check-config` uses [`check`] (errors *and* warnings) and [`render_effective`].
//! The grammar as implemented and every option are described in docs/configuration.md.

pub mod lexer;
pub mod model;
pub mod parser;
mod render;
mod suggest;
mod typed;
pub mod values;

pub use model::*;
pub use render::render_effective;
pub use typed::{
    CLUSTER_OPTIONS, DURAPLANE_OPTIONS, LISTENER_OPTIONS, NETBLOCK_OPTIONS, REPLICATE_OPTIONS,
    REPLICATE_PARAMETERS, SECURITY_OPTIONS, TOPOLOGY_OPTIONS,
};

use std::{
    fmt,
    path::{Path, PathBuf},
};

/// A problem found in a configuration file, at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u32,
    pub col: u32,
    pub message: String,
    /// "did you mean `view_mature_time`?" and the like.
    pub suggestion: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )?;
        if let Some(s) = &self.suggestion {
            write!(f, " ({s})")?;
        }
        Ok(())
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} error(s) in the configuration:\n{}", .0.len(), .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

/// A loaded, validated configuration and the warnings it produced (unknown Momentum options
/// Duraplane does not act on, and the like).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
}

/// The full outcome of checking a configuration: every error and warning, and the
/// configuration when there were no errors.
#[derive(Debug, Clone)]
pub struct Checked {
    pub config: Option<Config>,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
    /// Every file read (the top-level one first), with its read-only flag.
    pub files: Vec<parser::SourceFile>,
}

impl Checked {
    /// [`Loaded`] if there were no errors, else every error.
    pub fn into_result(self) -> Result<Loaded, ConfigError> {
        match self.config {
            Some(config) if self.errors.is_empty() => Ok(Loaded {
                config,
                warnings: self.warnings,
            }),
            _ => Err(ConfigError::Invalid(self.errors)),
        }
    }
}

/// Reads, includes, parses and validates `path`, collecting all errors and warnings.
/// Only an unreadable top-level file is an `Err`; everything else is in [`Checked`].
pub fn check(path: &Path) -> Result<Checked, ConfigError> {
    let text = std::fs::read(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(check_bytes(&text, path))
}

/// [`check`] on text already in memory, as if it had been read from `path` (includes are
/// resolved against `path`'s directory). Never panics, whatever the bytes.
pub fn check_bytes(text: &[u8], path: &Path) -> Checked {
    let (tree, mut errors) = parser::parse_bytes(text, path);
    let mut ctx = typed::Ctx::default();
    let config = typed::build(&tree.nodes, path.to_owned(), &mut ctx);
    errors.append(&mut ctx.errors);
    let mut warnings = ctx.warnings;
    // Report in reading order: by file (in the order files were read), line, column.
    let order = |d: &Diagnostic| {
        let f = tree
            .files
            .iter()
            .position(|f| f.path == d.file)
            .unwrap_or(usize::MAX);
        (f, d.line, d.col)
    };
    errors.sort_by_key(order);
    warnings.sort_by_key(order);
    Checked {
        config: errors.is_empty().then_some(config),
        errors,
        warnings,
        files: tree.files,
    }
}

/// Loads, includes, parses and validates `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    check(path)?.into_result()
}

/// [`load`] from a string (tests, `config` console commands); `path` names it in messages.
pub fn load_str(text: &str, path: &Path) -> Result<Loaded, ConfigError> {
    check_bytes(text.as_bytes(), path).into_result()
}
