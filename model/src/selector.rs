//! Selectors: `<profile type>{label matchers}`.
//!
//! Matchers follow Prometheus: `=`, `!=`, `=~`, `!~`; regexes are fully anchored
//! (`=~"a.*"` matches `abc`, not `xabc`); a missing label has the value `""`, so
//! `{env=""}` selects series without `env`. The profile type may be a canonical id or
//! an alias, or absent (`{job="x"}`) where the query allows it. Errors carry the byte
//! position of the problem.

use std::fmt;

use regex::Regex;

use crate::labels::is_valid_label_name;
use crate::profile_type::{ProfileType, ProfileTypeError};

/// A syntax or semantic error in a selector, with the byte offset where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector at position {position}: {message}\n  {input}\n  {caret:>width$}", caret = "^", width = position + 1)]
pub struct SelectorError {
    /// Byte offset into the selector text.
    pub position: usize,
    /// What was wrong.
    pub message: String,
    /// The selector text, for the caret line.
    pub input: String,
}

/// How a matcher compares a label's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`, fully anchored.
    RegexMatch,
    /// `!~`, fully anchored.
    RegexNoMatch,
}

impl fmt::Display for MatchOp {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::RegexMatch => "=~",
            MatchOp::RegexNoMatch => "!~",
        })
    }
}

/// One label matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// Label name.
    pub name: String,
    /// Comparison.
    pub op: MatchOp,
    /// The literal or the regex source, as written.
    pub value: String,
    anchored_regex: Option<Regex>,
}

impl Matcher {
    /// Builds a matcher; regexes are compiled anchored (`^(?:value)$`).
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Self, regex::Error> {
        let anchored_regex = match op {
            MatchOp::RegexMatch | MatchOp::RegexNoMatch => Some(Regex::new(&format!("^(?:{value})$"))?),
            MatchOp::Equal | MatchOp::NotEqual => None,
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
            value: value.to_string(),
            anchored_regex,
        })
    }

    /// True when a label value (`""` for a missing label) satisfies the matcher.
    pub fn matches(&self, label_value: &str) -> bool {
        match (self.op, &self.anchored_regex) {
            (MatchOp::Equal, _) => label_value == self.value,
            (MatchOp::NotEqual, _) => label_value != self.value,
            (MatchOp::RegexMatch, Some(regex)) => regex.is_match(label_value),
            (MatchOp::RegexNoMatch, Some(regex)) => !regex.is_match(label_value),
            (MatchOp::RegexMatch | MatchOp::RegexNoMatch, None) => false,
        }
    }

    /// True when the matcher selects series that lack the label entirely.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

/// A parsed selector.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    /// The profile type, when the selector names one.
    pub profile_type: Option<ProfileType>,
    /// Label matchers; all must match.
    pub matchers: Vec<Matcher>,
}

impl Selector {
    /// The profile type, or an error for queries that need one (merge, range, diff).
    pub fn require_profile_type(&self) -> Result<&ProfileType, SelectorError> {
        self.profile_type.as_ref().ok_or_else(|| SelectorError {
            position: 0,
            message: "this query needs a profile type, e.g. cpu{...} or process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta{...}".into(),
            input: String::new(),
        })
    }
}

struct Parser<'input> {
    input: &'input str,
    position: usize,
}

impl<'input> Parser<'input> {
    fn error(&self, position: usize, message: impl Into<String>) -> SelectorError {
        SelectorError {
            position,
            message: message.into(),
            input: self.input.to_string(),
        }
    }

    fn rest(&self) -> &'input str {
        &self.input[self.position..]
    }

    fn skip_whitespace(&mut self) {
        let trimmed = self.rest().trim_start();
        self.position = self.input.len() - trimmed.len();
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn take_while(&mut self, accept: impl Fn(char) -> bool) -> &'input str {
        let start = self.position;
        let length: usize = self
            .rest()
            .chars()
            .take_while(|character| accept(*character))
            .map(char::len_utf8)
            .sum();
        self.position += length;
        &self.input[start..self.position]
    }

    fn parse_quoted(&mut self) -> Result<String, SelectorError> {
        let start = self.position;
        let Some(quote) = self
            .peek()
            .filter(|character| matches!(character, '"' | '\'' | '`'))
        else {
            return Err(self.error(start, "expected a quoted value (\"...\")"));
        };
        self.position += 1;
        let mut value = String::new();
        loop {
            let Some(character) = self.peek() else {
                return Err(self.error(start, "unterminated string"));
            };
            self.position += character.len_utf8();
            if character == quote {
                return Ok(value);
            }
            if character != '\\' || quote == '`' {
                value.push(character);
                continue;
            }
            let escape_position = self.position - 1;
            let Some(escaped) = self.peek() else {
                return Err(self.error(start, "unterminated string"));
            };
            self.position += escaped.len_utf8();
            match escaped {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'r' => value.push('\r'),
                '\\' | '"' | '\'' | '`' => value.push(escaped),
                // Regex escapes such as \d or \. pass through unchanged, as in PromQL's raw use.
                other => {
                    if other.is_ascii_alphanumeric() || other.is_ascii_punctuation() {
                        value.push('\\');
                        value.push(other);
                    } else {
                        return Err(self.error(escape_position, format!("unknown escape \\{other}")));
                    }
                }
            }
        }
    }

    fn parse_operator(&mut self) -> Result<MatchOp, SelectorError> {
        let rest = self.rest();
        let (op, length) = if rest.starts_with("=~") {
            (MatchOp::RegexMatch, 2)
        } else if rest.starts_with("!~") {
            (MatchOp::RegexNoMatch, 2)
        } else if rest.starts_with("!=") {
            (MatchOp::NotEqual, 2)
        } else if rest.starts_with('=') {
            (MatchOp::Equal, 1)
        } else {
            return Err(self.error(self.position, "expected one of =, !=, =~, !~"));
        };
        self.position += length;
        Ok(op)
    }

    fn parse_matchers(&mut self) -> Result<Vec<Matcher>, SelectorError> {
        let mut matchers = Vec::new();
        // Caller consumed '{'.
        loop {
            self.skip_whitespace();
            match self.peek() {
                Some('}') => {
                    self.position += 1;
                    return Ok(matchers);
                }
                None => return Err(self.error(self.position, "expected '}'")),
                _ => {}
            }
            let name_position = self.position;
            let name = self.take_while(|character| character.is_ascii_alphanumeric() || character == '_');
            if !is_valid_label_name(name) {
                return Err(self.error(
                    name_position,
                    "expected a label name matching [a-zA-Z_][a-zA-Z0-9_]*",
                ));
            }
            self.skip_whitespace();
            let op = self.parse_operator()?;
            self.skip_whitespace();
            let value_position = self.position;
            let value = self.parse_quoted()?;
            let matcher = Matcher::new(name, op, &value)
                .map_err(|error| self.error(value_position, format!("invalid regex: {error}")))?;
            matchers.push(matcher);
            self.skip_whitespace();
            match self.peek() {
                Some(',') => self.position += 1,
                Some('}') => {}
                None => return Err(self.error(self.position, "expected ',' or '}'")),
                Some(other) => {
                    return Err(self.error(self.position, format!("expected ',' or '}}', found {other:?}")))
                }
            }
        }
    }
}

/// Parses `<profile type>{matchers}`, `<profile type>`, or `{matchers}`.
pub fn parse_selector(input: &str) -> Result<Selector, SelectorError> {
    let mut parser = Parser { input, position: 0 };
    parser.skip_whitespace();
    let type_position = parser.position;
    let type_text = parser.take_while(|character| {
        character.is_ascii_alphanumeric() || matches!(character, '_' | ':' | '.' | '-')
    });
    let profile_type = if type_text.is_empty() {
        None
    } else {
        Some(
            ProfileType::parse(type_text)
                .map_err(|error: ProfileTypeError| parser.error(type_position, error.to_string()))?,
        )
    };
    parser.skip_whitespace();
    let matchers = match parser.peek() {
        Some('{') => {
            parser.position += 1;
            parser.parse_matchers()?
        }
        None if profile_type.is_some() => Vec::new(),
        None => return Err(parser.error(parser.position, "empty selector: expected a profile type or '{'")),
        Some(other) => return Err(parser.error(parser.position, format!("expected '{{', found {other:?}"))),
    };
    parser.skip_whitespace();
    if parser.position != input.len() {
        return Err(parser.error(parser.position, "unexpected text after the selector"));
    }
    Ok(Selector {
        profile_type,
        matchers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_type_and_all_operators() {
        let selector = parse_selector(r#"cpu{job="api", env!="dev",instance=~"a.*" ,zone!~'b|c',}"#).unwrap();
        assert_eq!(selector.profile_type.unwrap().name, "process_cpu");
        let ops: Vec<MatchOp> = selector.matchers.iter().map(|matcher| matcher.op).collect();
        assert_eq!(
            ops,
            [
                MatchOp::Equal,
                MatchOp::NotEqual,
                MatchOp::RegexMatch,
                MatchOp::RegexNoMatch
            ]
        );
    }

    #[test]
    fn regexes_are_fully_anchored() {
        let matcher = Matcher::new("a", MatchOp::RegexMatch, "b.*").unwrap();
        assert!(matcher.matches("bcd"));
        assert!(!matcher.matches("abcd"));
        let alternation = Matcher::new("a", MatchOp::RegexMatch, "x|y").unwrap();
        assert!(alternation.matches("y"));
        assert!(!alternation.matches("xy"));
    }

    #[test]
    fn missing_label_is_empty_string() {
        assert!(Matcher::new("env", MatchOp::Equal, "").unwrap().matches_empty());
        assert!(!Matcher::new("env", MatchOp::RegexMatch, ".+")
            .unwrap()
            .matches_empty());
    }

    #[test]
    fn bare_type_and_bare_matchers() {
        assert!(parse_selector("memory:inuse_space:bytes:space:bytes")
            .unwrap()
            .matchers
            .is_empty());
        assert!(parse_selector(r#"{job="x"}"#).unwrap().profile_type.is_none());
        assert!(parse_selector("{}").unwrap().matchers.is_empty());
    }

    #[test]
    fn errors_name_the_position() {
        let cases = [
            (r#"cpu{job="api""#, 13),
            (r#"cpu{job=api}"#, 8),
            (r#"cpu{1job="x"}"#, 4),
            (r#"cpu{job=~"("}"#, 9),
            (r#"cpu{job=="x"}"#, 8),
            (r#"cpu{job="x"} extra"#, 13),
            ("nosuchtype{}", 0),
            ("", 0),
        ];
        for (input, position) in cases {
            let error = parse_selector(input).unwrap_err();
            assert_eq!(error.position, position, "{input}: {error}");
        }
    }

    #[test]
    fn escapes_in_values() {
        let selector = parse_selector(r#"cpu{a="x\"y", b=~"\d+\.go"}"#).unwrap();
        assert_eq!(selector.matchers[0].value, "x\"y");
        assert!(selector.matchers[1].matches("12.go"));
    }
}
