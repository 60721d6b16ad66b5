//! The parser and model builder never panic and always terminate, whatever the input:
//! arbitrary bytes, random soups of the language's own tokens, and deep nesting.

use std::path::Path;

use duraplane::config::{check_bytes, load_str, render_effective};
use proptest::prelude::*;

const TOKENS: &[&str] = &[
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    "=",
    ",",
    "\"",
    "#",
    "/*",
    "*/",
    "\n",
    " ",
    "\\",
    "'",
    "cluster",
    "Replicate",
    "\"inbound_cidr\"",
    "Topology",
    "\"192.0.2.0/24\"",
    "interface",
    "duraplane",
    "Netblock",
    "\"198.51.100.0/24\"",
    "max_connections",
    "action",
    "drop",
    "ports",
    "25",
    "-1",
    "70000",
    "ECCluster_Listener",
    "Listen",
    "\"*:4802\"",
    "\"2001:db8::1:25\"",
    "Binding",
    "Enable_Duravip",
    "true",
    "Duravip_Follow",
    "Duravip_Preference",
    "Bind_Address",
    "192.0.2.5",
    "ec_logger",
    "mainlog",
    "\"cluster:///x=>m\"",
    "Security",
    "Capabilities",
    "\"cap_net_admin+ep\"",
    "include",
    "readonly_include",
    "\"nonexistent.conf\"",
    "nodeaddr",
    "127.0.0.1",
    "logs",
    "view_mature_time",
    "10ms",
    "\u{e9}",
    "\u{0}",
];

fn run(bytes: &[u8]) {
    let chk = check_bytes(bytes, Path::new("/nonexistent/fuzz.conf"));
    // Either a config or at least one error, never both, never neither.
    assert_eq!(chk.config.is_some(), chk.errors.is_empty());
    for d in chk.errors.iter().chain(&chk.warnings) {
        assert!(d.line >= 1 && d.col >= 1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        run(&bytes);
    }

    #[test]
    fn token_soup(idx in proptest::collection::vec(0..TOKENS.len(), 0..300)) {
        let text: String = idx.iter().map(|&i| TOKENS[i]).collect::<Vec<_>>().join(" ");
        run(text.as_bytes());
    }

    #[test]
    fn token_soup_without_spaces(idx in proptest::collection::vec(0..TOKENS.len(), 0..300)) {
        let text: String = idx.iter().map(|&i| TOKENS[i]).collect();
        run(text.as_bytes());
    }

    /// Whatever loads renders to text that loads again.
    #[test]
    fn valid_soups_render_and_reload(idx in proptest::collection::vec(0..TOKENS.len(), 0..120)) {
        let text: String = idx.iter().map(|&i| TOKENS[i]).collect::<Vec<_>>().join(" ");
        if let Ok(l) = load_str(&text, Path::new("/nonexistent/fuzz.conf")) {
            let out = render_effective(&l);
            prop_assert!(load_str(&out, Path::new("/r.conf")).is_ok(), "{}", out);
        }
    }
}

#[test]
fn deep_nesting_of_every_bracket_terminates() {
    for (prefix, open) in [
        ("", "a {"),
        ("a = ", "("),
        ("a = ", "[ k = "),
        ("a = ", "( [ k = "),
        ("", "s \"n\" {"),
    ] {
        let text = format!("{prefix}{}", open.repeat(50_000));
        let chk = check_bytes(text.as_bytes(), Path::new("/t/deep.conf"));
        assert!(
            chk.errors
                .iter()
                .any(|d| d.message.contains("nesting deeper")),
            "{open}: {:?}",
            chk.errors.first()
        );
    }
    // Closers only, and a huge flat file, are fine too.
    run("}".repeat(100_000).as_bytes());
    run(")]".repeat(100_000).as_bytes());
    run("a = 1\n".repeat(50_000).as_bytes());
}

#[test]
fn nesting_just_under_the_cap_is_accepted() {
    let depth = 64;
    let mut text = String::new();
    for _ in 0..depth {
        text.push_str("Domain d {\n");
    }
    for _ in 0..depth {
        text.push_str("}\n");
    }
    let chk = check_bytes(text.as_bytes(), Path::new("/t/deep.conf"));
    assert!(chk.errors.is_empty(), "{:?}", chk.errors);
}
