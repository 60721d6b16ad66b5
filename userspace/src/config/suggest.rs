//! "did you mean `x`?" — the nearest known name by edit distance, so a misspelt option is
//! an error an operator can fix at a glance rather than a silently ignored setting.

/// The closest candidate (case-insensitive Levenshtein distance), if it is close enough to
/// be a plausible misspelling: at most a third of the word's length, and at least 2.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    let limit = (w.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(&w, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// [`nearest`], phrased for a [`super::Diagnostic::suggestion`].
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    nearest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_close_names_only() {
        let c = ["view_mature_time", "view_balance_interval", "nodeaddr"];
        assert_eq!(nearest("view_matur_time", c), Some("view_mature_time"));
        assert_eq!(nearest("VIEW_MATURE_TIM", c), Some("view_mature_time"));
        assert_eq!(nearest("nodadr", c), Some("nodeaddr"));
        assert_eq!(nearest("completely_different", c), None);
    }
}
