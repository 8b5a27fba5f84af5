//! Redis glob patterns (`KEYS`, `CONFIG GET`), matched the way Redis's `stringmatchlen` does.
//!
//! Syntax: `*` matches any sequence (also empty), `?` any one byte, `[abc]` one of the listed
//! bytes, `[^abc]` any byte but those, `[a-z]` a range (reversed ranges are swapped), `\x`
//! the byte `x` literally (also inside brackets). Redis's corner cases are kept: an unclosed
//! `[` extends to the end of the pattern, `[` alone and `[]` match nothing, a range's end
//! may be `]` (`[a-]` is the range `]`..`a`), a trailing `\` is a literal backslash. One
//! deliberate difference: the empty key matches any pattern made only of stars (Redis matches
//! it only with `KEYS *`, through a special case).
//!
//! Unlike Redis's recursive matcher, this one compiles the pattern once and matches with a
//! single backtracking point, so a pattern such as `*a*a*a*b` costs O(pattern x key), never
//! exponential time nor deep recursion.

/// One element of a compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// `*`.
    Star,
    /// `?`.
    Any,
    /// A literal byte.
    Byte(u8),
    /// A bracket expression.
    Class {
        negated: bool,
        items: Vec<ClassItem>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClassItem {
    Byte(u8),
    /// Inclusive, `low <= high`.
    Range(u8, u8),
}

impl Token {
    fn matches(&self, byte: u8) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Byte(b) => *b == byte,
            Token::Class { negated, items } => {
                let hit = items.iter().any(|item| match *item {
                    ClassItem::Byte(b) => b == byte,
                    ClassItem::Range(low, high) => (low..=high).contains(&byte),
                });
                hit != *negated
            }
        }
    }
}

/// A compiled glob pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    /// Compiles `pattern`. Every byte string is a valid pattern.
    pub fn new(pattern: &[u8]) -> Glob {
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < pattern.len() {
            match pattern[i] {
                b'*' => {
                    // Consecutive stars are one star.
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                    i += 1;
                }
                b'?' => {
                    tokens.push(Token::Any);
                    i += 1;
                }
                b'[' => {
                    let (token, next) = compile_class(pattern, i + 1);
                    tokens.push(token);
                    i = next;
                }
                b'\\' if i + 1 < pattern.len() => {
                    tokens.push(Token::Byte(pattern[i + 1]));
                    i += 2;
                }
                byte => {
                    tokens.push(Token::Byte(byte));
                    i += 1;
                }
            }
        }
        Glob { tokens }
    }

    /// Whether `subject` matches the whole pattern.
    pub fn matches(&self, subject: &[u8]) -> bool {
        let tokens = &self.tokens;
        let (mut t, mut s) = (0, 0);
        // The last star seen and the subject position it currently stands for; on a mismatch
        // the star swallows one more byte. One backtracking point suffices for globs because a
        // later star can absorb anything an earlier one could.
        let mut star: Option<(usize, usize)> = None;
        while s < subject.len() {
            match tokens.get(t) {
                Some(Token::Star) => {
                    star = Some((t, s));
                    t += 1;
                }
                Some(token) if token.matches(subject[s]) => {
                    t += 1;
                    s += 1;
                }
                _ => match star {
                    Some((star_t, star_s)) => {
                        t = star_t + 1;
                        s = star_s + 1;
                        star = Some((star_t, star_s + 1));
                    }
                    None => return false,
                },
            }
        }
        tokens[t.min(tokens.len())..]
            .iter()
            .all(|token| *token == Token::Star)
    }

    /// The bytes every match starts with (the literal tokens before the first wildcard), used
    /// to scan only a range of a sorted key space.
    pub fn literal_prefix(&self) -> Vec<u8> {
        self.tokens
            .iter()
            .map_while(|token| match token {
                Token::Byte(b) => Some(*b),
                _ => None,
            })
            .collect()
    }
}

/// Compiles a bracket expression whose body starts at `start` (just after `[`), following
/// `stringmatchlen`'s loop; returns the token and the index after the closing `]` (or the end
/// of the pattern when there is none).
fn compile_class(pattern: &[u8], start: usize) -> (Token, usize) {
    let mut i = start;
    let negated = pattern.get(i) == Some(&b'^');
    if negated {
        i += 1;
    }
    let mut items = Vec::new();
    loop {
        let rest = &pattern[i.min(pattern.len())..];
        match rest {
            [] => return (Token::Class { negated, items }, pattern.len()),
            [b'\\', escaped, ..] => {
                items.push(ClassItem::Byte(*escaped));
                i += 2;
            }
            [b']', ..] => return (Token::Class { negated, items }, i + 1),
            // Redis looks at the two bytes after the range start even when the second is `]`.
            [low, b'-', high, ..] => {
                let (low, high) = if low <= high {
                    (*low, *high)
                } else {
                    (*high, *low)
                };
                items.push(ClassItem::Range(low, high));
                i += 3;
            }
            [byte, ..] => {
                items.push(ClassItem::Byte(*byte));
                i += 1;
            }
        }
    }
}

/// Whether `subject` matches `pattern` (compiles the pattern; see [`Glob`] to reuse it).
pub fn glob_match(pattern: &[u8], subject: &[u8]) -> bool {
    Glob::new(pattern).matches(subject)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(pattern: &str, subject: &str, expected: bool) {
        assert_eq!(
            glob_match(pattern.as_bytes(), subject.as_bytes()),
            expected,
            "pattern {pattern:?} subject {subject:?}"
        );
    }

    #[test]
    fn stars_and_question_marks() {
        check("*", "", true);
        check("*", "anything", true);
        check("", "", true);
        check("", "a", false);
        check("a*", "a", true);
        check("a*", "abc", true);
        check("a*", "ba", false);
        check("*c", "abc", true);
        check("*c", "abcd", false);
        check("a*c", "ac", true);
        check("a*c", "abbbc", true);
        check("a*c", "abcb", false);
        check("h?llo", "hello", true);
        check("h?llo", "hllo", false);
        check("h*llo", "hllo", true);
        check("h*llo", "heeeello", true);
        check("**a**", "xxaxx", true);
        check(
            "*a*a*a*b",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            false,
        );
        check("*a*a*a*b", "xaxaxaxb", true);
        check("key:*", "key:__rand_int__", true);
        check("?", "", false);
        check("a?", "a", false);
    }

    #[test]
    fn bracket_expressions() {
        check("h[ae]llo", "hello", true);
        check("h[ae]llo", "hallo", true);
        check("h[ae]llo", "hillo", false);
        check("h[^e]llo", "hallo", true);
        check("h[^e]llo", "hello", false);
        check("h[a-b]llo", "hallo", true);
        check("h[a-b]llo", "hbllo", true);
        check("h[a-b]llo", "hcllo", false);
        check("h[b-a]llo", "hallo", true); // reversed range is swapped
        check("[a-cx-z]", "y", true);
        check("[a-cx-z]", "d", false);
        check("[^a-c]", "d", true);
        check("[^a-c]", "b", false);
        check("[\\]]", "]", true);
        check("[\\-]", "-", true);
        check("[a\\-z]", "b", false);
        check("[a\\-z]", "-", true);
        // Redis quirks: `[a-]` is the range between `]` and `a`, and the class goes on.
        check("[a-]x]", "_x", false);
        check("[a-]x]", "^", true);
        check("[", "[", false); // `[` alone is an empty class
        check("[", "", false);
        check("[^", "z", true); // negated empty class: any byte
        check("[abc", "b", true); // unclosed class runs to the end
        check("[abc", "bc", false);
        check("[]", "]", false); // empty class, nothing after
        check("[]]", "]", false); // `[]` is an empty class: nothing matches
    }

    #[test]
    fn escapes() {
        check("\\*", "*", true);
        check("\\*", "a", false);
        check("a\\?", "a?", true);
        check("a\\?", "ab", false);
        check("\\[a]", "[a]", true);
        check("a\\", "a\\", true); // trailing backslash is literal
        check("\\\\", "\\", true);
    }

    #[test]
    fn empty_subject() {
        check("", "", true);
        check("*", "", true);
        check("**", "", true);
        check("?", "", false);
        check("*?", "", false);
        check("[a]", "", false);
    }

    #[test]
    fn binary_bytes() {
        assert!(glob_match(b"\x00*\xff", b"\x00abc\xff"));
        assert!(glob_match(b"[\x00-\x10]", b"\x05"));
        assert!(!glob_match(b"[\x00-\x10]", b"\x11"));
    }

    #[test]
    fn literal_prefix_stops_at_first_wildcard() {
        assert_eq!(Glob::new(b"user:*").literal_prefix(), b"user:");
        assert_eq!(Glob::new(b"a\\*b?").literal_prefix(), b"a*b");
        assert_eq!(Glob::new(b"[ab]c").literal_prefix(), b"");
        assert_eq!(Glob::new(b"plain").literal_prefix(), b"plain");
    }

    /// A direct transcription of Redis's recursive `stringmatchlen` (without `nocase`), the
    /// reference the compiled matcher must agree with.
    fn redis_match(pattern: &[u8], string: &[u8]) -> bool {
        let (mut p, mut s) = (0usize, 0usize);
        while p < pattern.len() && s < string.len() {
            match pattern[p] {
                b'*' => {
                    while p + 1 < pattern.len() && pattern[p + 1] == b'*' {
                        p += 1;
                    }
                    if p + 1 == pattern.len() {
                        return true;
                    }
                    while s < string.len() {
                        if redis_match(&pattern[p + 1..], &string[s..]) {
                            return true;
                        }
                        s += 1;
                    }
                    return false;
                }
                b'?' => s += 1,
                b'[' => {
                    p += 1;
                    let not = pattern.get(p) == Some(&b'^');
                    if not {
                        p += 1;
                    }
                    let mut hit = false;
                    loop {
                        let left = pattern.len() - p.min(pattern.len());
                        if left >= 2 && pattern[p] == b'\\' {
                            p += 1;
                            if pattern[p] == string[s] {
                                hit = true;
                            }
                        } else if left >= 1 && pattern[p] == b']' {
                            break;
                        } else if left == 0 {
                            p -= 1;
                            break;
                        } else if left >= 3 && pattern[p + 1] == b'-' {
                            let (mut start, mut end) = (pattern[p], pattern[p + 2]);
                            if start > end {
                                std::mem::swap(&mut start, &mut end);
                            }
                            p += 2;
                            if (start..=end).contains(&string[s]) {
                                hit = true;
                            }
                        } else if pattern[p] == string[s] {
                            hit = true;
                        }
                        p += 1;
                    }
                    if not {
                        hit = !hit;
                    }
                    if !hit {
                        return false;
                    }
                    s += 1;
                }
                other => {
                    let literal = if other == b'\\' && pattern.len() - p >= 2 {
                        p += 1;
                        pattern[p]
                    } else {
                        other
                    };
                    if literal != string[s] {
                        return false;
                    }
                    s += 1;
                }
            }
            p += 1;
            if s == string.len() {
                while p < pattern.len() && pattern[p] == b'*' {
                    p += 1;
                }
                break;
            }
        }
        p >= pattern.len() && s == string.len()
    }

    proptest! {
        #[test]
        fn agrees_with_redis_reference(
            pattern in proptest::collection::vec(
                prop_oneof![Just(b'*'), Just(b'?'), Just(b'['), Just(b']'), Just(b'^'),
                            Just(b'-'), Just(b'\\'), Just(b'a'), Just(b'b'), Just(b'c')],
                0..8),
            subject in proptest::collection::vec(
                prop_oneof![Just(b'a'), Just(b'b'), Just(b'c'), Just(b'-'), Just(b']'),
                            Just(b'*'), Just(b'\\')],
                0..8),
        ) {
            // Redis's matcher never matches an empty string with a non-empty pattern (KEYS
            // special-cases `*`); this one lets stars match it (see `empty_subject`).
            prop_assume!(!subject.is_empty());
            prop_assert_eq!(
                glob_match(&pattern, &subject),
                redis_match(&pattern, &subject),
                "pattern {:?} subject {:?}",
                String::from_utf8_lossy(&pattern),
                String::from_utf8_lossy(&subject)
            );
        }
    }
}
