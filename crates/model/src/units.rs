//! Parsers for durations (`500ms`, `30s`, `10m`, `1h`), sizes (`512Mi`, `1Gi`, Kubernetes
//! quantities) and CPU counts (`1`, `0.5`, `500m`), and their canonical spellings.

use crate::InvalidInput;
use std::time::Duration;

/// Parses `500ms`, `30s`, `10m`, `1h`, `1h30m` (and a bare number of seconds, as Knative's
/// `timeoutSeconds` would read).
pub fn parse_duration(s: &str) -> Result<Duration, InvalidInput> {
    let t = s.trim();
    if t.is_empty() {
        return Err(InvalidInput::new(
            "empty duration: use a value like 500ms, 30s, 10m or 1h",
        ));
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t).map_err(|e| {
        InvalidInput::new(format!(
            "invalid duration {s:?} ({e}): use a value like 500ms, 30s, 10m or 1h"
        ))
    })
}

/// Formats a duration the way users type it (`300s`, `1500ms`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Parses a memory size: `512Mi`, `1Gi`, `100M`, `1024Ki`, `1048576` (bytes).
pub fn parse_size(s: &str) -> Result<u64, InvalidInput> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || InvalidInput::new(format!("invalid size {s:?}: use a value like 512Mi or 1Gi"));
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let v = n * mult;
    if !v.is_finite() || v < 1.0 {
        return Err(bad());
    }
    Ok(v as u64)
}

/// Parses a CPU count into millicores: `1` → 1000, `0.5` → 500, `500m` → 500.
pub fn parse_cpu(s: &str) -> Result<u64, InvalidInput> {
    let t = s.trim();
    let bad = || {
        InvalidInput::new(format!(
            "invalid cpu {s:?}: use a value like 1, 2, 0.5 or 500m"
        ))
    };
    let millis = if let Some(m) = t.strip_suffix('m') {
        m.parse::<u64>().map_err(|_| bad())?
    } else {
        let v: f64 = t.parse().map_err(|_| bad())?;
        if !v.is_finite() {
            return Err(bad());
        }
        (v * 1000.0).round() as u64
    };
    if millis == 0 {
        return Err(bad());
    }
    Ok(millis)
}

/// Parses `K=V,K2=V2` into pairs; keys must be valid environment variable names.
pub fn parse_env_list(s: &str) -> Result<Vec<(String, String)>, InvalidInput> {
    let mut out = Vec::new();
    if s.trim().is_empty() {
        return Ok(out);
    }
    for part in s.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            InvalidInput::new(format!(
                "invalid env var {part:?}: use KEY=VALUE,KEY2=VALUE2"
            ))
        })?;
        let k = k.trim();
        let valid = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(InvalidInput::new(format!(
                "invalid env var name {k:?}: use letters, digits and _, not starting with a digit"
            )));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("500ms", 500),
            ("30s", 30_000),
            ("10m", 600_000),
            ("1h", 3_600_000),
            ("300", 300_000),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s).unwrap().as_millis() as u64, ms, "{s}");
        }
        for s in ["", "abc", "10x", "-1s"] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
        assert_eq!(format_duration(Duration::from_secs(300)), "300s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn sizes() {
        let ok = [
            ("512Mi", 512 << 20),
            ("1Gi", 1 << 30),
            ("100M", 100_000_000),
            ("4096", 4096),
        ];
        for (s, n) in ok {
            assert_eq!(parse_size(s).unwrap(), n, "{s}");
        }
        for s in ["", "Mi", "12Xi", "0"] {
            assert!(parse_size(s).is_err(), "{s}");
        }
    }

    #[test]
    fn cpus() {
        for (s, m) in [("1", 1000), ("0.5", 500), ("500m", 500), ("2", 2000)] {
            assert_eq!(parse_cpu(s).unwrap(), m, "{s}");
        }
        for s in ["", "0", "x", "1.5x"] {
            assert!(parse_cpu(s).is_err(), "{s}");
        }
    }

    #[test]
    fn env_lists() {
        assert_eq!(
            parse_env_list("A=1,B=x=y").unwrap(),
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        for s in ["A", "1A=2", "A-B=1"] {
            assert!(parse_env_list(s).is_err(), "{s}");
        }
    }
}
