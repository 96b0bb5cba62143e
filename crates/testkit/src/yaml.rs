//! A small reader for block-style YAML, independent of the YAML library Skiff itself uses, so
//! that a test can check what `skiff services describe --format export` prints against a schema
//! with its own eyes. It reads what YAML emitters write for Kubernetes objects: block mappings
//! and sequences (sequences may sit at their key's indentation), plain, single- and
//! double-quoted scalars, `|` literal blocks, `{}` and `[]`. Plain scalars are typed by the
//! YAML 1.2 core schema (null, booleans, integers, floats, else strings). Anything else (flow
//! collections with content, anchors, aliases, tags, several documents) panics, naming the line,
//! rather than being misread.

use serde_json::{Map, Number, Value};

struct Line<'a> {
    no: usize,
    indent: usize,
    text: &'a str,
}

/// Parses one YAML document into JSON values, keeping each scalar's YAML type.
pub fn parse(text: &str) -> Value {
    let mut lines = Vec::new();
    for (no, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start_matches(' ');
        if trimmed.is_empty() || trimmed.starts_with('#') || (no == 0 && trimmed == "---") {
            lines.push(Line {
                no: no + 1,
                indent: usize::MAX,
                text: "",
            });
            continue;
        }
        assert!(
            !trimmed.starts_with('\t'),
            "line {}: tabs are not YAML indentation",
            no + 1
        );
        lines.push(Line {
            no: no + 1,
            indent: raw.len() - trimmed.len(),
            text: trimmed,
        });
    }
    let mut p = Parser { lines, i: 0 };
    p.skip_blank();
    if p.i >= p.lines.len() {
        return Value::Null;
    }
    let indent = p.lines[p.i].indent;
    let v = p.node(indent);
    p.skip_blank();
    assert!(
        p.i >= p.lines.len(),
        "line {}: unexpected content after the document",
        p.lines[p.i].no
    );
    v
}

struct Parser<'a> {
    lines: Vec<Line<'a>>,
    i: usize,
}

fn is_seq_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

impl<'a> Parser<'a> {
    fn skip_blank(&mut self) {
        while self.i < self.lines.len() && self.lines[self.i].indent == usize::MAX {
            self.i += 1;
        }
    }

    /// The block node whose first line is the current one, at `indent`.
    fn node(&mut self, indent: usize) -> Value {
        if is_seq_item(self.lines[self.i].text) {
            self.sequence(indent)
        } else {
            self.mapping(indent)
        }
    }

    fn sequence(&mut self, indent: usize) -> Value {
        let mut items = Vec::new();
        loop {
            self.skip_blank();
            let Some(line) = self.lines.get(self.i) else {
                break;
            };
            let (no, line_indent, text): (usize, usize, &'a str) =
                (line.no, line.indent, line.text);
            if line_indent != indent || !is_seq_item(text) {
                assert!(
                    line_indent <= indent,
                    "line {no}: bad indentation in a sequence"
                );
                break;
            }
            let rest = text[1..].trim_start_matches(' ');
            if rest.is_empty() {
                self.i += 1;
                items.push(self.nested(indent));
            } else {
                // `- key: value` or `- - x`: the item's content starts a node at its column.
                let col = indent + (text.len() - rest.len());
                self.lines[self.i].indent = col;
                self.lines[self.i].text = rest;
                if is_seq_item(rest) || split_key(rest, no).is_some() {
                    items.push(self.node(col));
                } else {
                    self.i += 1;
                    items.push(scalar(rest, no));
                }
            }
        }
        Value::Array(items)
    }

    fn mapping(&mut self, indent: usize) -> Value {
        let mut map = Map::new();
        loop {
            self.skip_blank();
            let Some(line) = self.lines.get(self.i) else {
                break;
            };
            let (no, line_indent, text): (usize, usize, &'a str) =
                (line.no, line.indent, line.text);
            if line_indent != indent || is_seq_item(text) {
                assert!(
                    line_indent < indent || is_seq_item(text),
                    "line {no}: bad indentation in a mapping"
                );
                break;
            }
            let (key, rest) =
                split_key(text, no).unwrap_or_else(|| panic!("line {no}: expected `key: value`"));
            self.i += 1;
            let value = match rest {
                "" => self.nested_or_compact_seq(indent),
                "|" | "|-" | "|+" => self.literal(indent, rest),
                r => scalar(r, no),
            };
            assert!(
                map.insert(key.clone(), value).is_none(),
                "line {no}: key {key:?} given twice"
            );
        }
        Value::Object(map)
    }

    /// The value of a `key:` with nothing after it: a deeper block, a sequence at the key's
    /// own indentation, or null.
    fn nested_or_compact_seq(&mut self, indent: usize) -> Value {
        self.skip_blank();
        match self.lines.get(self.i) {
            Some(l) if l.indent == indent && is_seq_item(l.text) => self.sequence(indent),
            _ => self.nested(indent),
        }
    }

    fn nested(&mut self, indent: usize) -> Value {
        self.skip_blank();
        match self.lines.get(self.i) {
            Some(l) if l.indent != usize::MAX && l.indent > indent => {
                let deeper = l.indent;
                self.node(deeper)
            }
            _ => Value::Null,
        }
    }

    fn literal(&mut self, indent: usize, style: &str) -> Value {
        let mut body: Vec<String> = Vec::new();
        let mut block_indent = None;
        while let Some(l) = self.lines.get(self.i) {
            if l.indent == usize::MAX {
                body.push(String::new());
                self.i += 1;
                continue;
            }
            if l.indent <= indent {
                break;
            }
            let bi = *block_indent.get_or_insert(l.indent);
            assert!(l.indent >= bi, "line {}: bad literal indentation", l.no);
            body.push(format!("{}{}", " ".repeat(l.indent - bi), l.text));
            self.i += 1;
        }
        let mut text = body.join("\n");
        match style {
            "|-" => text = text.trim_end_matches('\n').to_string(),
            "|" => {
                text = text.trim_end_matches('\n').to_string();
                text.push('\n');
            }
            _ => text.push('\n'),
        }
        Value::String(text)
    }
}

/// `key: rest` (rest may be empty) with a plain or quoted key; `None` if the text is no key.
fn split_key(text: &str, no: usize) -> Option<(String, &str)> {
    let (key, after) = if text.starts_with('\'') || text.starts_with('"') {
        let (k, used) = quoted(text, no);
        (k, &text[used..])
    } else {
        let end = text
            .find(": ")
            .or_else(|| text.ends_with(':').then(|| text.len() - 1))?;
        (text[..end].to_string(), &text[end..])
    };
    let rest = after.strip_prefix(':')?;
    if !rest.is_empty() && !rest.starts_with(' ') {
        return None;
    }
    Some((key, rest.trim()))
}

/// A quoted scalar at the start of `text`: its value and the bytes it used.
fn quoted(text: &str, no: usize) -> (String, usize) {
    let q = text.chars().next().unwrap();
    let mut out = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        if c == q {
            if q == '\'' && text[i + 1..].starts_with('\'') {
                out.push('\'');
                chars.next();
                continue;
            }
            return (out, i + 1);
        }
        if q == '"' && c == '\\' {
            let (_, e) = chars
                .next()
                .unwrap_or_else(|| panic!("line {no}: escape at end"));
            match e {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '0' => out.push('\0'),
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                '/' => out.push('/'),
                ' ' => out.push(' '),
                'x' | 'u' | 'U' => {
                    let n = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let hex: String = (0..n)
                        .filter_map(|_| chars.next().map(|(_, c)| c))
                        .collect();
                    let code = u32::from_str_radix(&hex, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .unwrap_or_else(|| panic!("line {no}: bad escape \\{e}{hex}"));
                    out.push(code);
                }
                other => panic!("line {no}: unsupported escape \\{other}"),
            }
            continue;
        }
        out.push(c);
    }
    panic!("line {no}: unterminated quoted scalar");
}

fn scalar(text: &str, no: usize) -> Value {
    if text.starts_with('\'') || text.starts_with('"') {
        let (s, used) = quoted(text, no);
        let rest = text[used..].trim();
        assert!(
            rest.is_empty() || rest.starts_with('#'),
            "line {no}: text after a quoted scalar"
        );
        return Value::String(s);
    }
    let plain = match text.find(" #") {
        Some(i) => text[..i].trim_end(),
        None => text,
    };
    match plain {
        "{}" => return Value::Object(Map::new()),
        "[]" => return Value::Array(Vec::new()),
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let first = plain.chars().next().unwrap();
    assert!(
        !matches!(
            first,
            '{' | '[' | '&' | '*' | '!' | '|' | '>' | '%' | '@' | '`'
        ),
        "line {no}: unsupported YAML {plain:?}"
    );
    let digits = plain.strip_prefix(['-', '+']).unwrap_or(plain);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = plain.parse::<i64>() {
            return Value::Number(n.into());
        }
    }
    let float_like = !digits.is_empty()
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'.');
    if float_like {
        if let Some(n) = plain.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(plain.to_string())
}

#[cfg(test)]
mod tests {
    use super::parse;
    use serde_json::json;

    #[test]
    fn reads_what_emitters_write() {
        let text = "\
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  annotations:
    a/b: 'false'
    c: \"x: \\\"y\\\"\"
  name: hello
spec:
  template:
    spec:
      containerConcurrency: 5
      containers:
      - args:
        - -c
        - 'echo hi; exit 0'
        env:
        - name: A
          value: ''
        image: web
        ports:
        - containerPort: 8080
        script: |-
          line one
            line two
      ratio: 0.5
      empty: {}
      none: []
      nothing: null
  traffic:
  - latestRevision: true
    percent: 100
";
        let want = json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"annotations": {"a/b": "false", "c": "x: \"y\""}, "name": "hello"},
            "spec": {
                "template": {"spec": {
                    "containerConcurrency": 5,
                    "containers": [{
                        "args": ["-c", "echo hi; exit 0"],
                        "env": [{"name": "A", "value": ""}],
                        "image": "web",
                        "ports": [{"containerPort": 8080}],
                        "script": "line one\n  line two",
                    }],
                    "ratio": 0.5, "empty": {}, "none": [], "nothing": null,
                }},
                "traffic": [{"latestRevision": true, "percent": 100}],
            }
        });
        assert_eq!(parse(text), want);
    }

    #[test]
    fn types_plain_scalars() {
        let v = parse("a: 1\nb: '1'\nc: -3\nd: 1.5\ne: yes\nf: true\ng: 1Gi\nh: 500m\n");
        assert_eq!(
            v,
            json!({"a": 1, "b": "1", "c": -3, "d": 1.5, "e": "yes", "f": true, "g": "1Gi", "h": "500m"})
        );
    }

    #[test]
    #[should_panic(expected = "unsupported YAML")]
    fn refuses_flow_collections() {
        parse("a: [1, 2]\n");
    }
}
