//! Container logs: every line an instance or task writes to stdout or stderr, with its time,
//! source and stream, appended to one JSON-lines file per service
//! (`DATA/logs/NS/SERVICE.jsonl`) or job (`DATA/logs/NS/jobs/JOB.jsonl`) and broadcast to
//! followers (`skiff logs read --follow`).

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{broadcast, mpsc};

/// Where a log line comes from: a service's instance or a job's task attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSource {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub job: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub execution: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u64>,
}

/// The resource whose logs are read: a service or a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogResource {
    Service(String),
    Job(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: u64,
    pub time: String,
    #[serde(flatten)]
    pub source: LogSource,
    pub stream: String,
    pub line: String,
}

impl LogLine {
    /// Whether the line belongs to `resource` in `ns` (and to `execution`, when given).
    pub fn matches(&self, ns: &str, resource: &LogResource, execution: Option<&str>) -> bool {
        let s = &self.source;
        s.namespace == ns
            && match resource {
                LogResource::Service(name) => s.job.is_empty() && &s.service == name,
                LogResource::Job(name) => &s.job == name,
            }
            && execution.is_none_or(|e| s.execution == e)
    }
}

pub struct LogSink {
    dir: PathBuf,
    seq: AtomicU64,
    tx: mpsc::UnboundedSender<LogLine>,
    live: broadcast::Sender<LogLine>,
}

impl LogSink {
    /// Starts the writer task; lines are appended in the order they were accepted.
    pub fn start(dir: PathBuf) -> std::sync::Arc<LogSink> {
        let (tx, mut rx) = mpsc::unbounded_channel::<LogLine>();
        let (live, _) = broadcast::channel(4096);
        let seq = AtomicU64::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
        );
        let sink = std::sync::Arc::new(LogSink {
            dir: dir.clone(),
            seq,
            tx,
            live,
        });
        tokio::task::spawn_blocking(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut batch = vec![first];
                while let Ok(l) = rx.try_recv() {
                    batch.push(l);
                }
                for l in batch {
                    if let Err(e) = append(&dir, &l) {
                        tracing::warn!("writing logs of {}: {e}", l.source.namespace);
                    }
                }
            }
        });
        sink
    }

    pub fn push(&self, source: &LogSource, stream: &str, line: String) {
        let l = LogLine {
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            source: source.clone(),
            stream: stream.to_string(),
            line,
        };
        let _ = self.live.send(l.clone());
        let _ = self.tx.send(l);
    }

    /// The last `limit` lines of a service or job (of one execution, when given), oldest first.
    pub fn tail(
        &self,
        ns: &str,
        resource: &LogResource,
        execution: Option<&str>,
        limit: usize,
    ) -> Vec<LogLine> {
        let Ok(f) = std::fs::File::open(file_of(&self.dir, ns, resource)) else {
            return Vec::new();
        };
        let mut ring = std::collections::VecDeque::with_capacity(limit.min(10_000));
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            if let Ok(l) = serde_json::from_str::<LogLine>(&line) {
                if !l.matches(ns, resource, execution) {
                    continue;
                }
                if ring.len() == limit {
                    ring.pop_front();
                }
                if limit > 0 {
                    ring.push_back(l);
                }
            }
        }
        ring.into()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LogLine> {
        self.live.subscribe()
    }

    /// Removes a deleted service's or job's log file.
    pub fn remove(&self, ns: &str, resource: &LogResource) {
        let _ = std::fs::remove_file(file_of(&self.dir, ns, resource));
    }
}

fn file_of(dir: &Path, ns: &str, resource: &LogResource) -> PathBuf {
    match resource {
        LogResource::Service(s) => dir.join(ns).join(format!("{s}.jsonl")),
        LogResource::Job(j) => dir.join(ns).join("jobs").join(format!("{j}.jsonl")),
    }
}

fn resource_of(l: &LogLine) -> LogResource {
    if l.source.job.is_empty() {
        LogResource::Service(l.source.service.clone())
    } else {
        LogResource::Job(l.source.job.clone())
    }
}

fn append(dir: &Path, l: &LogLine) -> std::io::Result<()> {
    let path = file_of(dir, &l.source.namespace, &resource_of(l));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut data = serde_json::to_vec(l).map_err(std::io::Error::other)?;
    data.push(b'\n');
    f.write_all(&data)
}

/// Reads a container's output stream line by line into `sink` as coming from `source`;
/// `each` sees every line too (to keep the last few for error messages). The task ends at
/// end of file, which the caller can await to know all output is in.
pub fn capture<R, F>(
    sink: std::sync::Arc<LogSink>,
    source: LogSource,
    stream: &'static str,
    r: R,
    mut each: F,
) -> tokio::task::JoinHandle<()>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    F: FnMut(&str) + Send + 'static,
{
    use tokio::io::AsyncBufReadExt;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(r).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => {
                    each(&line);
                    sink.push(&source, stream, line);
                }
                Ok(None) => break,
                // Not UTF-8: that line is lost, the stream goes on.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => continue,
                Err(_) => break,
            }
        }
    })
}
