//! The syntax tree of a configuration file, with `include` / `readonly_include` already
//! spliced in (reference/momentum.md §2.2–2.3, grammar in docs/configuration.md).
//!
//! The parser is a recursive descent over the token vector that never panics: every error
//! becomes a diagnostic, recovery always consumes at least one token, and nesting deeper
//! than [`MAX_DEPTH`] is refused (and skipped iteratively), so arbitrary bytes terminate in
//! linear time with bounded stack.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    Diagnostic,
    lexer::{Pos, Tok, Token, lex},
};

/// Deepest nesting of scopes, lists and dictionaries (together) that is accepted.
pub const MAX_DEPTH: usize = 64;
/// Deepest chain of includes that is accepted (loops are caught before this).
pub const MAX_INCLUDE_DEPTH: usize = 32;
/// After this many errors the rest of the input is not examined.
pub const MAX_ERRORS: usize = 500;

/// A name with the position where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned {
    pub text: String,
    pub pos: Pos,
}

impl Spanned {
    /// Keywords and option names are case-insensitive (§2.1).
    pub fn is(&self, name: &str) -> bool {
        self.text.eq_ignore_ascii_case(name)
    }
    pub fn lower(&self) -> String {
        self.text.to_ascii_lowercase()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    /// `word` or `"string"`.
    Scalar { text: String, quoted: bool },
    /// `( a b, c )`.
    List(Vec<Value>),
    /// `[ k = v … ]`.
    Dict(Vec<(Spanned, Value)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub kind: ValueKind,
    pub pos: Pos,
}

impl Value {
    /// The value as it could be written back.
    pub fn describe(&self) -> String {
        match &self.kind {
            ValueKind::Scalar { text, .. } => format!("`{text}`"),
            ValueKind::List(_) => "a list `( … )`".into(),
            ValueKind::Dict(_) => "a dictionary `[ … ]`".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub keyword: Spanned,
    /// `Keyword "name" { }` / `Keyword name { }`; instance names are case-sensitive.
    pub name: Option<Spanned>,
    pub body: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Assign { key: Spanned, value: Value },
    Scope(Scope),
}

/// A file that contributed to the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    /// Loaded through `readonly_include`, or included more than once (§2.3).
    pub readonly: bool,
}

/// The parsed tree of a file and everything it includes.
#[derive(Debug, Clone)]
pub struct Tree {
    pub nodes: Vec<Node>,
    pub files: Vec<SourceFile>,
}

/// Parses `text` as if it were the file `path` (includes are resolved against its
/// directory). Returns the tree and all syntax errors.
pub fn parse_bytes(text: &[u8], path: &Path) -> (Tree, Vec<Diagnostic>) {
    let mut loader = Loader {
        stack: vec![canonical(path)],
        files: vec![SourceFile {
            path: path.to_owned(),
            readonly: false,
        }],
        errors: Vec::new(),
    };
    let nodes = loader.parse_text(text, path, 0);
    (
        Tree {
            nodes,
            files: loader.files,
        },
        loader.errors,
    )
}

/// Reads and parses `path`; only failure to read the top-level file is an `Err`.
pub fn parse_file(path: &Path) -> Result<(Tree, Vec<Diagnostic>), std::io::Error> {
    let text = fs::read(path)?;
    Ok(parse_bytes(&text, path))
}

fn canonical(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_owned())
}

struct Loader {
    /// Canonical paths of the files currently being parsed (include chain).
    stack: Vec<PathBuf>,
    files: Vec<SourceFile>,
    errors: Vec<Diagnostic>,
}

impl Loader {
    fn error(&mut self, d: Diagnostic) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(d);
        }
    }

    fn full(&self) -> bool {
        self.errors.len() >= MAX_ERRORS
    }

    fn parse_text(&mut self, text: &[u8], path: &Path, depth: usize) -> Vec<Node> {
        let file = Arc::new(path.to_owned());
        let mut lex_errors = Vec::new();
        let toks = lex(text, &file, &mut lex_errors);
        for d in lex_errors {
            self.error(d);
        }
        let mut p = Parser {
            toks: &toks,
            i: 0,
            loader: self,
            file,
        };
        p.items(depth, None)
    }

    /// `include` / `readonly_include`: a file, or a directory's regular, non-hidden files
    /// in lexical order; relative paths are resolved against the including file's directory.
    fn include(
        &mut self,
        target: &Spanned,
        readonly: bool,
        including: &Path,
        depth: usize,
    ) -> Vec<Node> {
        let mut raw = target.text.as_str();
        if let Some(rest) = raw.strip_prefix("file://") {
            raw = rest;
        } else if raw.contains("://") {
            self.error(target.pos.diag(format!(
                "cannot include `{raw}`: only local files (or file:// URIs) can be included"
            )));
            return Vec::new();
        }
        if raw.is_empty() {
            self.error(target.pos.diag("include of an empty path"));
            return Vec::new();
        }
        let mut path = PathBuf::from(raw);
        if path.is_relative()
            && let Some(dir) = including.parent()
        {
            path = dir.join(path);
        }
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                self.error(
                    target
                        .pos
                        .diag(format!("cannot include `{raw}` ({}): {e}", path.display())),
                );
                return Vec::new();
            }
        };
        if meta.is_dir() {
            let entries = match fs::read_dir(&path) {
                Ok(rd) => rd,
                Err(e) => {
                    self.error(target.pos.diag(format!(
                        "cannot read directory `{raw}` ({}): {e}",
                        path.display()
                    )));
                    return Vec::new();
                }
            };
            let mut names: Vec<_> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .filter(|n| !n.as_encoded_bytes().starts_with(b"."))
                .collect();
            names.sort();
            let mut out = Vec::new();
            for n in names {
                let f = path.join(&n);
                // Sub-directories are not processed (§2.3).
                if fs::metadata(&f).map(|m| m.is_file()).unwrap_or(false) {
                    out.extend(self.include_file(&f, target, readonly, depth));
                }
            }
            out
        } else {
            self.include_file(&path, target, readonly, depth)
        }
    }

    fn include_file(
        &mut self,
        path: &Path,
        target: &Spanned,
        readonly: bool,
        depth: usize,
    ) -> Vec<Node> {
        let canon = canonical(path);
        if self.stack.contains(&canon) {
            let mut chain: Vec<String> =
                self.stack.iter().map(|p| p.display().to_string()).collect();
            chain.push(canon.display().to_string());
            self.error(
                target
                    .pos
                    .diag(format!("include loop: {}", chain.join(" -> "))),
            );
            return Vec::new();
        }
        if self.stack.len() > MAX_INCLUDE_DEPTH {
            self.error(target.pos.diag(format!(
                "includes nested more than {MAX_INCLUDE_DEPTH} deep"
            )));
            return Vec::new();
        }
        let text = match fs::read(path) {
            Ok(t) => t,
            Err(e) => {
                self.error(
                    target
                        .pos
                        .diag(format!("cannot include `{}`: {e}", path.display())),
                );
                return Vec::new();
            }
        };
        // Files included more than once are read-only, like readonly_include ones.
        let seen = self.files.iter().any(|f| canonical(&f.path) == canon);
        if seen {
            for f in self.files.iter_mut() {
                if canonical(&f.path) == canon {
                    f.readonly = true;
                }
            }
        }
        self.files.push(SourceFile {
            path: path.to_owned(),
            readonly: readonly || seen,
        });
        self.stack.push(canon);
        let nodes = self.parse_text(&text, path, depth);
        self.stack.pop();
        nodes
    }
}

struct Parser<'a> {
    toks: &'a [Token],
    i: usize,
    loader: &'a mut Loader,
    file: Arc<PathBuf>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.i)
    }
    fn peek_at(&self, n: usize) -> Option<&Tok> {
        self.toks.get(self.i + n).map(|t| &t.tok)
    }
    fn eof_pos(&self) -> Pos {
        match self.toks.last() {
            Some(t) => t.pos.clone(),
            None => Pos {
                file: self.file.clone(),
                line: 1,
                col: 1,
            },
        }
    }

    /// Skips to a plausible start of the next item: at least one token, then up to the next
    /// word that begins a line at the same bracket level, or a `}` closing the current scope.
    fn recover(&mut self) {
        let mut last_line = match self.peek() {
            Some(t) => t.pos.line,
            None => return,
        };
        self.i += 1;
        let mut balance = 0usize;
        while let Some(t) = self.peek() {
            match t.tok {
                Tok::LBrace | Tok::LParen | Tok::LBracket => balance += 1,
                Tok::RBrace if balance == 0 => return,
                Tok::RBrace | Tok::RParen | Tok::RBracket => balance = balance.saturating_sub(1),
                Tok::Word(_) if balance == 0 && t.pos.line > last_line => return,
                _ => {}
            }
            last_line = t.pos.line;
            self.i += 1;
        }
    }

    /// Skips a bracketed construct whose opener is at `self.i`, without recursion.
    fn skip_balanced(&mut self) {
        let mut balance = 0usize;
        while let Some(t) = self.peek() {
            match t.tok {
                Tok::LBrace | Tok::LParen | Tok::LBracket => balance += 1,
                Tok::RBrace | Tok::RParen | Tok::RBracket => {
                    balance = balance.saturating_sub(1);
                    if balance == 0 {
                        self.i += 1;
                        return;
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
    }

    fn too_deep(&mut self, pos: &Pos) {
        self.loader.error(pos.diag(format!(
            "nesting deeper than {MAX_DEPTH} levels (scopes, lists and dictionaries)"
        )));
        self.skip_balanced();
    }

    /// Items until end of input, or until the `}` closing the scope opened at `open`.
    fn items(&mut self, depth: usize, open: Option<&Pos>) -> Vec<Node> {
        let mut nodes = Vec::new();
        loop {
            if self.loader.full() {
                self.i = self.toks.len();
            }
            let Some(t) = self.peek() else {
                if let Some(o) = open {
                    self.loader
                        .error(o.diag("unclosed `{` (the closing `}` is missing)"));
                }
                return nodes;
            };
            let pos = t.pos.clone();
            match &t.tok {
                Tok::RBrace => {
                    self.i += 1;
                    if open.is_some() {
                        return nodes;
                    }
                    self.loader
                        .error(pos.diag("unexpected `}` (no scope is open)"));
                }
                Tok::Word(w) => {
                    let key = Spanned {
                        text: w.clone(),
                        pos,
                    };
                    self.item(key, depth, &mut nodes);
                }
                Tok::Str(s) => {
                    let msg = format!(
                        "expected an option or scope keyword, found the quoted string \"{s}\""
                    );
                    self.loader.error(pos.diag(msg));
                    self.recover();
                }
                other => {
                    let msg = format!(
                        "expected an option or scope keyword, found {}",
                        other.describe()
                    );
                    self.loader.error(pos.diag(msg));
                    self.recover();
                }
            }
        }
    }

    /// One item starting with the word `key` (not yet consumed).
    fn item(&mut self, key: Spanned, depth: usize, nodes: &mut Vec<Node>) {
        let is_include = key.is("include") || key.is("readonly_include");
        match (self.peek_at(1), self.peek_at(2)) {
            (Some(Tok::Str(t) | Tok::Word(t)), next)
                if is_include && next != Some(&Tok::LBrace) =>
            {
                let target = Spanned {
                    text: t.clone(),
                    pos: self.toks[self.i + 1].pos.clone(),
                };
                self.i += 2;
                let readonly = key.is("readonly_include");
                let including = self.file.clone();
                let included = self.loader.include(&target, readonly, &including, depth);
                nodes.extend(included);
            }
            (Some(Tok::Eq), _) if is_include => {
                let at = self.toks[self.i + 1].pos.clone();
                let msg = format!(
                    "`{}` takes a path without `=`: `{} \"file\"`",
                    key.text, key.text
                );
                self.loader.error(at.diag(msg));
                self.recover();
            }
            (Some(Tok::Eq), _) => {
                self.i += 2;
                if let Some(value) = self.value(depth, &key) {
                    nodes.push(Node::Assign { key, value });
                }
            }
            (Some(Tok::LBrace), _) => {
                let open = self.toks[self.i + 1].pos.clone();
                self.i += 1;
                if let Some(body) = self.body(depth, &open) {
                    nodes.push(Node::Scope(Scope {
                        keyword: key,
                        name: None,
                        body,
                    }));
                }
            }
            (Some(Tok::Str(n) | Tok::Word(n)), Some(Tok::LBrace)) => {
                let name = Spanned {
                    text: n.clone(),
                    pos: self.toks[self.i + 1].pos.clone(),
                };
                let open = self.toks[self.i + 2].pos.clone();
                self.i += 2;
                if let Some(body) = self.body(depth, &open) {
                    nodes.push(Node::Scope(Scope {
                        keyword: key,
                        name: Some(name),
                        body,
                    }));
                }
            }
            (Some(Tok::Str(_) | Tok::Word(_)), _) if !is_include => {
                let at = self.toks[self.i + 1].pos.clone();
                let msg = format!(
                    "expected `=` after `{}` (or `{{` to open a scope); \
                     `key value` without `=` is not accepted in files",
                    key.text
                );
                self.loader.error(at.diag(msg));
                self.recover();
            }
            (Some(other), _) => {
                let at = self.toks[self.i + 1].pos.clone();
                let msg = if is_include {
                    format!("`{}` needs a path, found {}", key.text, other.describe())
                } else {
                    format!(
                        "expected `=` or `{{` after `{}`, found {}",
                        key.text,
                        other.describe()
                    )
                };
                self.loader.error(at.diag(msg));
                self.recover();
            }
            (None, _) => {
                let msg = if is_include {
                    format!("`{}` needs a path", key.text)
                } else {
                    format!(
                        "`{}` at the end of the file: expected `=` or `{{`",
                        key.text
                    )
                };
                self.loader.error(key.pos.diag(msg));
                self.i += 1;
            }
        }
    }

    /// A scope body; `self.i` is at the `{`.
    fn body(&mut self, depth: usize, open: &Pos) -> Option<Vec<Node>> {
        if depth + 1 > MAX_DEPTH {
            self.too_deep(open);
            return None;
        }
        self.i += 1;
        Some(self.items(depth + 1, Some(open)))
    }

    /// A value after `key =`.
    fn value(&mut self, depth: usize, key: &Spanned) -> Option<Value> {
        let Some(t) = self.peek() else {
            self.loader.error(
                self.eof_pos()
                    .diag(format!("expected a value for `{}`", key.text)),
            );
            return None;
        };
        let pos = t.pos.clone();
        match &t.tok {
            Tok::Word(w) | Tok::Str(w) => {
                let quoted = matches!(t.tok, Tok::Str(_));
                let text = w.clone();
                self.i += 1;
                Some(Value {
                    kind: ValueKind::Scalar { text, quoted },
                    pos,
                })
            }
            Tok::LParen => {
                if depth + 1 > MAX_DEPTH {
                    self.too_deep(&pos);
                    return None;
                }
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    match self.peek().map(|t| &t.tok) {
                        None => {
                            self.loader
                                .error(pos.diag("unclosed `(` (the closing `)` is missing)"));
                            return None;
                        }
                        Some(Tok::RParen) => {
                            self.i += 1;
                            break;
                        }
                        Some(Tok::Comma) => self.i += 1,
                        Some(Tok::Word(_) | Tok::Str(_) | Tok::LParen | Tok::LBracket) => {
                            items.push(self.value(depth + 1, key)?);
                        }
                        Some(other) => {
                            let at = self.toks[self.i].pos.clone();
                            let msg = format!(
                                "expected a list item or `)` in the list of `{}`, found {} \
                                 (the list opened at {}:{} is not closed)",
                                key.text,
                                other.describe(),
                                pos.line,
                                pos.col
                            );
                            self.loader.error(at.diag(msg));
                            return None;
                        }
                    }
                }
                Some(Value {
                    kind: ValueKind::List(items),
                    pos,
                })
            }
            Tok::LBracket => {
                if depth + 1 > MAX_DEPTH {
                    self.too_deep(&pos);
                    return None;
                }
                self.i += 1;
                let mut entries = Vec::new();
                loop {
                    let Some(t) = self.peek() else {
                        self.loader
                            .error(pos.diag("unclosed `[` (the closing `]` is missing)"));
                        return None;
                    };
                    let at = t.pos.clone();
                    match &t.tok {
                        Tok::RBracket => {
                            self.i += 1;
                            break;
                        }
                        Tok::Comma => self.i += 1,
                        Tok::Word(k) | Tok::Str(k) => {
                            let k = Spanned {
                                text: k.clone(),
                                pos: at.clone(),
                            };
                            if self.peek_at(1) != Some(&Tok::Eq) {
                                let msg = format!(
                                    "expected `=` after the dictionary key `{}` in `{}`",
                                    k.text, key.text
                                );
                                self.loader.error(at.diag(msg));
                                return None;
                            }
                            self.i += 2;
                            let v = self.value(depth + 1, &k)?;
                            entries.push((k, v));
                        }
                        other => {
                            let msg = format!(
                                "expected a dictionary key or `]` in `{}`, found {} \
                                 (the dictionary opened at {}:{} is not closed)",
                                key.text,
                                other.describe(),
                                pos.line,
                                pos.col
                            );
                            self.loader.error(at.diag(msg));
                            return None;
                        }
                    }
                }
                Some(Value {
                    kind: ValueKind::Dict(entries),
                    pos,
                })
            }
            other => {
                let msg = format!(
                    "expected a value for `{}`, found {}",
                    key.text,
                    other.describe()
                );
                self.loader.error(pos.diag(msg));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> (Vec<Node>, Vec<Diagnostic>) {
        let (t, d) = parse_bytes(s.as_bytes(), Path::new("/nonexistent/t.conf"));
        (t.nodes, d)
    }

    fn scalar(v: &Value) -> &str {
        match &v.kind {
            ValueKind::Scalar { text, .. } => text,
            _ => panic!("not a scalar"),
        }
    }

    #[test]
    fn assignment_scope_named_scope() {
        let (n, d) = parse("a = 1\ncluster { Replicate \"x\" {} Topology y\n{ cidrmask = 32 } }");
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(n.len(), 2);
        let Node::Scope(s) = &n[1] else { panic!() };
        assert!(s.keyword.is("CLUSTER"));
        assert_eq!(s.body.len(), 2);
        let Node::Scope(t) = &s.body[1] else { panic!() };
        assert_eq!(t.name.as_ref().unwrap().text, "y");
        let Node::Assign { value, .. } = &t.body[0] else {
            panic!()
        };
        assert_eq!(scalar(value), "32");
    }

    #[test]
    fn lists_and_dicts() {
        let (n, d) = parse("l = ( a, \"b c\"\n d ) e = () m = [ k = v, \"q\" = 1 100 = x ]");
        assert!(d.is_empty(), "{d:?}");
        let Node::Assign { value, .. } = &n[0] else {
            panic!()
        };
        let ValueKind::List(items) = &value.kind else {
            panic!()
        };
        assert_eq!(items.len(), 3);
        let Node::Assign { value, .. } = &n[1] else {
            panic!()
        };
        assert_eq!(value.kind, ValueKind::List(vec![]));
        let Node::Assign { value, .. } = &n[2] else {
            panic!()
        };
        let ValueKind::Dict(e) = &value.kind else {
            panic!()
        };
        assert_eq!(e.len(), 3);
        assert_eq!(e[2].0.text, "100");
    }

    #[test]
    fn errors_are_collected_and_parsing_continues() {
        let (n, d) = parse("a b\nc = 1\n} d = (\n");
        assert_eq!(d.len(), 3, "{d:?}");
        assert_eq!((d[0].line, d[0].col), (1, 3));
        assert!(d[1].message.contains("unexpected `}`"));
        assert!(d[2].message.contains("unclosed `(`"));
        assert_eq!(n.len(), 1);
    }

    #[test]
    fn unclosed_scope_reported_at_brace() {
        let (_, d) = parse("x {\n a = 1\n");
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].line, d[0].col), (1, 3));
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let s = "a { ".repeat(10_000);
        let (_, d) = parse(&s);
        assert!(d.iter().any(|d| d.message.contains("nesting deeper")));
        let s = format!("a = {}", "(".repeat(100_000));
        let (_, d) = parse(&s);
        assert!(d.iter().any(|d| d.message.contains("nesting deeper")));
    }

    #[test]
    fn missing_include_is_reported_at_the_include() {
        let (_, d) = parse("\n  include \"nope.conf\"");
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].line, d[0].col), (2, 11));
        assert!(d[0].message.contains("cannot include `nope.conf`"));
    }
}
