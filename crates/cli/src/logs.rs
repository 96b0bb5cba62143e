//! `skiff logs read`: the containers' stdout/stderr lines, one `TIME INSTANCE STREAM LINE` per
//! line; with `--follow` the answer stays open and lines are printed as they arrive.

use crate::api::{one_line, Api};
use anyhow::{anyhow, bail, Result};
use reqwest::Method;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};

#[derive(clap::Subcommand, Debug)]
pub enum LogsCommand {
    /// Print log lines of a service, or of a job's executions
    Read(ReadArgs),
}

#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["service", "job"])))]
pub struct ReadArgs {
    /// Logs of this service
    #[arg(long, value_name = "SERVICE")]
    pub service: Option<String>,
    /// Logs of this job
    #[arg(long, value_name = "JOB")]
    pub job: Option<String>,
    /// Only this execution of the job
    #[arg(long, value_name = "EXECUTION", requires = "job")]
    pub execution: Option<String>,
    /// At most this many (most recent) lines
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Keep printing new lines as they come
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// `json`: print each record as the API sends it, one JSON object per line
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<crate::output::ListFormat>,
}

/// The query string for a read.
pub fn query(a: &ReadArgs) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    for (k, v) in [
        ("service", &a.service),
        ("job", &a.job),
        ("execution", &a.execution),
    ] {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
    if let Some(n) = a.limit {
        q.push(("limit", n.to_string()));
    }
    if a.follow {
        q.push(("follow", "true".to_string()));
    }
    q
}

/// One log record as printed: `TIME INSTANCE STREAM LINE` (`INSTANCE[CONTAINER]` for a line of
/// an instance with sidecars). A record that is not JSON is
/// printed as it came; an `{"error": ...}` record ends the stream with that error.
pub fn format_record(raw: &str) -> Result<String> {
    let v: Value = match serde_json::from_str(raw) {
        Ok(v @ Value::Object(_)) => v,
        _ => return Ok(raw.to_string()),
    };
    if let Some(e) = v.get("error") {
        let msg = e
            .get("message")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| e.to_string());
        bail!("{msg}");
    }
    let field = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .unwrap_or("-")
            .to_string()
    };
    let line = v.get("line").and_then(Value::as_str).unwrap_or("");
    let mut who = field(&["instance", "task"]);
    if let Some(c) = v.get("container").and_then(Value::as_str) {
        who = format!("{who}[{c}]");
    }
    Ok(format!(
        "{} {} {} {}",
        field(&["time", "timestamp"]),
        who,
        field(&["stream"]),
        line.trim_end_matches(['\n', '\r'])
    ))
}

pub fn run(api: &Api, cmd: LogsCommand) -> Result<()> {
    let LogsCommand::Read(args) = cmd;
    // Only JSON is offered for records: YAML of a stream would not be one document.
    let args_json = match args.format {
        None => false,
        Some(crate::output::ListFormat::Json) => true,
        Some(crate::output::ListFormat::Yaml) => bail!("logs read prints --format json only"),
    };
    let req = api
        .request(Method::GET, &api.skiff_ns("logs"))
        .query(&query(&args));
    let resp = api.send(req)?;
    let mut reader = BufReader::new(resp);
    let stdout = std::io::stdout();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| {
            anyhow!(
                "the log stream from the Skiff API broke: {}: run the command again",
                one_line(&e)
            )
        })?;
        if n == 0 {
            return Ok(());
        }
        let raw = String::from_utf8_lossy(&buf);
        let raw = raw.trim_end_matches(['\n', '\r']);
        if raw.trim().is_empty() {
            continue;
        }
        let text = if args_json {
            format_record(raw)?;
            raw.to_string()
        } else {
            format_record(raw)?
        };
        let mut out = stdout.lock();
        if let Err(e) = writeln!(out, "{text}").and_then(|_| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(anyhow!("cannot write the logs: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            (
                r#"{"time":"2024-01-01T00:00:00Z","service":"a","revision":"a-1","instance":"i-1","stream":"stdout","line":"hello world"}"#,
                Ok("2024-01-01T00:00:00Z i-1 stdout hello world"),
            ),
            (
                r#"{"time":"t","task":"j-abc-0","stream":"stderr","line":"oops\n"}"#,
                Ok("t j-abc-0 stderr oops"),
            ),
            (r#"{"line":"x"}"#, Ok("- - - x")),
            ("not json", Ok("not json")),
            ("42", Ok("42")),
            (
                r#"{"error":{"code":400,"message":"jobs have no logs yet","status":"INVALID_ARGUMENT"}}"#,
                Err("jobs have no logs yet"),
            ),
        ];
        for (raw, want) in cases {
            let got = format_record(raw).map_err(|e| e.to_string());
            assert_eq!(got, want.map(String::from).map_err(String::from), "{raw}");
        }
    }

    #[test]
    fn queries() {
        let a = |service: Option<&str>, job: Option<&str>, exec: Option<&str>, limit, follow| {
            ReadArgs {
                service: service.map(String::from),
                job: job.map(String::from),
                execution: exec.map(String::from),
                limit,
                follow,
                format: None,
            }
        };
        let cases: Vec<(ReadArgs, Vec<(&str, &str)>)> = vec![
            (
                a(Some("s"), None, None, None, false),
                vec![("service", "s")],
            ),
            (
                a(Some("s"), None, None, Some(10), true),
                vec![("service", "s"), ("limit", "10"), ("follow", "true")],
            ),
            (
                a(None, Some("j"), Some("j-x"), None, false),
                vec![("job", "j"), ("execution", "j-x")],
            ),
        ];
        for (args, want) in cases {
            let got = query(&args);
            let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(got, want, "{args:?}");
        }
    }
}
