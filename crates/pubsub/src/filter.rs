//! Subscription filters on message attributes, in Pub/Sub's filter language:
//! `attributes.KEY = "V"`, `attributes.KEY != "V"`, `attributes:KEY` (has the key),
//! `hasPrefix(attributes.KEY, "P")`, `NOT` (or `-`), `AND`, `OR` and parentheses. As the service
//! does, `AND` and `OR` may not be mixed without parentheses, and a filter holds at most 256
//! bytes.
//!
//! A small recursive-descent parser of our own: the language is a dozen tokens, and the
//! filter parsers on crates.io implement other languages (Cloud Logging's, CEL, AIP-160 in full)
//! whose extra syntax Pub/Sub refuses.

use crate::error::{PubsubError, Result};
use std::collections::HashMap;

/// A parsed filter. `matches` evaluates it on a message's attributes.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    /// `attributes.KEY = "V"`
    Eq(String, String),
    /// `attributes.KEY != "V"`
    Ne(String, String),
    /// `attributes:KEY`
    Has(String),
    /// `hasPrefix(attributes.KEY, "P")`
    Prefix(String, String),
    Not(Box<Filter>),
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

/// Longest filter the service accepts, in bytes.
pub const MAX_LEN: usize = 256;

impl Filter {
    /// Parses a filter. Errors: `InvalidArgument` saying where and what was expected.
    pub fn parse(text: &str) -> Result<Filter> {
        if text.len() > MAX_LEN {
            return Err(PubsubError::invalid(format!(
                "Invalid filter: it has {} bytes, at most {MAX_LEN} are allowed",
                text.len()
            )));
        }
        let tokens = lex(text).map_err(|e| PubsubError::invalid(format!("Invalid filter: {e}")))?;
        let mut p = Parser { tokens, pos: 0 };
        let f = p
            .expr()
            .and_then(|f| match p.peek() {
                None => Ok(f),
                Some(t) => Err(format!("unexpected {} after a complete filter", t.show())),
            })
            .map_err(|e| {
                PubsubError::invalid(format!(
                    "Invalid filter: {e} (give e.g. attributes.k = \"v\", attributes:k, hasPrefix(attributes.k, \"p\"), joined by AND, OR, NOT and parentheses)"
                ))
            })?;
        Ok(f)
    }

    /// Whether a message with these attributes passes the filter.
    pub fn matches(&self, attrs: &HashMap<String, String>) -> bool {
        match self {
            Filter::Eq(k, v) => attrs.get(k) == Some(v),
            Filter::Ne(k, v) => attrs.get(k) != Some(v),
            Filter::Has(k) => attrs.contains_key(k),
            Filter::Prefix(k, p) => attrs.get(k).is_some_and(|v| v.starts_with(p.as_str())),
            Filter::Not(f) => !f.matches(attrs),
            Filter::And(fs) => fs.iter().all(|f| f.matches(attrs)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(attrs)),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Dot,
    Colon,
    Eq,
    Ne,
    Minus,
    Comma,
    Open,
    Close,
}

impl Tok {
    fn show(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(s) => format!("\"{s}\""),
            Tok::Dot => "`.`".into(),
            Tok::Colon => "`:`".into(),
            Tok::Eq => "`=`".into(),
            Tok::Ne => "`!=`".into(),
            Tok::Minus => "`-`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Open => "`(`".into(),
            Tok::Close => "`)`".into(),
        }
    }
}

fn lex(s: &str) -> std::result::Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '.' => out.push(Tok::Dot),
            ':' => out.push(Tok::Colon),
            '=' => out.push(Tok::Eq),
            ',' => out.push(Tok::Comma),
            '(' => out.push(Tok::Open),
            ')' => out.push(Tok::Close),
            '-' => out.push(Tok::Minus),
            '!' => {
                if chars.next_if(|(_, c)| *c == '=').is_some() {
                    out.push(Tok::Ne)
                } else {
                    return Err(format!("`!` at {i} must be `!=` (negate with NOT)"));
                }
            }
            '"' | '\'' | '`' => {
                let quote = c;
                let mut v = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("unterminated string starting at {i}")),
                        Some((_, '\\')) => match chars.next() {
                            Some((_, e)) => v.push(e),
                            None => return Err(format!("unterminated string starting at {i}")),
                        },
                        Some((_, c)) if c == quote => break,
                        Some((_, c)) => v.push(c),
                    }
                }
                // A backquoted name is a key; a quoted one a value.
                out.push(if quote == '`' {
                    Tok::Ident(v)
                } else {
                    Tok::Str(v)
                });
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut v = String::from(c);
                while let Some((_, c)) =
                    chars.next_if(|(_, c)| c.is_alphanumeric() || *c == '_' || *c == '-')
                {
                    v.push(c);
                }
                out.push(Tok::Ident(v));
            }
            c => return Err(format!("unexpected character {c:?} at {i}")),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
}

type PResult<T> = std::result::Result<T, String>;

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn expect(&mut self, want: Tok) -> PResult<()> {
        match self.next() {
            Some(t) if t == want => Ok(()),
            Some(t) => Err(format!("expected {} but found {}", want.show(), t.show())),
            None => Err(format!("expected {} at the end", want.show())),
        }
    }
    fn keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s == k)
    }

    /// expr := term ((AND term)* | (OR term)*)
    fn expr(&mut self) -> PResult<Filter> {
        let first = self.term()?;
        let mut and = Vec::new();
        let mut or = Vec::new();
        loop {
            if self.keyword("AND") {
                if !or.is_empty() {
                    return Err("AND and OR need parentheses to be combined".into());
                }
                self.pos += 1;
                and.push(self.term()?);
            } else if self.keyword("OR") {
                if !and.is_empty() {
                    return Err("AND and OR need parentheses to be combined".into());
                }
                self.pos += 1;
                or.push(self.term()?);
            } else {
                break;
            }
        }
        Ok(if !and.is_empty() {
            and.insert(0, first);
            Filter::And(and)
        } else if !or.is_empty() {
            or.insert(0, first);
            Filter::Or(or)
        } else {
            first
        })
    }

    /// term := (NOT | -) term | ( expr ) | hasPrefix(attributes.K, "P") | attributes.K (=|!=) "V" | attributes:K
    fn term(&mut self) -> PResult<Filter> {
        if self.keyword("NOT") || self.peek() == Some(&Tok::Minus) {
            self.pos += 1;
            return Ok(Filter::Not(Box::new(self.term()?)));
        }
        if self.peek() == Some(&Tok::Open) {
            self.pos += 1;
            let f = self.expr()?;
            self.expect(Tok::Close)?;
            return Ok(f);
        }
        if self.keyword("hasPrefix") {
            self.pos += 1;
            self.expect(Tok::Open)?;
            self.attributes()?;
            self.expect(Tok::Dot)?;
            let key = self.key()?;
            self.expect(Tok::Comma)?;
            let prefix = self.string()?;
            self.expect(Tok::Close)?;
            return Ok(Filter::Prefix(key, prefix));
        }
        self.attributes()?;
        match self.next() {
            Some(Tok::Colon) => Ok(Filter::Has(self.key()?)),
            Some(Tok::Dot) => {
                let key = self.key()?;
                match self.next() {
                    Some(Tok::Eq) => Ok(Filter::Eq(key, self.string()?)),
                    Some(Tok::Ne) => Ok(Filter::Ne(key, self.string()?)),
                    Some(t) => Err(format!(
                        "expected `=` or `!=` after attributes.{key} but found {}",
                        t.show()
                    )),
                    None => Err(format!("expected `=` or `!=` after attributes.{key}")),
                }
            }
            Some(t) => Err(format!(
                "expected `.` or `:` after attributes but found {}",
                t.show()
            )),
            None => Err("expected `.` or `:` after attributes".into()),
        }
    }

    fn attributes(&mut self) -> PResult<()> {
        match self.next() {
            Some(Tok::Ident(s)) if s == "attributes" => Ok(()),
            Some(t) => Err(format!("expected `attributes` but found {}", t.show())),
            None => Err("expected `attributes` at the end".into()),
        }
    }
    fn key(&mut self) -> PResult<String> {
        match self.next() {
            Some(Tok::Ident(s)) | Some(Tok::Str(s)) => Ok(s),
            Some(t) => Err(format!("expected an attribute name but found {}", t.show())),
            None => Err("expected an attribute name at the end".into()),
        }
    }
    fn string(&mut self) -> PResult<String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(s),
            Some(t) => Err(format!("expected a quoted string but found {}", t.show())),
            None => Err("expected a quoted string at the end".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(filter: &str, attrs: &[(&str, &str)], want: bool) {
        let f = Filter::parse(filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
        let a = attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(f.matches(&a), want, "{filter} on {attrs:?}");
    }

    fn refused(filter: &str, why: &str) {
        let e = Filter::parse(filter).unwrap_err().to_string();
        assert!(e.contains(why), "{filter}: {e}");
    }

    #[test]
    fn comparisons() {
        check(r#"attributes.k = "v""#, &[("k", "v")], true);
        check(r#"attributes.k = "v""#, &[("k", "w")], false);
        check(r#"attributes.k = "v""#, &[], false);
        check(r#"attributes.k != "v""#, &[("k", "w")], true);
        check(r#"attributes.k != "v""#, &[], true);
        check(r#"attributes.k != "v""#, &[("k", "v")], false);
        check("attributes:k", &[("k", "")], true);
        check("attributes:k", &[("j", "")], false);
        check(r#"hasPrefix(attributes.k, "ab")"#, &[("k", "abc")], true);
        check(r#"hasPrefix(attributes.k, "ab")"#, &[("k", "xab")], false);
        check(r#"hasPrefix(attributes.k, "ab")"#, &[], false);
        check(r#"attributes.`a b` = "v""#, &[("a b", "v")], true);
        check(
            r#"attributes.k = "say \"hi\"""#,
            &[("k", "say \"hi\"")],
            true,
        );
    }

    #[test]
    fn boolean_operators() {
        check("NOT attributes:k", &[], true);
        check("-attributes:k", &[("k", "")], false);
        check(
            "attributes:a AND attributes:b",
            &[("a", ""), ("b", "")],
            true,
        );
        check("attributes:a AND attributes:b", &[("a", "")], false);
        check("attributes:a OR attributes:b", &[("b", "")], true);
        check("attributes:a OR attributes:b OR attributes:c", &[], false);
        check(
            r#"(attributes:a OR attributes:b) AND NOT attributes.c = "x""#,
            &[("b", ""), ("c", "y")],
            true,
        );
        check(
            r#"(attributes:a OR attributes:b) AND NOT attributes.c = "x""#,
            &[("b", ""), ("c", "x")],
            false,
        );
        check(
            "attributes:a AND (attributes:b OR (attributes:c AND attributes:d))",
            &[("a", ""), ("c", ""), ("d", "")],
            true,
        );
    }

    #[test]
    fn refusals() {
        refused(
            "attributes:a AND attributes:b OR attributes:c",
            "parentheses",
        );
        refused(
            "attributes:a OR attributes:b AND attributes:c",
            "parentheses",
        );
        refused(r#"attributes.k = v"#, "quoted string");
        refused(r#"attributes.k > "v""#, "unexpected character");
        refused(r#"data = "v""#, "expected `attributes`");
        refused(r#"attributes.k = "v"#, "unterminated");
        refused("(attributes:k", "expected `)`");
        refused("attributes:k attributes:j", "unexpected `attributes`");
        refused(&format!("attributes:{}", "k".repeat(260)), "at most 256");
        refused("", "expected `attributes`");
    }
}
