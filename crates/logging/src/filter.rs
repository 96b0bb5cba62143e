//! The Cloud Logging query language (the `filter` of `entries:list`), the part that Cloud
//! Run users and gcloud write: comparisons `FIELD OP VALUE` with `=`, `!=`, `<`, `<=`, `>`,
//! `>=`, `:` (has: a case-insensitive substring, `:*` present), `=~`/`!~` (regular
//! expressions, RE2 syntax); field paths with quoted segments
//! (`labels."run.googleapis.com/execution_name"`); bare or quoted values alone (search every
//! field); `NOT` or `-`, `OR`, `AND` (also implied by juxtaposition) and parentheses. As in
//! Cloud Logging, `NOT` binds tightest, then `OR`, then `AND`. `severity` compares by level
//! (`DEFAULT` < `DEBUG` < `INFO` < ... < `EMERGENCY`), `timestamp` as a time.
//!
//! Written here: no crate parses this language; it is a small recursive descent over text.
//! Filters are evaluated against a [`crate::entry`] `LogEntry` as JSON.

use serde_json::Value;

/// A filter that is not valid logging query language; the message names where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter {filter:?}: {reason}")]
pub struct FilterError {
    pub filter: String,
    pub reason: String,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Has,
    Matches,
    NotMatches,
}

/// A parsed filter.
#[derive(Debug, Clone)]
pub enum Filter {
    /// The empty filter: every entry.
    All,
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    /// `PATH OP VALUE`.
    Cmp {
        path: Vec<String>,
        op: Op,
        value: String,
        regex: Option<regex::Regex>,
    },
    /// A value alone: any field's text contains it (case-insensitive).
    Global(String),
}

/// Cloud Logging's `LogSeverity` levels by name.
pub const SEVERITIES: &[(&str, i64)] = &[
    ("DEFAULT", 0),
    ("DEBUG", 100),
    ("INFO", 200),
    ("NOTICE", 300),
    ("WARNING", 400),
    ("ERROR", 500),
    ("CRITICAL", 600),
    ("ALERT", 700),
    ("EMERGENCY", 800),
];

/// The numeric level of a severity name or number (`WARNING`, `warn`, `400`).
pub fn severity_rank(s: &str) -> Option<i64> {
    let up = s.trim().to_ascii_uppercase();
    let up = match up.as_str() {
        "WARN" => "WARNING",
        "FATAL" => "CRITICAL",
        "TRACE" => "DEBUG",
        other => other,
    };
    SEVERITIES
        .iter()
        .find(|(n, _)| *n == up)
        .map(|(_, r)| *r)
        .or_else(|| up.parse().ok())
}

/// A timestamp in microseconds since the epoch, from RFC 3339 (`2026-11-29T12:00:00Z`) or a
/// date (`2026-11-29`, midnight UTC).
pub fn parse_time(s: &str) -> Option<u64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s.trim()) {
        return u64::try_from(t.timestamp_micros()).ok();
    }
    let d = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()?;
    u64::try_from(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros()).ok()
}

impl Filter {
    /// Parses a filter; empty or blank text is [`Filter::All`].
    ///
    /// # Errors
    /// [`FilterError`] naming the filter and the first thing wrong in it.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let mut p = Parser {
            s: text.as_bytes(),
            text,
            pos: 0,
        };
        let err = |reason: String| FilterError {
            filter: text.to_string(),
            reason,
        };
        p.ws();
        if p.pos == p.s.len() {
            return Ok(Filter::All);
        }
        let f = p.and_seq().map_err(err)?;
        p.ws();
        if p.pos < p.s.len() {
            return Err(err(format!(
                "unexpected {:?} at offset {}",
                &text[p.pos..].chars().next().unwrap_or(' '),
                p.pos
            )));
        }
        Ok(f)
    }

    /// Whether a `LogEntry` (as JSON) passes the filter.
    pub fn matches(&self, entry: &Value) -> bool {
        match self {
            Filter::All => true,
            Filter::And(v) => v.iter().all(|f| f.matches(entry)),
            Filter::Or(v) => v.iter().any(|f| f.matches(entry)),
            Filter::Not(f) => !f.matches(entry),
            Filter::Global(text) => contains_text(entry, &text.to_lowercase()),
            Filter::Cmp {
                path,
                op,
                value,
                regex,
            } => {
                let mut v = entry;
                for seg in path {
                    match v.get(seg.as_str()) {
                        Some(next) => v = next,
                        None => return *op == Op::Ne || *op == Op::NotMatches,
                    }
                }
                compare(path, v, *op, value, regex.as_ref())
            }
        }
    }

    /// The value a top-level `PATH = VALUE` pins (every entry that passes has it), for
    /// narrowing a read before filtering: `resource.labels.service_name`, say.
    pub fn pinned(&self, path: &[&str]) -> Option<&str> {
        match self {
            Filter::Cmp {
                path: p,
                op: Op::Eq,
                value,
                ..
            } if p.iter().map(String::as_str).eq(path.iter().copied()) => Some(value),
            Filter::And(v) => v.iter().find_map(|f| f.pinned(path)),
            _ => None,
        }
    }

    /// Bounds on `timestamp` that top-level comparisons set, in microseconds since the epoch
    /// (inclusive): `(since, until)`.
    pub fn time_bounds(&self) -> (Option<u64>, Option<u64>) {
        let mut b = (None::<u64>, None::<u64>);
        let mut visit = |f: &Filter| {
            if let Filter::Cmp {
                path, op, value, ..
            } = f
            {
                if path.len() == 1 && path[0] == "timestamp" {
                    if let Some(t) = parse_time(value) {
                        match op {
                            Op::Ge | Op::Gt => b.0 = Some(b.0.map_or(t, |x: u64| x.max(t))),
                            Op::Le | Op::Lt => b.1 = Some(b.1.map_or(t, |x: u64| x.min(t))),
                            Op::Eq => {
                                b.0 = Some(t);
                                b.1 = Some(t);
                            }
                            _ => {}
                        }
                    }
                }
            }
        };
        match self {
            Filter::And(v) => v.iter().for_each(&mut visit),
            f => visit(f),
        }
        b
    }
}

fn contains_text(v: &Value, needle: &str) -> bool {
    match v {
        Value::String(s) => s.to_lowercase().contains(needle),
        Value::Number(n) => n.to_string().contains(needle),
        Value::Array(a) => a.iter().any(|x| contains_text(x, needle)),
        Value::Object(o) => o.values().any(|x| contains_text(x, needle)),
        _ => false,
    }
}

fn compare(path: &[String], v: &Value, op: Op, want: &str, re: Option<&regex::Regex>) -> bool {
    use std::cmp::Ordering;
    if op == Op::Has {
        return want == "*" || contains_text(v, &want.to_lowercase());
    }
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    if let Some(re) = re {
        return re.is_match(&text) == (op == Op::Matches);
    }
    let last = path.last().map(String::as_str);
    let ord: Option<Ordering> = if last == Some("severity") && path.len() == 1 {
        severity_rank(&text)
            .zip(severity_rank(want))
            .map(|(a, b)| a.cmp(&b))
    } else if matches!(last, Some("timestamp" | "receiveTimestamp")) {
        parse_time(&text)
            .zip(parse_time(want))
            .map(|(a, b)| a.cmp(&b))
    } else if let (Ok(a), Ok(b)) = (text.parse::<f64>(), want.parse::<f64>()) {
        a.partial_cmp(&b)
    } else {
        Some(text.as_str().cmp(want))
    };
    let Some(ord) = ord else {
        return op == Op::Ne;
    };
    match op {
        Op::Eq => ord == Ordering::Equal,
        Op::Ne => ord != Ordering::Equal,
        Op::Lt => ord == Ordering::Less,
        Op::Le => ord != Ordering::Greater,
        Op::Gt => ord == Ordering::Greater,
        Op::Ge => ord != Ordering::Less,
        Op::Has | Op::Matches | Op::NotMatches => false,
    }
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
}

/// Characters that end a bare word.
fn stops(c: u8) -> bool {
    c.is_ascii_whitespace() || matches!(c, b'(' | b')' | b'=' | b'!' | b'<' | b'>' | b':' | b'"')
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    /// Whether the keyword `kw` (followed by white space or `(`) comes next; consumes it.
    fn keyword(&mut self, kw: &str) -> bool {
        self.ws();
        let end = self.pos + kw.len();
        if self.s.get(self.pos..end) == Some(kw.as_bytes())
            && self
                .s
                .get(end)
                .is_some_and(|c| c.is_ascii_whitespace() || *c == b'(')
        {
            self.pos = end;
            true
        } else {
            false
        }
    }

    fn at_end_of_group(&mut self) -> bool {
        self.ws();
        self.pos >= self.s.len() || self.s[self.pos] == b')'
    }

    fn and_seq(&mut self) -> Result<Filter, String> {
        let mut parts = vec![self.or_seq()?];
        loop {
            if self.at_end_of_group() {
                break;
            }
            self.keyword("AND");
            parts.push(self.or_seq()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Filter::And(parts)
        })
    }

    fn or_seq(&mut self) -> Result<Filter, String> {
        let mut parts = vec![self.unary()?];
        while self.keyword("OR") {
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Filter::Or(parts)
        })
    }

    fn unary(&mut self) -> Result<Filter, String> {
        self.ws();
        if self.keyword("NOT") {
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        if self.s.get(self.pos) == Some(&b'-') {
            self.pos += 1;
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn quoted(&mut self) -> Result<String, String> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.text[self.pos..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, e)) => out.push(e),
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err(format!("the string at offset {start} is not closed"))
    }

    fn primary(&mut self) -> Result<Filter, String> {
        self.ws();
        match self.s.get(self.pos) {
            None => return Err("expected a comparison, found the end".into()),
            Some(b'(') => {
                self.pos += 1;
                let f = self.and_seq()?;
                self.ws();
                if self.s.get(self.pos) != Some(&b')') {
                    return Err(format!("expected ')' at offset {}", self.pos));
                }
                self.pos += 1;
                return Ok(f);
            }
            Some(b')') => return Err(format!("unexpected ')' at offset {}", self.pos)),
            _ => {}
        }
        // A field path (segments joined by '.', each bare or quoted) or a value alone.
        let start = self.pos;
        let mut path = Vec::new();
        loop {
            if self.s.get(self.pos) == Some(&b'"') {
                path.push(self.quoted()?);
            } else {
                let b = self.pos;
                while self.pos < self.s.len()
                    && !stops(self.s[self.pos])
                    && self.s[self.pos] != b'.'
                {
                    self.pos += 1;
                }
                if self.pos == b {
                    return Err(format!(
                        "expected a field or a value at offset {}",
                        self.pos
                    ));
                }
                path.push(self.text[b..self.pos].to_string());
            }
            if self.s.get(self.pos) == Some(&b'.') {
                self.pos += 1;
                continue;
            }
            break;
        }
        let raw = self.text[start..self.pos].to_string();
        let save = self.pos;
        self.ws();
        let op = self.op();
        let Some(op) = op else {
            if raw == "AND" || raw == "OR" {
                return Err(format!(
                    "expected a comparison before {raw} at offset {start}"
                ));
            }
            self.pos = save;
            let global = if path.len() == 1 { path.remove(0) } else { raw };
            return Ok(Filter::Global(global));
        };
        self.ws();
        let value = match self.s.get(self.pos) {
            Some(b'"') => self.quoted()?,
            Some(_) => {
                let b = self.pos;
                while self.pos < self.s.len()
                    && !self.s[self.pos].is_ascii_whitespace()
                    && self.s[self.pos] != b')'
                {
                    self.pos += 1;
                }
                if self.pos == b {
                    return Err(format!("expected a value after {raw} at offset {b}"));
                }
                self.text[b..self.pos].to_string()
            }
            None => return Err(format!("expected a value after {raw}, found the end")),
        };
        let regex = match op {
            Op::Matches | Op::NotMatches => Some(
                regex::Regex::new(&value)
                    .map_err(|e| format!("bad regular expression {value:?}: {e}"))?,
            ),
            _ => None,
        };
        Ok(Filter::Cmp {
            path,
            op,
            value,
            regex,
        })
    }

    fn op(&mut self) -> Option<Op> {
        let rest = &self.s[self.pos..];
        let (op, n) = if rest.starts_with(b"=~") {
            (Op::Matches, 2)
        } else if rest.starts_with(b"!~") {
            (Op::NotMatches, 2)
        } else if rest.starts_with(b"!=") {
            (Op::Ne, 2)
        } else if rest.starts_with(b">=") {
            (Op::Ge, 2)
        } else if rest.starts_with(b"<=") {
            (Op::Le, 2)
        } else if rest.starts_with(b"=") {
            (Op::Eq, 1)
        } else if rest.starts_with(b">") {
            (Op::Gt, 1)
        } else if rest.starts_with(b"<") {
            (Op::Lt, 1)
        } else if rest.starts_with(b":") {
            (Op::Has, 1)
        } else {
            return None;
        };
        self.pos += n;
        Some(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry() -> Value {
        json!({
            "logName": "projects/demo/logs/run.googleapis.com%2Fstdout",
            "resource": {"type": "cloud_run_job", "labels": {"job_name": "resize", "location": "us-central1"}},
            "labels": {"run.googleapis.com/execution_name": "resize-abcde", "run.googleapis.com/task_index": "3"},
            "textPayload": "Resized 12 Images",
            "severity": "WARNING",
            "timestamp": "2026-11-29T12:00:00.000001Z",
        })
    }

    /// Parses `filter` and checks whether it passes [`entry`].
    fn check(filter: &str, want: bool) {
        let f = Filter::parse(filter).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.matches(&entry()), want, "{filter:?} parsed as {f:?}");
    }

    #[test]
    fn comparisons() {
        check("resource.type = cloud_run_job", true);
        check("resource.type=\"cloud_run_revision\"", false);
        check("resource.labels.job_name = resize", true);
        check("resource.labels.job_name != resize", false);
        check(
            "labels.\"run.googleapis.com/execution_name\" = resize-abcde",
            true,
        );
        check("labels.\"run.googleapis.com/task_index\" >= 3", true);
        check("labels.\"run.googleapis.com/task_index\" > 10", false);
        check("labels.missing = x", false);
        check("labels.missing != x", true);
        check("textPayload:images", true);
        check("textPayload:\"resized 12\"", true);
        check("textPayload:nothing", false);
        check("textPayload:*", true);
        check("jsonPayload:*", false);
        check("textPayload =~ \"^Resized [0-9]+\"", true);
        check("textPayload !~ \"Resized\"", false);
    }

    #[test]
    fn severity_and_time_by_value() {
        check("severity >= DEFAULT", true);
        check("severity>=WARNING", true);
        check("severity >= error", false);
        check("severity < ERROR", true);
        check("severity = WARNING", true);
        check("timestamp >= \"2026-11-29T11:59:59Z\"", true);
        check("timestamp>=2026-11-29T12:00:01Z", false);
        check("timestamp < 2026-11-30", true);
        let f = Filter::parse(
            "resource.type = x AND timestamp>=\"2026-11-29T12:00:00Z\" timestamp<=\"2026-11-29T13:00:00Z\"",
        )
        .unwrap();
        let (a, b) = f.time_bounds();
        assert_eq!(a, parse_time("2026-11-29T12:00:00Z"));
        assert_eq!(b, parse_time("2026-11-29T13:00:00Z"));
    }

    #[test]
    fn boolean_operators_and_precedence() {
        check(
            "resource.type = cloud_run_job AND severity >= WARNING",
            true,
        );
        check("resource.type = cloud_run_job severity >= ERROR", false);
        check("severity >= ERROR OR textPayload:images", true);
        check("NOT severity >= ERROR", true);
        check("-textPayload:images", false);
        check("NOT (textPayload:images OR severity>=ERROR)", false);
        // OR binds tighter than AND: (a OR b) AND c.
        check(
            "severity>=ERROR OR textPayload:images AND resource.type=x",
            false,
        );
        check(
            "(resource.type = x OR resource.type = cloud_run_job) AND severity>=INFO",
            true,
        );
        // What gcloud run services logs read sends.
        check(
            "(textPayload:images) AND (resource.type = cloud_run_job \n) AND (resource.labels.job_name = resize \n) AND (resource.labels.location = us-central1 \n) AND (severity >= DEFAULT \n) AND (timestamp>=\"2026-11-28T12:00:00Z\")",
            true,
        );
        check("", true);
        check("Images", true);
        check("\"12 images\"", true);
        check("elsewhere", false);
    }

    #[test]
    fn pinned_values_narrow_reads() {
        let f = Filter::parse(
            "(resource.type = cloud_run_revision) AND (resource.labels.service_name = hello)",
        )
        .unwrap();
        assert_eq!(
            f.pinned(&["resource", "labels", "service_name"]),
            Some("hello")
        );
        assert_eq!(f.pinned(&["resource", "type"]), Some("cloud_run_revision"));
        let f =
            Filter::parse("resource.labels.service_name = a OR resource.labels.service_name = b")
                .unwrap();
        assert_eq!(f.pinned(&["resource", "labels", "service_name"]), None);
    }

    #[test]
    fn bad_filters_say_where() {
        for (f, reason) in [
            ("(severity>=ERROR", "expected ')'"),
            ("severity>=", "expected a value after severity"),
            ("textPayload:\"open", "is not closed"),
            ("textPayload =~ \"(\"", "bad regular expression"),
            ("a = b)", "unexpected ')'"),
            ("AND", "expected a comparison before AND"),
            ("a AND", "expected a comparison before AND"),
            ("a OR", "expected a comparison before OR"),
            ("(a", "expected ')'"),
        ] {
            let e = Filter::parse(f).expect_err(f);
            assert!(e.reason.contains(reason), "{f:?}: {e}");
            assert!(e.to_string().starts_with("invalid filter"), "{e}");
        }
    }
}
