//! Kubernetes label selectors, as list calls take them in `labelSelector`
//! (`serving.knative.dev/service=hello`, `env in (prod, staging),!canary`).
//!
//! The grammar is Kubernetes' (`k8s.io/apimachinery/pkg/labels`, `Parse`): requirements
//! joined by commas, each one of `KEY`, `!KEY`, `KEY=VALUE`, `KEY==VALUE`, `KEY!=VALUE`,
//! `KEY in (V1,V2)`, `KEY notin (V1,V2)`, `KEY>N`, `KEY<N`, with any white space between
//! tokens. All requirements must hold. It is written here rather than taken from a crate:
//! the Kubernetes client crates (`kube`, `k8s-openapi`) build selectors but do not parse the
//! text form, and the grammar is a few dozen lines.

use std::fmt;

/// A selector that is not valid Kubernetes label selector syntax. The message names the
/// selector and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid labelSelector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

/// How one requirement compares a label's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// `KEY=V`, `KEY==V`, `KEY in (V,...)`: present with one of the values.
    In(Vec<String>),
    /// `KEY!=V`, `KEY notin (V,...)`: absent, or with none of the values.
    NotIn(Vec<String>),
    /// `KEY`: present.
    Exists,
    /// `!KEY`: absent.
    DoesNotExist,
    /// `KEY>N`: present, an integer greater than N.
    Gt(i64),
    /// `KEY<N`: present, an integer less than N.
    Lt(i64),
}

/// One requirement of a selector: a label key and what its value must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Operator,
}

/// A parsed label selector: every requirement must hold. The empty selector matches
/// everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses Kubernetes' text form (see the module's documentation); `None`, empty or
    /// blank text is the empty selector.
    ///
    /// # Errors
    /// [`SelectorError`] naming the selector and the first thing wrong in it.
    pub fn parse(text: &str) -> Result<LabelSelector, SelectorError> {
        let err = |reason: String| SelectorError {
            selector: text.to_string(),
            reason,
        };
        let tokens = lex(text).map_err(err)?;
        Parser { tokens, pos: 0 }.selector().map_err(err)
    }

    /// Whether labels (looked up by key with `get`) satisfy every requirement.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| {
            let v = get(&r.key);
            match &r.op {
                Operator::In(vals) => v.is_some_and(|v| vals.iter().any(|x| x == v)),
                Operator::NotIn(vals) => v.is_none_or(|v| !vals.iter().any(|x| x == v)),
                Operator::Exists => v.is_some(),
                Operator::DoesNotExist => v.is_none(),
                Operator::Gt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v > *n),
                Operator::Lt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v < *n),
            }
        })
    }

    /// Whether a label map satisfies every requirement.
    pub fn matches_map(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.matches(|k| labels.get(k).map(String::as_str))
    }

    /// The one value `key` must equal, when a requirement pins it (`KEY=V` or `KEY in (V)`):
    /// lets a caller narrow a lookup before matching the whole selector.
    pub fn equality(&self, key: &str) -> Option<&str> {
        self.requirements.iter().find_map(|r| match &r.op {
            Operator::In(v) if r.key == key && v.len() == 1 => Some(v[0].as_str()),
            _ => None,
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let k = &r.key;
            match &r.op {
                Operator::In(v) if v.len() == 1 => write!(f, "{k}={}", v[0])?,
                Operator::NotIn(v) if v.len() == 1 => write!(f, "{k}!={}", v[0])?,
                Operator::In(v) => write!(f, "{k} in ({})", v.join(","))?,
                Operator::NotIn(v) => write!(f, "{k} notin ({})", v.join(","))?,
                Operator::Exists => f.write_str(k)?,
                Operator::DoesNotExist => write!(f, "!{k}")?,
                Operator::Gt(n) => write!(f, "{k}>{n}")?,
                Operator::Lt(n) => write!(f, "{k}<{n}")?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Comma,
    Open,
    Close,
}

fn lex(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let special = |c: char| "!=,()<>".contains(c) || c.is_whitespace();
        if !special(c) {
            let mut w = String::new();
            while let Some(&c) = chars.peek() {
                if special(c) {
                    break;
                }
                w.push(c);
                chars.next();
            }
            out.push(Token::Word(w));
            continue;
        }
        chars.next();
        let two =
            |chars: &mut std::iter::Peekable<std::str::Chars>| chars.next_if_eq(&'=').is_some();
        out.push(match c {
            '!' if two(&mut chars) => Token::NotEq,
            '!' => Token::Not,
            '=' if two(&mut chars) => Token::DoubleEq,
            '=' => Token::Eq,
            ',' => Token::Comma,
            '(' => Token::Open,
            ')' => Token::Close,
            '>' => Token::Gt,
            '<' => Token::Lt,
            _ => return Err(format!("unexpected {c:?}")),
        });
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn selector(mut self) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        if self.tokens.is_empty() {
            return Ok(LabelSelector { requirements });
        }
        loop {
            requirements.push(self.requirement()?);
            match self.next() {
                None => return Ok(LabelSelector { requirements }),
                Some(Token::Comma) => continue,
                Some(t) => return Err(format!("expected ',' or the end, found {}", show(&t))),
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        if self.peek() == Some(&Token::Not) {
            self.next();
            let key = self.key()?;
            return match self.peek() {
                None | Some(Token::Comma) => Ok(Requirement {
                    key,
                    op: Operator::DoesNotExist,
                }),
                Some(t) => Err(format!("!{key} takes no operator, found {}", show(t))),
            };
        }
        let key = self.key()?;
        let op = match self.peek().cloned() {
            None | Some(Token::Comma) => {
                return Ok(Requirement {
                    key,
                    op: Operator::Exists,
                })
            }
            Some(t) => {
                self.next();
                t
            }
        };
        let op = match op {
            Token::Eq | Token::DoubleEq => Operator::In(vec![self.value()?]),
            Token::NotEq => Operator::NotIn(vec![self.value()?]),
            Token::Word(w) if w == "in" => Operator::In(self.set()?),
            Token::Word(w) if w == "notin" => Operator::NotIn(self.set()?),
            Token::Gt | Token::Lt => {
                let v = self.value()?;
                let n: i64 = v
                    .parse()
                    .map_err(|_| format!("{key} {} needs an integer, found {v:?}", show(&op)))?;
                if op == Token::Gt {
                    Operator::Gt(n)
                } else {
                    Operator::Lt(n)
                }
            }
            t => {
                return Err(format!(
                    "expected =, ==, !=, in, notin, > or < after {key}, found {}",
                    show(&t)
                ))
            }
        };
        Ok(Requirement { key, op })
    }

    fn key(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Word(w)) => {
                validate_key(&w)?;
                Ok(w)
            }
            Some(t) => Err(format!("expected a label key, found {}", show(&t))),
            None => Err("expected a label key, found the end".into()),
        }
    }

    /// A value after `=`, `==` or `!=`: may be empty (`KEY=` matches the empty value).
    fn value(&mut self) -> Result<String, String> {
        match self.peek().cloned() {
            Some(Token::Word(w)) => {
                self.next();
                validate_value(&w)?;
                Ok(w)
            }
            None | Some(Token::Comma) => Ok(String::new()),
            Some(t) => Err(format!("expected a label value, found {}", show(&t))),
        }
    }

    /// `(V1, V2, ...)`: at least one value.
    fn set(&mut self) -> Result<Vec<String>, String> {
        match self.next() {
            Some(Token::Open) => {}
            Some(t) => return Err(format!("expected '(' after in/notin, found {}", show(&t))),
            None => return Err("expected '(' after in/notin, found the end".into()),
        }
        let mut vals = Vec::new();
        loop {
            match self.next() {
                Some(Token::Word(w)) => {
                    validate_value(&w)?;
                    vals.push(w);
                }
                Some(t) => return Err(format!("expected a label value, found {}", show(&t))),
                None => return Err("expected ')' to close the set, found the end".into()),
            }
            match self.next() {
                Some(Token::Comma) => continue,
                Some(Token::Close) => return Ok(vals),
                Some(t) => return Err(format!("expected ',' or ')' in a set, found {}", show(&t))),
                None => return Err("expected ')' to close the set, found the end".into()),
            }
        }
    }
}

fn show(t: &Token) -> String {
    match t {
        Token::Word(w) => format!("{w:?}"),
        Token::Not => "'!'".into(),
        Token::Eq => "'='".into(),
        Token::DoubleEq => "'=='".into(),
        Token::NotEq => "'!='".into(),
        Token::Gt => "'>'".into(),
        Token::Lt => "'<'".into(),
        Token::Comma => "','".into(),
        Token::Open => "'('".into(),
        Token::Close => "')'".into(),
    }
}

/// A label name or value: at most 63 characters, alphanumerics with `-`, `_`, `.` inside.
fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `[PREFIX/]NAME`, PREFIX a DNS subdomain (at most 253 characters).
fn validate_key(k: &str) -> Result<(), String> {
    let name = match k.split_once('/') {
        Some((prefix, name)) => {
            let ok = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|l| {
                    let b = l.as_bytes();
                    !b.is_empty()
                        && b.len() <= 63
                        && b[0].is_ascii_alphanumeric()
                        && b[b.len() - 1].is_ascii_alphanumeric()
                        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                });
            if !ok {
                return Err(format!(
                    "label key {k:?}: the prefix must be a DNS name (lower-case letters, digits, '-', '.')"
                ));
            }
            name
        }
        None => k,
    };
    if valid_name(name) {
        Ok(())
    } else {
        Err(format!(
            "label key {k:?}: the name must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

fn validate_value(v: &str) -> Result<(), String> {
    if valid_name(v) {
        Ok(())
    } else {
        Err(format!(
            "label value {v:?} must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Parses `sel`, checks its canonical form, and which of the label sets it matches.
    fn check(sel: &str, canonical: &str, cases: &[(&[(&str, &str)], bool)]) {
        let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel:?}: {e}"));
        assert_eq!(s.to_string(), canonical, "{sel:?}");
        for (l, want) in cases {
            assert_eq!(s.matches_map(&labels(l)), *want, "{sel:?} on {l:?}");
        }
    }

    fn check_err(sel: &str, reason: &str) {
        let e = LabelSelector::parse(sel).expect_err(sel);
        assert_eq!(e.selector, sel);
        assert!(e.reason.contains(reason), "{sel:?}: {e}");
        assert!(e.to_string().starts_with("invalid labelSelector"), "{e}");
    }

    #[test]
    fn equality_in_every_spelling() {
        let hit: &[(&str, &str)] = &[("client.knative.dev/nonce", "fzgzlihuub")];
        let miss: &[(&str, &str)] = &[("client.knative.dev/nonce", "other")];
        for sel in [
            "client.knative.dev/nonce=fzgzlihuub",
            "client.knative.dev/nonce = fzgzlihuub",
            "client.knative.dev/nonce==fzgzlihuub",
            "  client.knative.dev/nonce  ==  fzgzlihuub  ",
            "client.knative.dev/nonce in (fzgzlihuub)",
        ] {
            check(
                sel,
                "client.knative.dev/nonce=fzgzlihuub",
                &[(hit, true), (miss, false), (&[], false)],
            );
        }
        let s = LabelSelector::parse("a = 1").unwrap();
        assert_eq!(s.equality("a"), Some("1"));
        assert_eq!(s.equality("b"), None);
    }

    #[test]
    fn inequality_sets_and_existence() {
        check(
            "env!=prod",
            "env!=prod",
            &[
                (&[("env", "prod")], false),
                (&[("env", "dev")], true),
                (&[], true),
            ],
        );
        check(
            "env in (prod, staging)",
            "env in (prod,staging)",
            &[
                (&[("env", "staging")], true),
                (&[("env", "dev")], false),
                (&[], false),
            ],
        );
        check(
            "env notin(prod,staging)",
            "env notin (prod,staging)",
            &[
                (&[("env", "staging")], false),
                (&[("env", "dev")], true),
                (&[], true),
            ],
        );
        check(
            "canary",
            "canary",
            &[(&[("canary", "")], true), (&[], false)],
        );
        check(
            "! canary",
            "!canary",
            &[(&[("canary", "x")], false), (&[], true)],
        );
        check(
            "gen>2,gen<5",
            "gen>2,gen<5",
            &[
                (&[("gen", "3")], true),
                (&[("gen", "5")], false),
                (&[("gen", "x")], false),
            ],
        );
        check("a=", "a=", &[(&[("a", "")], true), (&[("a", "b")], false)]);
    }

    #[test]
    fn comma_joined_requirements_all_hold() {
        let sel = "serving.knative.dev/service = hello , env in (prod), !canary";
        check(
            sel,
            "serving.knative.dev/service=hello,env=prod,!canary",
            &[
                (
                    &[("serving.knative.dev/service", "hello"), ("env", "prod")],
                    true,
                ),
                (
                    &[
                        ("serving.knative.dev/service", "hello"),
                        ("env", "prod"),
                        ("canary", "1"),
                    ],
                    false,
                ),
                (
                    &[("serving.knative.dev/service", "other"), ("env", "prod")],
                    false,
                ),
            ],
        );
        assert_eq!(
            LabelSelector::parse(sel)
                .unwrap()
                .equality("serving.knative.dev/service"),
            Some("hello")
        );
    }

    #[test]
    fn empty_selector_matches_everything() {
        for sel in ["", "   "] {
            check(sel, "", &[(&[], true), (&[("a", "b")], true)]);
        }
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        check_err("a=b=c", "expected ',' or the end, found '='");
        check_err("a in b", "expected '(' after in/notin");
        check_err("a in (b", "expected ')' to close the set");
        check_err("a in ()", "expected a label value, found ')'");
        check_err("a,", "expected a label key, found the end");
        check_err(",a", "expected a label key, found ','");
        check_err("a b", "expected =, ==, !=, in, notin, > or < after a");
        check_err("!a=b", "!a takes no operator");
        check_err("a>b", "needs an integer");
        check_err("-a=b", "label key \"-a\"");
        check_err("Bad_Prefix/a=b", "the prefix must be a DNS name");
        check_err("a=b c", "expected ',' or the end, found \"c\"");
        check_err(&format!("a={}", "x".repeat(64)), "label value");
    }
}
