//! Google APIs' `fields` system parameter (partial responses,
//! <https://cloud.google.com/apis/docs/system-parameters>): a client names the fields it wants
//! and the answer holds only those. `skiff services list` asks for the four its table shows,
//! which makes the answer for 10 000 services a sixth of the whole list.
//!
//! The syntax, as Google's APIs take it: paths separated by commas; a path's parts separated
//! by `.` or `/`; `a(b,c)` selects `a.b` and `a.c`; `*` selects every field at its level. A
//! mask on an array applies to each of its elements. Fields a mask names that an object lacks
//! are left out of the answer, as Google leaves out unset fields.
//!
//! Projection works on JSON text: objects the mask only passes through are split into their
//! members as raw text (`serde_json`'s `RawValue`), and what the mask keeps in full is copied
//! as it is, never parsed into values and serialized again. No crate does this on raw JSON
//! text (`prost-types`' `FieldMask` is for protobuf messages, and the JSON-path crates select
//! values rather than pruning a document), hence this module.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

/// A `fields` value that cannot be parsed; the message says where and what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid fields {mask:?}: {reason}")]
pub struct FieldMaskError {
    pub mask: String,
    pub reason: String,
}

/// A parsed `fields` mask: at each level, every field (`All`) or the named ones, each with
/// what to keep of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldMask {
    All,
    Fields(BTreeMap<String, FieldMask>),
}

impl FieldMask {
    /// Parses a `fields` value (`items(metadata.name,status/url),kind`).
    ///
    /// Errors: an empty mask or path part, a character other than letters, digits, `_`, `-`
    /// and `*` in a field name, or unbalanced parentheses.
    pub fn parse(s: &str) -> Result<FieldMask, FieldMaskError> {
        let err = |reason: String| FieldMaskError {
            mask: s.to_string(),
            reason,
        };
        let mut p = Parser {
            chars: s.chars().filter(|c| !c.is_whitespace()).collect(),
            pos: 0,
        };
        if p.chars.is_empty() {
            return Err(err(
                "the mask is empty: name at least one field, or leave fields out".into(),
            ));
        }
        let mask = p.list().map_err(err)?;
        if let Some(c) = p.chars.get(p.pos) {
            return Err(err(if *c == ')' {
                format!(
                    "unexpected ')' at position {}: a ')' without its '('",
                    p.pos
                )
            } else {
                format!(
                    "unexpected {c:?} at position {}: follow a field name with ',', '.', '/' or '('",
                    p.pos
                )
            }));
        }
        Ok(mask)
    }

    /// What to keep of the field `name`, or `None` when the mask leaves it out.
    pub fn child(&self, name: &str) -> Option<&FieldMask> {
        match self {
            FieldMask::All => Some(&FieldMask::All),
            FieldMask::Fields(m) => m.get(name),
        }
    }

    /// Adds `other` to what this mask keeps (`a.b` and `a.c` make `a(b,c)`; `a` and `a.b`
    /// make `a`).
    fn merge(&mut self, other: FieldMask) {
        match (self, other) {
            (FieldMask::All, _) => {}
            (s, FieldMask::All) => *s = FieldMask::All,
            (FieldMask::Fields(a), FieldMask::Fields(b)) => {
                for (k, v) in b {
                    match a.get_mut(&k) {
                        Some(existing) => existing.merge(v),
                        None => {
                            a.insert(k, v);
                        }
                    }
                }
            }
        }
    }

    /// The JSON text `json` with only what this mask keeps, appended to `out`.
    ///
    /// Errors: `json` is not valid JSON (stored objects always are).
    pub fn project(&self, json: &str, out: &mut String) -> Result<(), serde_json::Error> {
        let fields = match self {
            FieldMask::All => {
                out.push_str(json);
                return Ok(());
            }
            FieldMask::Fields(f) => f,
        };
        match json.trim_start().as_bytes().first() {
            Some(b'{') => {
                let members = serde_json::from_str::<Members>(json)?.0;
                out.push('{');
                let mut first = true;
                for (key, value) in members {
                    let Some(sub) = fields.get(key.as_ref()) else {
                        continue;
                    };
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    out.push_str(&serde_json::to_string(key.as_ref())?);
                    out.push(':');
                    sub.project(value.get(), out)?;
                }
                out.push('}');
            }
            Some(b'[') => {
                let elements: Vec<&RawValue> = serde_json::from_str(json)?;
                out.push('[');
                for (i, e) in elements.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.project(e.get(), out)?;
                }
                out.push(']');
            }
            // A scalar has no fields to select: it is kept as it is.
            _ => out.push_str(json.trim()),
        }
        Ok(())
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    /// `item (',' item)*`, up to the end or a `)`.
    fn list(&mut self) -> Result<FieldMask, String> {
        let mut mask = FieldMask::Fields(BTreeMap::new());
        loop {
            mask.merge(self.item()?);
            match self.chars.get(self.pos) {
                Some(',') => self.pos += 1,
                _ => return Ok(mask),
            }
        }
    }

    /// `name (('.'|'/') name)* ['(' list ')']`.
    fn item(&mut self) -> Result<FieldMask, String> {
        let mut path = vec![self.name()?];
        while matches!(self.chars.get(self.pos), Some('.' | '/')) {
            self.pos += 1;
            path.push(self.name()?);
        }
        let mut inner = FieldMask::All;
        if self.chars.get(self.pos) == Some(&'(') {
            self.pos += 1;
            inner = self.list()?;
            if self.chars.get(self.pos) != Some(&')') {
                return Err(format!(
                    "missing ')' at position {}: close each '(' after its fields",
                    self.pos
                ));
            }
            self.pos += 1;
        }
        Ok(path.into_iter().rev().fold(inner, |inner, name| {
            if name == "*" {
                // Every field at this level, each with what follows (`*` alone: all of it).
                match inner {
                    FieldMask::All => FieldMask::All,
                    // Skiff does not know each object's fields ahead of its value: `*.x`
                    // keeps every field in full.
                    FieldMask::Fields(_) => FieldMask::All,
                }
            } else {
                FieldMask::Fields(BTreeMap::from([(name, inner)]))
            }
        }))
    }

    fn name(&mut self) -> Result<String, String> {
        let start = self.pos;
        while let Some(c) = self.chars.get(self.pos) {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '*') {
                self.pos += 1;
            } else {
                break;
            }
        }
        if start == self.pos {
            return Err(match self.chars.get(self.pos) {
                Some(c) => format!(
                    "expected a field name at position {start}, found {c:?}: name fields with letters, digits and '_', joined by '.' or '/'"
                ),
                None => format!("expected a field name at position {start}, found the end"),
            });
        }
        let name: String = self.chars[start..self.pos].iter().collect();
        if name.contains('*') && name != "*" {
            return Err(format!(
                "{name:?} at position {start}: '*' stands alone for every field"
            ));
        }
        Ok(name)
    }
}

/// An object's members in their order, each value as raw JSON text.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Members<'a>, M::Error> {
                let mut v = Vec::with_capacity(m.size_hint().unwrap_or(8));
                while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                    v.push((k, m.next_value::<&'de RawValue>()?));
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = r#"{"apiVersion":"serving.knative.dev/v1","kind":"Service","metadata":{"name":"a","labels":{"x":"1"}},"status":{"url":"http://a","conditions":[{"type":"Ready","status":"True","lastTransitionTime":"t"},{"type":"RoutesReady","status":"True"}],"latestReadyRevisionName":"a-1"}}"#;

    fn check(mask: &str, json: &str, want: &str) {
        let m = FieldMask::parse(mask).unwrap();
        let mut out = String::new();
        m.project(json, &mut out).unwrap();
        assert_eq!(out, want, "mask {mask}");
        // The answer is JSON and equals what it was asked to keep.
        let _: serde_json::Value = serde_json::from_str(&out).unwrap();
    }

    #[test]
    fn projections() {
        check("kind", SVC, r#"{"kind":"Service"}"#);
        check("metadata.name", SVC, r#"{"metadata":{"name":"a"}}"#);
        check("metadata/name", SVC, r#"{"metadata":{"name":"a"}}"#);
        check("metadata(name)", SVC, r#"{"metadata":{"name":"a"}}"#);
        check("*", SVC, SVC);
        check(
            "metadata(*)",
            SVC,
            r#"{"metadata":{"name":"a","labels":{"x":"1"}}}"#,
        );
        check(
            "status(url,conditions(type,status)),metadata.name",
            SVC,
            r#"{"metadata":{"name":"a"},"status":{"url":"http://a","conditions":[{"type":"Ready","status":"True"},{"type":"RoutesReady","status":"True"}]}}"#,
        );
        // Members keep the object's own order, whatever the mask's.
        check(
            "status.latestReadyRevisionName,status.url",
            SVC,
            r#"{"status":{"url":"http://a","latestReadyRevisionName":"a-1"}}"#,
        );
        // `a` and `a.b` together keep all of `a`.
        check(
            "metadata.name,metadata",
            SVC,
            r#"{"metadata":{"name":"a","labels":{"x":"1"}}}"#,
        );
        // Absent fields are left out.
        check("spec.template,metadata.uid", SVC, r#"{"metadata":{}}"#);
        check(
            " items ( metadata.name ) ",
            r#"{"items":[{"metadata":{"name":"a","uid":"1"}},{"metadata":{"name":"b"}}],"kind":"L"}"#,
            r#"{"items":[{"metadata":{"name":"a"}},{"metadata":{"name":"b"}}]}"#,
        );
        check("items.metadata", r#"{"items":[]}"#, r#"{"items":[]}"#);
        check("a.b", r#"{"a":"scalar","b\"q":1}"#, r#"{"a":"scalar"}"#);
        check(r#"k"#, r#"{"k\n":1,"k":"\u00e9"}"#, r#"{"k":"\u00e9"}"#);
    }

    #[test]
    fn bad_masks() {
        for (mask, reason) in [
            ("", "the mask is empty"),
            ("items(metadata", "missing ')'"),
            ("items)", "a ')' without its '('"),
            ("a,,b", "expected a field name at position 2"),
            ("a.", "found the end"),
            ("a=b", "unexpected '=' at position 1"),
            ("ab*", "'*' stands alone"),
        ] {
            let e = FieldMask::parse(mask).unwrap_err();
            assert!(e.to_string().contains(reason), "{mask}: {e}");
            assert!(e.to_string().starts_with("invalid fields"), "{e}");
        }
    }
}
