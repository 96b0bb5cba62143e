//! Container logs: every line an instance or task writes to stdout or stderr, with its time,
//! source and stream, and one entry per request, written to the log store
//! (`DATA/logs/logs.db`, see [`skiff_logging::store`]) by one writer thread in batches (while
//! lines keep coming, one write per [`WRITE_EVERY`]) and broadcast to followers (`skiff logs
//! read --follow`). At most [`QUEUE`] lines wait for the writer: past that, capture stops
//! reading the container's pipe until the writer catches up (the container's writes block, as
//! on a full pipe), and request entries are dropped and counted, so that memory stays bounded
//! when an app writes faster than the disk.

pub use skiff_logging::record::push_micros;
pub use skiff_logging::{HttpRequest, Limits, LogLine, LogResource, LogSource, LogStore, Scan};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// Lines that may wait for the writer.
pub const QUEUE: usize = 65_536;

/// Most lines written in one transaction.
const BATCH: usize = 4096;

/// Shortest time between two writes of the log store while lines keep coming (a lone line
/// after a quiet period is written at once). Followers get every line at once regardless.
const WRITE_EVERY: Duration = Duration::from_millis(50);

/// How often lines past the retention are deleted.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

pub struct LogSink {
    store: Arc<LogStore>,
    /// The last `seq` given out. Held while a line gets its `seq` and goes into the queue, so
    /// that the writer receives lines in `seq` order (the store keeps runs of a stream's lines
    /// in one row, and relies on it: see [`skiff_logging::store`]).
    last: Mutex<u64>,
    tx: mpsc::Sender<LogLine>,
    live: broadcast::Sender<LogLine>,
    dropped: AtomicU64,
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl LogSink {
    /// Opens the log store under `dir` (`logs.db`) with `limits` and starts its writer (a
    /// blocking thread) and its retention sweep (every minute). Must run inside a tokio runtime.
    ///
    /// # Errors
    /// The store cannot be opened.
    pub fn open(dir: &Path, limits: Limits) -> Result<Arc<LogSink>, skiff_logging::StoreError> {
        let store = Arc::new(LogStore::open(&dir.join("logs.db"), limits)?);
        import_old_files(dir, &store);
        let (tx, mut rx) = mpsc::channel::<LogLine>(QUEUE);
        let (live, _) = broadcast::channel(4096);
        let sink = Arc::new(LogSink {
            last: Mutex::new(store.last_seq()?),
            store: store.clone(),
            tx,
            live,
            dropped: AtomicU64::new(0),
        });
        let writer = store.clone();
        tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(BATCH);
            let mut last_write: Option<std::time::Instant> = None;
            let mut full = false;
            while let Some(first) = rx.blocking_recv() {
                // A line that comes within WRITE_EVERY of the last write waits for the rest of
                // that period, unless the last batch was full: a steady stream (one entry per
                // request) is written in a few transactions a second, where each commit and
                // its WAL write had cost more than the lines in it.
                if let (Some(t), false) = (last_write, full) {
                    let wait =
                        (t + WRITE_EVERY).saturating_duration_since(std::time::Instant::now());
                    if !wait.is_zero() {
                        std::thread::sleep(wait);
                    }
                }
                batch.push(first);
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(l) => batch.push(l),
                        Err(_) => break,
                    }
                }
                if let Err(e) = writer.append(&batch) {
                    tracing::warn!("writing {} log lines: {e}", batch.len());
                }
                full = batch.len() == BATCH;
                last_write = Some(std::time::Instant::now());
                batch.clear();
            }
        });
        let weak = Arc::downgrade(&sink);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EXPIRE_EVERY);
            let mut reported = 0;
            loop {
                tick.tick().await;
                let Some(s) = weak.upgrade() else { break };
                let store = s.store.clone();
                let dropped = s.dropped();
                drop(s);
                if dropped > reported {
                    tracing::warn!(
                        "{} log lines dropped in the last minute: the log writer fell behind",
                        dropped - reported
                    );
                    reported = dropped;
                }
                match tokio::task::spawn_blocking(move || store.expire(now_micros())).await {
                    Ok(Ok(n)) if n > 0 => {
                        tracing::info!("{n} log lines past the retention deleted")
                    }
                    Ok(Err(e)) => tracing::warn!("log retention: {e}"),
                    _ => {}
                }
            }
        });
        Ok(sink)
    }

    /// The store lines are written to (for reads).
    pub fn store(&self) -> &Arc<LogStore> {
        &self.store
    }

    /// Request entries dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// A new line with the next `seq` after `last` (the sink's, held by the caller): now in
    /// microseconds, or one past the last if that is not earlier.
    fn line(
        last: &mut u64,
        source: LogSource,
        stream: &str,
        line: String,
        http_request: Option<HttpRequest>,
    ) -> LogLine {
        let seq = (*last).max(now_micros().saturating_sub(1)) + 1;
        *last = seq;
        LogLine {
            seq,
            time: skiff_logging::record::rfc3339_micros(seq),
            source,
            stream: stream.to_string(),
            line,
            http_request,
        }
    }

    fn last(&self) -> std::sync::MutexGuard<'_, u64> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a line without waiting: dropped (and counted) if the writer is [`QUEUE`] lines
    /// behind.
    pub fn push(&self, source: &LogSource, stream: &str, line: String) {
        self.offer(source.clone(), stream, line, None);
    }

    /// Adds one request's entry (stream `requests`) without waiting, as [`LogSink::push`].
    pub fn push_request(&self, source: LogSource, req: HttpRequest) {
        // `METHOD STATUS URL`, as Cloud Run's request entries show; on every request's path,
        // so without `format!`.
        let mut text = String::with_capacity(req.request_method.len() + req.request_url.len() + 5);
        text.push_str(&req.request_method);
        text.push(' ');
        text.push_str(itoa::Buffer::new().format(req.status));
        text.push(' ');
        text.push_str(&req.request_url);
        self.offer(source, "requests", text, Some(req));
    }

    /// Hands a line to followers, if any (no copy is made for none).
    fn broadcast(&self, l: &LogLine) {
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(l.clone());
        }
    }

    /// Gives the line its `seq` and queues it, under the sink's lock (see [`LogSink::last`]).
    fn offer(
        &self,
        source: LogSource,
        stream: &str,
        line: String,
        http_request: Option<HttpRequest>,
    ) {
        let mut last = self.last();
        let l = Self::line(&mut last, source, stream, line, http_request);
        self.broadcast(&l);
        if self.tx.try_send(l).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds a line, waiting while the writer is [`QUEUE`] lines behind.
    pub async fn send(&self, source: &LogSource, stream: &str, line: String) {
        // The room first, then the `seq` and the line's place in the queue together.
        let Ok(permit) = self.tx.reserve().await else {
            return;
        };
        let mut last = self.last();
        let l = Self::line(&mut last, source.clone(), stream, line, None);
        self.broadcast(&l);
        permit.send(l);
    }

    /// The last `limit` lines of a service or job (of one execution, when given), oldest first.
    pub fn tail(
        &self,
        ns: &str,
        resource: &LogResource,
        execution: Option<&str>,
        limit: usize,
    ) -> Vec<LogLine> {
        self.store
            .tail(ns, resource, execution, limit)
            .unwrap_or_else(|e| {
                tracing::warn!("reading logs: {e}");
                Vec::new()
            })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LogLine> {
        self.live.subscribe()
    }

    /// Removes a deleted service's or job's lines.
    pub fn remove(&self, ns: &str, resource: &LogResource) {
        if let Err(e) = self.store.remove(ns, resource) {
            tracing::warn!("removing logs of {}: {e}", resource.name());
        }
    }
}

/// Moves logs kept in the older format (one JSON-lines file per service,
/// `DIR/NS/SERVICE.jsonl`, or job, `DIR/NS/jobs/JOB.jsonl`) into the store, removing each
/// file once it is in. A file that cannot be read is left where it is, with a warning.
fn import_old_files(dir: &Path, store: &LogStore) {
    let Ok(namespaces) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files = Vec::new();
    for ns in namespaces
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
    {
        for d in [ns.clone(), ns.join("jobs")] {
            if let Ok(entries) = std::fs::read_dir(&d) {
                files.extend(
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "jsonl")),
                );
            }
        }
    }
    for f in files {
        match store.import_jsonl(&f) {
            Ok(n) => {
                tracing::info!("imported {n} log lines from {}", f.display());
                let _ = std::fs::remove_file(&f);
            }
            Err(e) => tracing::warn!("{}: {e}", f.display()),
        }
    }
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
                    sink.send(&source, stream, line).await;
                }
                Ok(None) => break,
                // Not UTF-8: that line is lost, the stream goes on.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => continue,
                Err(_) => break,
            }
        }
    })
}
