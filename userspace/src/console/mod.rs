//! The control socket and its command registry: Momentum's `cluster …` console, spoken over
//! a Unix socket (protocol in docs/console.md).
//!
//! Capabilities add their commands to a shared [`Registry`] (longest word-prefix match,
//! case-insensitive command words) and their `cluster info` sections to an
//! [`InfoRegistry`]; both may be extended while the server is running.

pub mod client;
pub mod info;
pub mod protocol;
pub mod server;

pub use info::{InfoProvider, InfoRegistry, Membership, MembershipProvider};
pub use server::{ControlServer, ControlServerHandle, ControlSocketError};

use std::{
    fmt,
    sync::{Arc, RwLock, Weak},
};

/// A console command handler: gets the words after the matched prefix (original case), returns
/// the text to show or an error the client prints and exits non-zero on.
pub type Handler = Arc<dyn Fn(&[&str]) -> Result<String, ConsoleError> + Send + Sync>;

/// What a command can answer instead of output. The client shows the Display text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsoleError {
    /// No registered command matches; `suggestion` is the nearest registered command.
    #[error("{}", unknown_text(.command, .suggestion.as_deref()))]
    UnknownCommand {
        command: String,
        suggestion: Option<String>,
    },
    /// The request line could not be split into words (unbalanced quote).
    #[error("cannot parse the command: {reason}")]
    Parse { reason: String },
    /// Wrong arguments for a known command.
    #[error("usage: {usage}")]
    Usage { usage: String },
    /// The command ran and failed.
    #[error("{message}")]
    Failed { message: String },
}

fn unknown_text(command: &str, suggestion: Option<&str>) -> String {
    match suggestion {
        Some(s) => format!("Unknown command '{command}'. Did you mean '{s}'? Try 'cluster help'."),
        None => format!("Unknown command '{command}'. Try 'cluster help'."),
    }
}

/// Why a command could not be registered (a programming error in the registering capability).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("a console command needs at least one word")]
    Empty,
    #[error("console command word '{word}' is empty or contains whitespace")]
    BadWord { word: String },
    #[error("console command '{command}' is already registered")]
    Duplicate { command: String },
}

struct Command {
    /// Lower-case command words.
    words: Vec<String>,
    help: String,
    handler: Handler,
}

/// The set of console commands, shared by clone (an `Arc` inside).
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<RwLock<Vec<Command>>>,
}

/// A registry reference that does not keep it alive (for handlers that list commands).
#[derive(Clone)]
pub struct WeakRegistry(Weak<RwLock<Vec<Command>>>);

impl WeakRegistry {
    pub fn upgrade(&self) -> Option<Registry> {
        self.0.upgrade().map(|inner| Registry { inner })
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("commands", &self.commands())
            .finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn downgrade(&self) -> WeakRegistry {
        WeakRegistry(Arc::downgrade(&self.inner))
    }

    /// Registers `prefix` (e.g. `&["cluster", "duravip", "show"]`). `help` is a one-line
    /// description shown by `help` / `cluster help`. Command words match case-insensitively;
    /// the longest registered prefix of the request wins and its handler gets the rest.
    pub fn register(
        &self,
        prefix: &[&str],
        help: &str,
        handler: Handler,
    ) -> Result<(), RegisterError> {
        if prefix.is_empty() {
            return Err(RegisterError::Empty);
        }
        let mut words = Vec::with_capacity(prefix.len());
        for w in prefix {
            if w.is_empty() || w.chars().any(char::is_whitespace) {
                return Err(RegisterError::BadWord {
                    word: (*w).to_owned(),
                });
            }
            words.push(w.to_lowercase());
        }
        let mut cmds = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if cmds.iter().any(|c| c.words == words) {
            return Err(RegisterError::Duplicate {
                command: words.join(" "),
            });
        }
        cmds.push(Command {
            words,
            help: help.lines().next().unwrap_or("").trim().to_owned(),
            handler,
        });
        Ok(())
    }

    /// Every registered command and its one-line help, sorted by command.
    pub fn commands(&self) -> Vec<(String, String)> {
        let cmds = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, String)> = cmds
            .iter()
            .map(|c| (c.words.join(" "), c.help.clone()))
            .collect();
        out.sort();
        out
    }

    /// Runs one request line. An empty line answers with empty output.
    pub fn dispatch(&self, line: &str) -> Result<String, ConsoleError> {
        let tokens = tokenize(line)?;
        if tokens.is_empty() {
            return Ok(String::new());
        }
        let lowered: Vec<String> = tokens.iter().map(|t| t.to_lowercase()).collect();
        let found = {
            let cmds = self.inner.read().unwrap_or_else(|e| e.into_inner());
            cmds.iter()
                .filter(|c| {
                    c.words.len() <= lowered.len()
                        && c.words.iter().zip(&lowered).all(|(a, b)| a == b)
                })
                .max_by_key(|c| c.words.len())
                .map(|c| (c.words.len(), Arc::clone(&c.handler)))
        };
        match found {
            Some((n, handler)) => {
                let args: Vec<&str> = tokens[n..].iter().map(String::as_str).collect();
                handler(&args)
            }
            None => Err(ConsoleError::UnknownCommand {
                command: tokens.join(" "),
                suggestion: self.nearest(&lowered),
            }),
        }
    }

    /// The registered command closest (edit distance) to what was typed, if close enough.
    fn nearest(&self, typed: &[String]) -> Option<String> {
        let cmds = self.inner.read().unwrap_or_else(|e| e.into_inner());
        cmds.iter()
            .filter_map(|c| {
                let cand = c.words.join(" ");
                let n = c.words.len().min(typed.len());
                let input = typed[..n].join(" ");
                let d = levenshtein(&input, &cand);
                (d <= (cand.len() / 3).max(1)).then_some((d, cand))
            })
            .min()
            .map(|(_, c)| c)
    }
}

/// Splits a request into words: whitespace-separated, `"double quoted"` words may contain
/// spaces and `\"` / `\\` escapes.
pub fn tokenize(line: &str) -> Result<Vec<String>, ConsoleError> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { break };
        let mut word = String::new();
        if first == '"' {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some(e) => word.push(e),
                        None => break,
                    },
                    c => word.push(c),
                }
            }
            if !closed {
                return Err(ConsoleError::Parse {
                    reason: "unterminated quoted string".into(),
                });
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        out.push(word);
    }
    Ok(out)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(tag: &'static str) -> Handler {
        Arc::new(move |args: &[&str]| Ok(format!("{tag}:{}", args.join(","))))
    }

    #[test]
    fn longest_prefix_case_insensitive() {
        let r = Registry::new();
        r.register(&["cluster", "duravip"], "d", echo("d")).unwrap();
        r.register(&["cluster", "duravip", "show"], "s", echo("s"))
            .unwrap();
        assert_eq!(r.dispatch("CLUSTER DuraVIP show X").unwrap(), "s:X");
        assert_eq!(
            r.dispatch("cluster duravip move a b").unwrap(),
            "d:move,a,b"
        );
        assert_eq!(r.dispatch("   ").unwrap(), "");
    }

    #[test]
    fn duplicate_and_bad_words_rejected() {
        let r = Registry::new();
        r.register(&["version"], "v", echo("v")).unwrap();
        assert_eq!(
            r.register(&["Version"], "v", echo("v")),
            Err(RegisterError::Duplicate {
                command: "version".into()
            })
        );
        assert!(matches!(
            r.register(&["a b"], "", echo("x")),
            Err(RegisterError::BadWord { .. })
        ));
        assert_eq!(r.register(&[], "", echo("x")), Err(RegisterError::Empty));
    }

    #[test]
    fn unknown_command_suggests_nearest() {
        let r = Registry::new();
        r.register(&["cluster", "info"], "i", echo("i")).unwrap();
        r.register(&["cluster", "nodename"], "n", echo("n"))
            .unwrap();
        let e = r.dispatch("cluster inof").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Unknown command 'cluster inof'. Did you mean 'cluster info'? Try 'cluster help'."
        );
        let e = r.dispatch("frobnicate").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Unknown command 'frobnicate'. Try 'cluster help'."
        );
    }

    #[test]
    fn quoted_words() {
        assert_eq!(
            tokenize(r#"a "b c" "d\"e""#).unwrap(),
            vec!["a", "b c", "d\"e"]
        );
        assert!(tokenize("a \"b").is_err());
    }
}
