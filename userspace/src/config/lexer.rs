//! Tokens of Momentum's configuration language (reference/momentum.md §2.1).
//!
//! The lexer works on bytes so that arbitrary input (invalid UTF-8, NULs, binary junk) can
//! never make it panic: every byte is consumed exactly once and problems become
//! diagnostics, not failures. Newlines are not tokens — "whitespace is unimportant" — but
//! every token keeps its line and column for messages and error recovery.

use std::{path::PathBuf, sync::Arc};

use super::Diagnostic;

/// A position in a configuration file: 1-based line and column (columns count characters,
/// not bytes, so they match what an editor shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pos {
    pub file: Arc<PathBuf>,
    pub line: u32,
    pub col: u32,
}

impl Pos {
    /// A diagnostic at this position.
    pub fn diag(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.file.as_ref().clone(),
            line: self.line,
            col: self.col,
            message: message.into(),
            suggestion: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// A bare word: `ec_cluster`, `192.0.2.1`, `/var/log/x`, `-1`.
    Word(String),
    /// A double-quoted string, escapes already resolved.
    Str(String),
    Eq,
    LBrace,
    RBrace,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
}

impl Tok {
    /// How the token reads in a message.
    pub fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Str(s) => format!("\"{s}\""),
            Tok::Eq => "`=`".into(),
            Tok::LBrace => "`{`".into(),
            Tok::RBrace => "`}`".into(),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::Comma => "`,`".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    pub pos: Pos,
}

/// Characters that end a bare word (the quoting rule of §2.1, minus `/`, which documented
/// examples use unquoted in paths; `,` separates list items).
fn is_delim(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t'
            | b'\r'
            | b'\n'
            | 0x0b
            | 0x0c
            | b'#'
            | b'"'
            | b'\''
            | b'='
            | b'{'
            | b'}'
            | b'['
            | b']'
            | b'('
            | b')'
            | b','
    )
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c)
}

struct Cursor<'a> {
    src: &'a [u8],
    i: usize,
    line: u32,
    col: u32,
    file: Arc<PathBuf>,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.get(self.i).copied()
    }
    fn peek2(&self) -> Option<u8> {
        self.src.get(self.i + 1).copied()
    }
    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        if b == b'\n' {
            self.line = self.line.saturating_add(1);
            self.col = 1;
        } else if b & 0xC0 != 0x80 {
            // Count UTF-8 lead bytes (and ASCII) only: one column per character.
            self.col = self.col.saturating_add(1);
        }
        Some(b)
    }
    fn pos(&self) -> Pos {
        Pos {
            file: self.file.clone(),
            line: self.line,
            col: self.col,
        }
    }
}

fn utf8(bytes: Vec<u8>, pos: &Pos, what: &str, diags: &mut Vec<Diagnostic>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            diags.push(pos.diag(format!("invalid UTF-8 in {what}")));
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        }
    }
}

/// Splits `src` into tokens; lexical errors are appended to `diags` and lexing continues.
pub fn lex(src: &[u8], file: &Arc<PathBuf>, diags: &mut Vec<Diagnostic>) -> Vec<Token> {
    let mut c = Cursor {
        src,
        i: 0,
        line: 1,
        col: 1,
        file: file.clone(),
    };
    let mut out = Vec::new();
    while let Some(b) = c.peek() {
        if is_space(b) {
            c.bump();
            continue;
        }
        let pos = c.pos();
        match b {
            b'#' => {
                while let Some(b) = c.peek() {
                    if b == b'\n' {
                        break;
                    }
                    c.bump();
                }
            }
            b'/' if c.peek2() == Some(b'*') => skip_block_comment(&mut c, &pos, diags),
            b'"' => {
                c.bump();
                let s = lex_string(&mut c, &pos, diags);
                out.push(Token {
                    tok: Tok::Str(s),
                    pos,
                });
            }
            b'\'' => {
                c.bump();
                diags.push(pos.diag(
                    "single quotes are not part of the configuration language; use double quotes",
                ));
            }
            b'=' | b'{' | b'}' | b'(' | b')' | b'[' | b']' | b',' => {
                c.bump();
                let tok = match b {
                    b'=' => Tok::Eq,
                    b'{' => Tok::LBrace,
                    b'}' => Tok::RBrace,
                    b'(' => Tok::LParen,
                    b')' => Tok::RParen,
                    b'[' => Tok::LBracket,
                    b']' => Tok::RBracket,
                    _ => Tok::Comma,
                };
                out.push(Token { tok, pos });
            }
            _ => {
                let mut bytes = Vec::new();
                let mut bad_control = false;
                while let Some(b) = c.peek() {
                    if is_delim(b) || (b == b'/' && c.peek2() == Some(b'*')) {
                        break;
                    }
                    if b < 0x20 || b == 0x7f {
                        bad_control = true;
                    }
                    bytes.push(b);
                    c.bump();
                }
                if bad_control {
                    diags.push(pos.diag("control character in a bare word; quote the value"));
                }
                let w = utf8(bytes, &pos, "a bare word", diags);
                out.push(Token {
                    tok: Tok::Word(w),
                    pos,
                });
            }
        }
    }
    out
}

/// `/* … */`, not nesting: the first `*/` ends it.
fn skip_block_comment(c: &mut Cursor<'_>, start: &Pos, diags: &mut Vec<Diagnostic>) {
    c.bump();
    c.bump();
    loop {
        match c.peek() {
            None => {
                diags.push(start.diag("unterminated `/*` comment"));
                return;
            }
            Some(b'*') if c.peek2() == Some(b'/') => {
                c.bump();
                c.bump();
                return;
            }
            Some(_) => {
                c.bump();
            }
        }
    }
}

/// The body of a `"…"` string after its opening quote. `\"` and `\\` are escapes; any
/// other backslash is kept literally (regexes and Windows-ish paths stay as written). A
/// string may not span lines: an unterminated one is reported at its opening quote and
/// ends at the end of the line, so the rest of the file still parses.
fn lex_string(c: &mut Cursor<'_>, start: &Pos, diags: &mut Vec<Diagnostic>) -> String {
    let mut bytes = Vec::new();
    loop {
        match c.peek() {
            None | Some(b'\n') => {
                diags.push(start.diag("unterminated string (a closing `\"` is missing)"));
                break;
            }
            Some(b'"') => {
                c.bump();
                break;
            }
            Some(b'\\') if matches!(c.peek2(), Some(b'"') | Some(b'\\')) => {
                c.bump();
                if let Some(b) = c.bump() {
                    bytes.push(b);
                }
            }
            Some(b) => {
                bytes.push(b);
                c.bump();
            }
        }
    }
    utf8(bytes, start, "a quoted string", diags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> (Vec<Tok>, Vec<Diagnostic>) {
        let mut d = Vec::new();
        let f = Arc::new(PathBuf::from("t.conf"));
        let t = lex(s.as_bytes(), &f, &mut d);
        (t.into_iter().map(|t| t.tok).collect(), d)
    }

    fn w(s: &str) -> Tok {
        Tok::Word(s.into())
    }

    #[test]
    fn words_strings_and_punctuation() {
        let (t, d) = toks(r#"a = "b c" ( x, y ) [ k = v ] { }"#);
        assert!(d.is_empty());
        assert_eq!(
            t,
            vec![
                w("a"),
                Tok::Eq,
                Tok::Str("b c".into()),
                Tok::LParen,
                w("x"),
                Tok::Comma,
                w("y"),
                Tok::RParen,
                Tok::LBracket,
                w("k"),
                Tok::Eq,
                w("v"),
                Tok::RBracket,
                Tok::LBrace,
                Tok::RBrace
            ]
        );
    }

    #[test]
    fn comments_hash_and_c_style_do_not_nest() {
        let (t, d) = toks("a # c\n/* x /* y */ b */ c");
        assert!(d.is_empty());
        assert_eq!(t, vec![w("a"), w("b"), w("*/"), w("c")]);
    }

    #[test]
    fn slash_in_bare_word_but_slash_star_starts_comment() {
        let (t, d) = toks("p = /var/log/x/* c */ q");
        assert!(d.is_empty());
        assert_eq!(t, vec![w("p"), Tok::Eq, w("/var/log/x"), w("q")]);
    }

    #[test]
    fn escapes() {
        let (t, d) = toks(r#""a\"b\\c\d""#);
        assert!(d.is_empty());
        assert_eq!(t, vec![Tok::Str(r#"a"b\c\d"#.into())]);
    }

    #[test]
    fn positions_count_characters() {
        let mut d = Vec::new();
        let f = Arc::new(PathBuf::from("t.conf"));
        let t = lex("x = \"é\" y\n  z".as_bytes(), &f, &mut d);
        let p: Vec<(u32, u32)> = t.iter().map(|t| (t.pos.line, t.pos.col)).collect();
        assert_eq!(p, vec![(1, 1), (1, 3), (1, 5), (1, 9), (2, 3)]);
    }

    #[test]
    fn unterminated_things_are_reported_at_their_start() {
        let (_, d) = toks("a = \"abc\nb /* never");
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].line, d[0].col), (1, 5));
        assert!(d[0].message.contains("unterminated string"));
        assert_eq!((d[1].line, d[1].col), (2, 3));
        assert!(d[1].message.contains("unterminated `/*`"));
    }

    #[test]
    fn invalid_utf8_and_single_quotes() {
        let mut d = Vec::new();
        let f = Arc::new(PathBuf::from("t.conf"));
        let t = lex(b"a\xff\xfe 'x'", &f, &mut d);
        assert_eq!(t.len(), 2);
        assert!(d.iter().any(|d| d.message.contains("invalid UTF-8")));
        assert!(d.iter().any(|d| d.message.contains("single quotes")));
    }
}
