//! Container logs: every line an instance writes to stdout or stderr, with its time, instance
//! and stream, appended to one JSON-lines file per service under `DATA/logs/NS/SERVICE.jsonl`
//! and broadcast to followers (`skiff logs read --follow`).

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{broadcast, mpsc};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: u64,
    pub time: String,
    pub namespace: String,
    pub service: String,
    pub revision: String,
    pub instance: String,
    pub stream: String,
    pub line: String,
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
                        tracing::warn!("writing logs of {}/{}: {e}", l.namespace, l.service);
                    }
                }
            }
        });
        sink
    }

    pub fn push(
        &self,
        ns: &str,
        service: &str,
        revision: &str,
        instance: &str,
        stream: &str,
        line: String,
    ) {
        let l = LogLine {
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            namespace: ns.to_string(),
            service: service.to_string(),
            revision: revision.to_string(),
            instance: instance.to_string(),
            stream: stream.to_string(),
            line,
        };
        let _ = self.live.send(l.clone());
        let _ = self.tx.send(l);
    }

    fn file(&self, ns: &str, service: &str) -> PathBuf {
        file_of(&self.dir, ns, service)
    }

    /// The last `limit` lines of a service, oldest first.
    pub fn tail(&self, ns: &str, service: &str, limit: usize) -> Vec<LogLine> {
        let Ok(f) = std::fs::File::open(self.file(ns, service)) else {
            return Vec::new();
        };
        let mut ring = std::collections::VecDeque::with_capacity(limit.min(10_000));
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            if let Ok(l) = serde_json::from_str::<LogLine>(&line) {
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

    /// Removes a deleted service's log file.
    pub fn remove(&self, ns: &str, service: &str) {
        let _ = std::fs::remove_file(self.file(ns, service));
    }
}

fn file_of(dir: &Path, ns: &str, service: &str) -> PathBuf {
    dir.join(ns).join(format!("{service}.jsonl"))
}

fn append(dir: &Path, l: &LogLine) -> std::io::Result<()> {
    let path = file_of(dir, &l.namespace, &l.service);
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
