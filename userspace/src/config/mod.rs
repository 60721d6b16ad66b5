//! Momentum's configuration language (`ecelerity-cluster.conf`) and the typed model built
//! from it. See `reference/momentum.md` §1–2 and the `duraplane { }` scope in docs/.
//!
//! Entry point: [`load`]. Everything else in the daemon reads [`Config`].

pub mod model;

pub use model::*;

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

/// Loads, includes, parses and validates `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    Err(ConfigError::Invalid(vec![Diagnostic {
        file: path.to_owned(),
        line: 1,
        col: 1,
        message: "the configuration parser is not implemented yet".into(),
        suggestion: None,
    }]))
}
