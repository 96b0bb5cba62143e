//! Human and machine output: aligned tables, `key: value` blocks, and the raw JSON/YAML that
//! `--format json|yaml` prints.

use anyhow::{Context, Result};
use serde::Serialize;

/// `--format` for list commands.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListFormat {
    Json,
    Yaml,
}

/// `--format` for describe commands.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescribeFormat {
    Json,
    Yaml,
}

/// Pretty JSON (with a trailing newline).
pub fn to_json<T: Serialize + ?Sized>(v: &T) -> Result<String> {
    let mut s = serde_json::to_string_pretty(v).context("cannot encode JSON")?;
    s.push('\n');
    Ok(s)
}

pub fn to_yaml<T: Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_yaml::to_string(v).context("cannot encode YAML")
}

/// Prints `v` in the machine format asked for.
pub fn print_machine<T: Serialize + ?Sized>(v: &T, yaml: bool) -> Result<()> {
    let s = if yaml { to_yaml(v)? } else { to_json(v)? };
    print!("{s}");
    Ok(())
}

/// Aligned columns separated by two spaces; the last column is not padded. No rows gives an
/// empty string (the caller says "Listed 0 items."). A row is any list of cells (`Vec<String>`,
/// `[&str; 4]`); cells past the headers' count are left out.
pub fn table<R: AsRef<[C]>, C: AsRef<str>>(headers: &[&str], rows: &[R]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let n = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.as_ref().iter().enumerate().take(n) {
            widths[i] = widths[i].max(c.as_ref().chars().count());
        }
    }
    let mut out = String::with_capacity((widths.iter().sum::<usize>() + 2 * n) * (rows.len() + 1));
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let start = out.len();
        for (i, c) in cells.enumerate().take(n) {
            out.push_str(c);
            if i + 1 < n {
                let pad = widths[i] - c.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        // No trailing blanks when the last cells are empty.
        let end = start + out[start..].trim_end().len();
        out.truncate(end);
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for r in rows {
        line(
            &mut r
                .as_ref()
                .iter()
                .map(AsRef::as_ref)
                .chain(std::iter::repeat("")),
        );
    }
    out
}

/// Prints a table to stdout, or "Listed 0 items." to stderr when there is nothing.
pub fn print_table<R: AsRef<[C]>, C: AsRef<str>>(headers: &[&str], rows: &[R]) {
    if rows.is_empty() {
        eprintln!("Listed 0 items.");
    } else {
        print!("{}", table(headers, rows));
    }
}

/// `key:  value` lines with the values aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let w = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let pad = " ".repeat(w - k.chars().count() + 2);
        out.push_str(format!("{k}:{pad}{v}").trim_end());
        out.push('\n');
    }
    out
}

/// `1536` → `1.5KiB`, with one decimal below 10 units.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else if v < 10.0 {
        format!("{v:.1}{}", UNITS[u])
    } else {
        format!("{v:.0}{}", UNITS[u])
    }
}

/// A value or `-` when there is none.
pub fn or_dash(s: Option<&str>) -> String {
    match s {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "-".to_string(),
    }
}

/// A `Ready` condition as describe shows it: `True`, `Unknown`, or `False: why`.
pub fn ready_text(conditions: &[skiff_model::Condition]) -> String {
    match skiff_model::ready_status(conditions) {
        Some(c) if c.status == "False" => format!(
            "False: {}",
            c.message
                .clone()
                .or_else(|| c.reason.clone())
                .unwrap_or_default()
        ),
        Some(c) => c.status.clone(),
        None => "Unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(r: &[&[&str]]) -> Vec<Vec<String>> {
        r.iter()
            .map(|r| r.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn tables() {
        type Case<'a> = (&'a [&'a str], &'a [&'a [&'a str]], &'a str);
        let cases: &[Case] = &[
            (&["A", "B"], &[], ""),
            (&["A", "B"], &[&["x", "y"]], "A  B\nx  y\n"),
            (
                &["NAME", "URL", "READY"],
                &[&["hello", "http://hello.localhost", "True"], &["a", "", "False"]],
                "NAME   URL                     READY\nhello  http://hello.localhost  True\na                              False\n",
            ),
            // Short rows are padded, long rows cut to the headers.
            (&["A", "B", "C"], &[&["1"], &["1", "2", "3", "4"]], "A  B  C\n1\n1  2  3\n"),
            // Trailing blanks are trimmed.
            (&["LONG-HEADER", "B"], &[&["x", ""]], "LONG-HEADER  B\nx\n"),
        ];
        for (headers, r, want) in cases {
            assert_eq!(table(headers, &rows(r)), *want, "{headers:?} {r:?}");
        }
    }

    #[test]
    fn key_value_blocks() {
        let got = key_values(&[
            ("URL", "u".into()),
            ("Revision", "r".into()),
            ("Env", "".into()),
        ]);
        assert_eq!(got, "URL:       u\nRevision:  r\nEnv:\n");
    }

    #[test]
    fn sizes() {
        let cases = [
            (0, "0B"),
            (1023, "1023B"),
            (1536, "1.5KiB"),
            (4 << 20, "4.0MiB"),
            (150 << 20, "150MiB"),
            (3 << 30, "3.0GiB"),
        ];
        for (n, want) in cases {
            assert_eq!(human_size(n), want, "{n}");
        }
    }
}
