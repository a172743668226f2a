//! Postgres `LIKE`: `%` matches any run of characters, `_` exactly one, and the escape
//! character (backslash unless `ESCAPE` says otherwise) makes the next character literal.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    AnyOne,
    AnyRun,
    /// An escape character with nothing after it. Postgres only fails when matching gets
    /// there with text left to match, so the error is raised then too.
    DanglingEscape,
}

pub(crate) const DANGLING_ESCAPE: &str = "LIKE pattern must not end with escape character";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LikePattern {
    tokens: Vec<Token>,
}

/// The escape character from an `ESCAPE` operand: empty disables escaping.
pub(crate) fn escape_char(escape: &str) -> Result<Option<char>, String> {
    let mut chars = escape.chars();
    match (chars.next(), chars.next()) {
        (None, _) => Ok(None),
        (Some(c), None) => Ok(Some(c)),
        _ => Err("invalid escape string".into()),
    }
}

impl LikePattern {
    pub(crate) fn compile(pattern: &str, escape: Option<char>) -> LikePattern {
        let mut tokens = Vec::new();
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            let token = if Some(c) == escape {
                match chars.next() {
                    Some(next) => Token::Literal(next),
                    None => Token::DanglingEscape,
                }
            } else if c == '%' {
                // Consecutive `%` are equivalent to one and would only slow matching down.
                if tokens.last() == Some(&Token::AnyRun) {
                    continue;
                }
                Token::AnyRun
            } else if c == '_' {
                Token::AnyOne
            } else {
                Token::Literal(c)
            };
            tokens.push(token);
        }
        LikePattern { tokens }
    }

    /// The longest run of literal characters: every text the pattern matches contains it.
    /// None when the pattern has no literal (or ends with a lone escape).
    pub(crate) fn longest_literal(&self) -> Option<String> {
        if self.has_dangling_escape() {
            return None;
        }
        let mut best = String::new();
        let mut run = String::new();
        for token in self.tokens.iter().chain([&Token::AnyRun]) {
            match token {
                Token::Literal(c) => run.push(*c),
                _ => {
                    if run.len() > best.len() {
                        best = std::mem::take(&mut run);
                    }
                    run.clear();
                }
            }
        }
        (!best.is_empty()).then_some(best)
    }

    /// Whether the pattern ends with a lone escape character (an error once matching reaches it).
    pub(crate) fn has_dangling_escape(&self) -> bool {
        self.tokens.last() == Some(&Token::DanglingEscape)
    }

    /// Greedy matching that backtracks only to the most recent `%`, which is enough for
    /// patterns made of literals, `_` and `%`, and keeps the cost at O(text × pattern).
    pub(crate) fn matches(&self, text: &str) -> Result<bool, String> {
        // Byte offsets at character boundaries: no per-call copy of the text into chars.
        let at = |i: usize| text.get(i..).and_then(|rest| rest.chars().next());
        let pat = &self.tokens;
        let (mut t, mut p) = (0, 0);
        let mut resume: Option<(usize, usize)> = None;
        while let Some(c) = at(t) {
            match pat.get(p) {
                Some(Token::Literal(l)) if *l == c => {
                    t += c.len_utf8();
                    p += 1;
                }
                Some(Token::AnyOne) => {
                    t += c.len_utf8();
                    p += 1;
                }
                Some(Token::AnyRun) => {
                    resume = Some((p, t));
                    p += 1;
                }
                Some(Token::DanglingEscape) => return Err(DANGLING_ESCAPE.into()),
                _ => match resume {
                    Some((star, from)) => {
                        let Some(skipped) = at(from) else {
                            return Ok(false);
                        };
                        let next = from + skipped.len_utf8();
                        p = star + 1;
                        t = next;
                        resume = Some((star, next));
                    }
                    None => return Ok(false),
                },
            }
        }
        Ok(pat[p..].iter().all(|tok| *tok == Token::AnyRun))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn like(text: &str, pattern: &str) -> bool {
        match LikePattern::compile(pattern, Some('\\')).matches(text) {
            Ok(m) => m,
            Err(e) => panic!("{pattern}: {e}"),
        }
    }

    #[test]
    fn wildcards_match_like_postgres() {
        assert!(like("hello", "h%o"));
        assert!(like("hello", "%"));
        assert!(like("", "%"));
        assert!(!like("", "_"));
        assert!(like("hello", "h_llo"));
        assert!(!like("hello", "h_lo"));
        assert!(like("abcabc", "%abc"));
        assert!(like("aaa", "%a%a%a%"));
        assert!(!like("aa", "%a%a%a%"));
        assert!(like("héllo", "h_llo"));
        assert!(!like("Hello", "hello"));
        assert!(like("mississippi", "m%iss%ppi"));
    }

    #[test]
    fn escaped_wildcards_are_literal() {
        assert!(like("50%", "50\\%"));
        assert!(!like("500", "50\\%"));
        assert!(like("a_b", "a\\_b"));
        assert!(!like("axb", "a\\_b"));
        assert!(like("a\\b", "a\\\\b"));
    }

    #[test]
    fn dangling_escape_fails_only_when_matching_reaches_it() {
        let p = LikePattern::compile("ab\\", Some('\\'));
        assert!(p.has_dangling_escape());
        assert_eq!(p.matches("xyz"), Ok(false));
        assert_eq!(p.matches("ab"), Ok(false));
        assert_eq!(p.matches("abc"), Err(DANGLING_ESCAPE.into()));
    }

    #[test]
    fn custom_and_disabled_escape() {
        let p = LikePattern::compile("50#%", Some('#'));
        assert_eq!((p.matches("50%"), p.matches("501")), (Ok(true), Ok(false)));
        let p = LikePattern::compile("a\\%", None);
        assert_eq!(p.matches("a\\xyz"), Ok(true));
        assert_eq!(escape_char("ab"), Err("invalid escape string".into()));
    }
}
