//! The log store: one SQLite database (`DATA/logs/logs.db`, WAL) with a row per line, keyed
//! by its `seq` (the time it was taken in, in microseconds, unique). Indexes by namespace, by
//! service or job, and by execution, each ordered by `seq`, make the newest N lines, a time
//! range or an execution's lines cost in proportion to what is read, however long the
//! history. Lines older than the retention go, oldest first; so do a service's or job's
//! oldest lines when it holds more than its size cap (a per-resource byte count is kept in
//! the same transactions as the lines, so the cap costs nothing to check).

use crate::record::{LogLine, LogResource};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// A log store that cannot be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("log store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("log store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How long lines are kept and how much one service or job may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Lines older than this are deleted (Cloud Logging's default bucket keeps 30 days).
    pub retention: Duration,
    /// Past this many bytes of lines (their stored JSON), a service's or job's oldest lines
    /// are deleted until it holds 90 % of it.
    pub max_bytes_per_resource: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            retention: Duration::from_secs(30 * 24 * 3600),
            max_bytes_per_resource: 1 << 30,
        }
    }
}

/// What to read: a namespace's lines, optionally of one service or job (and one of its
/// executions), in a `seq` (time) range, newest or oldest first.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub namespace: String,
    pub resource: Option<LogResource>,
    pub execution: Option<String>,
    pub newest_first: bool,
    /// Only lines with `seq >= since` (microseconds since the epoch).
    pub since: Option<u64>,
    /// Only lines with `seq <= until`.
    pub until: Option<u64>,
}

pub struct LogStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    limits: Limits,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    resource TEXT NOT NULL,
    execution TEXT NOT NULL,
    size INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_namespace ON entries (namespace, seq);
CREATE INDEX IF NOT EXISTS entries_by_resource ON entries (namespace, kind, resource, seq);
CREATE INDEX IF NOT EXISTS entries_by_execution
    ON entries (namespace, kind, resource, execution, seq) WHERE execution <> '';
CREATE TABLE IF NOT EXISTS sizes (
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    resource TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (namespace, kind, resource)
);
";

/// The `kind` and `resource` columns of a line, borrowed from it.
fn kind_and_name(l: &LogLine) -> (&'static str, &str) {
    if l.source.job.is_empty() {
        ("service", &l.source.service)
    } else {
        ("job", &l.source.job)
    }
}

fn kind_of(r: &LogResource) -> (&'static str, &str) {
    match r {
        LogResource::Service(n) => ("service", n),
        LogResource::Job(n) => ("job", n),
    }
}

/// Drops the execution index of a store made when it held every line: it now holds only job
/// lines (those with an execution), so that a service's lines, with an entry for each of its
/// requests, pay for two indexes rather than three. [`SCHEMA`] then makes the partial index
/// (a one-time scan of the table). A no-op once the index is partial.
fn drop_full_execution_index(c: &Connection) -> rusqlite::Result<()> {
    let sql: Option<String> = c
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'entries_by_execution'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match sql {
        Some(sql) if !sql.contains("WHERE") => c.execute_batch("DROP INDEX entries_by_execution"),
        _ => Ok(()),
    }
}

impl LogStore {
    /// Opens (creating it and its directory if needed) the store at `path`.
    ///
    /// # Errors
    /// [`StoreError`] when the directory or database cannot be made or read.
    pub fn open(path: &Path, limits: Limits) -> Result<LogStore, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let store = LogStore {
            path: path.to_path_buf(),
            writer: Mutex::new(Connection::open(path).map_err(|e| StoreError::Sqlite {
                path: path.to_path_buf(),
                source: e,
            })?),
            limits,
        };
        {
            let c = store.writer.lock().unwrap_or_else(|p| p.into_inner());
            c.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000; PRAGMA cache_size = -16384;",
            )
            .and_then(|_| drop_full_execution_index(&c))
            .and_then(|_| c.execute_batch(SCHEMA))
            .map_err(|e| store.err(e))?;
        }
        Ok(store)
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The store's limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The highest `seq` stored (0 when empty): new lines must take higher ones.
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        let c = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        c.query_row("SELECT COALESCE(MAX(seq), 0) FROM entries", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|v| v as u64)
        .map_err(|e| self.err(e))
    }

    /// Appends lines in one transaction, then trims every service or job they touched to its
    /// size cap. A line whose `seq` is already stored is skipped.
    pub fn append(&self, lines: &[LogLine]) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut c = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut added: HashMap<(String, &'static str, String), i64> = HashMap::new();
        // Lines come in runs from one service or job: bytes are summed per run and added to
        // `added` when the run ends, without a key made for every line.
        let mut run: Option<(&LogLine, i64)> = None;
        let mut body: Vec<u8> = Vec::new();
        {
            let tx = c.transaction().map_err(|e| self.err(e))?;
            {
                let mut ins = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO entries (seq, namespace, kind, resource, execution, size, body)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .map_err(|e| self.err(e))?;
                let mut count = |l: &LogLine, bytes: i64| {
                    let (kind, name) = kind_and_name(l);
                    *added
                        .entry((l.source.namespace.clone(), kind, name.to_string()))
                        .or_default() += bytes;
                };
                for l in lines {
                    // One buffer for every line's JSON (serializing a `LogLine` cannot fail,
                    // and gives UTF-8).
                    body.clear();
                    let _ = serde_json::to_writer(&mut body, l);
                    let text = std::str::from_utf8(&body).unwrap_or_default();
                    let (kind, name) = kind_and_name(l);
                    let n = ins
                        .execute(params![
                            l.seq as i64,
                            l.source.namespace,
                            kind,
                            name,
                            l.source.execution,
                            text.len() as i64,
                            text
                        ])
                        .map_err(|e| self.err(e))?;
                    if n == 0 {
                        continue;
                    }
                    let bytes = text.len() as i64;
                    match &mut run {
                        Some((first, sum))
                            if first.source.namespace == l.source.namespace
                                && kind_and_name(first) == (kind, name) =>
                        {
                            *sum += bytes
                        }
                        _ => {
                            if let Some((first, sum)) = run.replace((l, bytes)) {
                                count(first, sum);
                            }
                        }
                    }
                }
                if let Some((first, sum)) = run.take() {
                    count(first, sum);
                }
                let mut size = tx
                    .prepare_cached(
                        "INSERT INTO sizes (namespace, kind, resource, bytes) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (namespace, kind, resource) DO UPDATE SET bytes = bytes + excluded.bytes",
                    )
                    .map_err(|e| self.err(e))?;
                for ((ns, kind, name), bytes) in &added {
                    size.execute(params![ns, kind, name, bytes])
                        .map_err(|e| self.err(e))?;
                }
            }
            tx.commit().map_err(|e| self.err(e))?;
        }
        for (ns, kind, name) in added.keys() {
            self.trim(&mut c, ns, kind, name)?;
        }
        Ok(())
    }

    /// Deletes a service's or job's oldest lines while it holds more than its cap, down to
    /// 90 % of it, reading only the rows it deletes.
    fn trim(&self, c: &mut Connection, ns: &str, kind: &str, name: &str) -> Result<(), StoreError> {
        let cap = self.limits.max_bytes_per_resource as i64;
        let bytes: i64 = c
            .query_row(
                "SELECT bytes FROM sizes WHERE namespace = ?1 AND kind = ?2 AND resource = ?3",
                params![ns, kind, name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?
            .unwrap_or(0);
        if bytes <= cap {
            return Ok(());
        }
        let excess = bytes - cap / 10 * 9;
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let (last, freed) = {
            let mut q = tx
                .prepare_cached(
                    "SELECT seq, size FROM entries WHERE namespace = ?1 AND kind = ?2 AND resource = ?3
                     ORDER BY seq",
                )
                .map_err(|e| self.err(e))?;
            let mut rows = q.query(params![ns, kind, name]).map_err(|e| self.err(e))?;
            let (mut last, mut freed) = (None, 0i64);
            while freed < excess {
                let Some(r) = rows.next().map_err(|e| self.err(e))? else {
                    break;
                };
                last = Some(r.get::<_, i64>(0).map_err(|e| self.err(e))?);
                freed += r.get::<_, i64>(1).map_err(|e| self.err(e))?;
            }
            (last, freed)
        };
        if let Some(last) = last {
            tx.execute(
                "DELETE FROM entries WHERE namespace = ?1 AND kind = ?2 AND resource = ?3 AND seq <= ?4",
                params![ns, kind, name, last],
            )
            .map_err(|e| self.err(e))?;
            tx.execute(
                "UPDATE sizes SET bytes = bytes - ?4 WHERE namespace = ?1 AND kind = ?2 AND resource = ?3",
                params![ns, kind, name, freed],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Imports a JSON-lines file of [`LogLine`]s (the format logs were kept in before this
    /// store), oldest first, in batches; each line's `seq` becomes its time in microseconds,
    /// moved on to the next free one if taken, and its `time` is rewritten to match. Lines
    /// that do not parse are skipped. Returns how many were imported.
    pub fn import_jsonl(&self, file: &Path) -> Result<u64, StoreError> {
        use std::io::BufRead;
        let io = |source| StoreError::Io {
            path: file.to_path_buf(),
            source,
        };
        let f = std::fs::File::open(file).map_err(io)?;
        let mut batch: Vec<LogLine> = Vec::new();
        let mut n = 0u64;
        for line in std::io::BufReader::new(f).lines() {
            let line = line.map_err(io)?;
            let Ok(mut l) = serde_json::from_str::<LogLine>(&line) else {
                continue;
            };
            let Some(t) = crate::filter::parse_time(&l.time) else {
                continue;
            };
            l.seq = t;
            batch.push(l);
            if batch.len() == 10_000 {
                n += self.insert_moving(&mut batch)?;
            }
        }
        n += self.insert_moving(&mut batch)?;
        Ok(n)
    }

    /// Inserts lines, moving each `seq` on to the next free one; empties `batch`.
    fn insert_moving(&self, batch: &mut Vec<LogLine>) -> Result<u64, StoreError> {
        let mut c = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let mut n = 0;
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO entries (seq, namespace, kind, resource, execution, size, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(|e| self.err(e))?;
            let mut size = tx
                .prepare_cached(
                    "INSERT INTO sizes (namespace, kind, resource, bytes) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (namespace, kind, resource) DO UPDATE SET bytes = bytes + excluded.bytes",
                )
                .map_err(|e| self.err(e))?;
            for mut l in batch.drain(..) {
                let res = l.resource();
                let (kind, name) = kind_of(&res);
                loop {
                    l.time = crate::record::rfc3339_micros(l.seq);
                    let body = serde_json::to_string(&l).unwrap_or_default();
                    let added = ins
                        .execute(params![
                            l.seq as i64,
                            l.source.namespace,
                            kind,
                            name,
                            l.source.execution,
                            body.len() as i64,
                            body
                        ])
                        .map_err(|e| self.err(e))?;
                    if added > 0 {
                        size.execute(params![l.source.namespace, kind, name, body.len() as i64])
                            .map_err(|e| self.err(e))?;
                        n += 1;
                        break;
                    }
                    l.seq += 1;
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// Deletes every line older than the retention, as of `now` (microseconds since the
    /// epoch); returns how many went.
    pub fn expire(&self, now: u64) -> Result<u64, StoreError> {
        let cutoff = now.saturating_sub(self.limits.retention.as_micros() as u64) as i64;
        let mut c = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = c.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "UPDATE sizes SET bytes = bytes - COALESCE((SELECT SUM(size) FROM entries e
               WHERE e.seq < ?1 AND e.namespace = sizes.namespace AND e.kind = sizes.kind
               AND e.resource = sizes.resource), 0)",
            params![cutoff],
        )
        .map_err(|e| self.err(e))?;
        let n = tx
            .execute("DELETE FROM entries WHERE seq < ?1", params![cutoff])
            .map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM sizes WHERE bytes <= 0", [])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(n as u64)
    }

    /// Deletes a service's or job's lines (it was deleted).
    pub fn remove(&self, ns: &str, resource: &LogResource) -> Result<(), StoreError> {
        let (kind, name) = kind_of(resource);
        let mut c = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = c.transaction().map_err(|e| self.err(e))?;
        for sql in [
            "DELETE FROM entries WHERE namespace = ?1 AND kind = ?2 AND resource = ?3",
            "DELETE FROM sizes WHERE namespace = ?1 AND kind = ?2 AND resource = ?3",
        ] {
            tx.execute(sql, params![ns, kind, name])
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Bytes a service or job holds now.
    pub fn size_of(&self, ns: &str, resource: &LogResource) -> Result<u64, StoreError> {
        let (kind, name) = kind_of(resource);
        let c = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        c.query_row(
            "SELECT bytes FROM sizes WHERE namespace = ?1 AND kind = ?2 AND resource = ?3",
            params![ns, kind, name],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .map(|v| v.unwrap_or(0).max(0) as u64)
        .map_err(|e| self.err(e))
    }

    /// Reads the lines `scan` selects in its order, handing each to `each` until it returns
    /// false. Reads on a connection of their own, so that writers go on meanwhile; each row
    /// read is one step along an index.
    pub fn scan(
        &self,
        scan: &Scan,
        mut each: impl FnMut(LogLine) -> bool,
    ) -> Result<(), StoreError> {
        let c = Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| self.err(e))?;
        c.busy_timeout(Duration::from_secs(10))
            .map_err(|e| self.err(e))?;
        use rusqlite::types::Value as V;
        let mut sql = String::from("SELECT body FROM entries WHERE namespace = ?");
        let mut args = vec![V::Text(scan.namespace.clone())];
        let mut order = "namespace";
        if let Some(res) = &scan.resource {
            let (kind, name) = kind_of(res);
            sql.push_str(" AND kind = ? AND resource = ?");
            args.extend([V::Text(kind.into()), V::Text(name.into())]);
            order = "namespace, kind, resource";
            if let Some(e) = &scan.execution {
                // The literal term lets SQLite use the partial index (a job's lines only).
                sql.push_str(" AND execution = ? AND execution <> ''");
                args.push(V::Text(e.clone()));
                order = "namespace, kind, resource, execution";
            }
        }
        if let Some(s) = scan.since {
            sql.push_str(" AND seq >= ?");
            args.push(V::Integer(s.min(i64::MAX as u64) as i64));
        }
        if let Some(u) = scan.until {
            sql.push_str(" AND seq <= ?");
            args.push(V::Integer(u.min(i64::MAX as u64) as i64));
        }
        sql.push_str(&format!(
            " ORDER BY {order}, seq {}",
            if scan.newest_first { "DESC" } else { "ASC" }
        ));
        let mut q = c.prepare(&sql).map_err(|e| self.err(e))?;
        let mut rows = q
            .query(rusqlite::params_from_iter(args))
            .map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let body: String = r.get(0).map_err(|e| self.err(e))?;
            match serde_json::from_str::<LogLine>(&body) {
                Ok(l) => {
                    if !each(l) {
                        break;
                    }
                }
                Err(e) => tracing::warn!("skipping an unreadable log line: {e}"),
            }
        }
        Ok(())
    }

    /// The last `limit` lines of a service or job (of one execution, when given), oldest
    /// first.
    pub fn tail(
        &self,
        ns: &str,
        resource: &LogResource,
        execution: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LogLine>, StoreError> {
        let mut out = Vec::with_capacity(limit.min(10_000));
        if limit == 0 {
            return Ok(out);
        }
        self.scan(
            &Scan {
                namespace: ns.to_string(),
                resource: Some(resource.clone()),
                execution: execution.map(String::from),
                newest_first: true,
                ..Scan::default()
            },
            |l| {
                out.push(l);
                out.len() < limit
            },
        )?;
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::LogSource;

    fn line(seq: u64, service: &str, job: &str, execution: &str, text: &str) -> LogLine {
        LogLine {
            seq,
            time: crate::record::rfc3339_micros(seq),
            source: LogSource {
                namespace: "demo".into(),
                service: service.into(),
                job: job.into(),
                execution: execution.into(),
                ..LogSource::default()
            },
            stream: "stdout".into(),
            line: text.into(),
            http_request: None,
        }
    }

    fn texts(v: &[LogLine]) -> Vec<&str> {
        v.iter().map(|l| l.line.as_str()).collect()
    }

    fn open(dir: &Path, limits: Limits) -> LogStore {
        LogStore::open(&dir.join("logs.db"), limits).unwrap()
    }

    #[test]
    fn only_job_lines_are_in_the_execution_index_also_in_an_older_store() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("logs.db");
        {
            // A store as made before: the execution index held every line.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&SCHEMA.replace(" WHERE execution <> ''", ""))
                .unwrap();
        }
        let s = LogStore::open(&path, Limits::default()).unwrap();
        s.append(&[
            line(1, "web", "", "", "web 1"),
            line(2, "", "batch", "batch-a", "batch 2"),
        ])
        .unwrap();
        let c = Connection::open(&path).unwrap();
        let (sql, indexed): (String, i64) = c
            .query_row(
                "SELECT (SELECT sql FROM sqlite_master WHERE name = 'entries_by_execution'),
                        (SELECT COUNT(*) FROM entries INDEXED BY entries_by_execution
                         WHERE execution <> '')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(sql.contains("WHERE execution <> ''"), "{sql}");
        assert_eq!(indexed, 1);
        // An execution's lines are read through that index.
        let plan: Vec<String> = c
            .prepare(
                "EXPLAIN QUERY PLAN SELECT body FROM entries WHERE namespace = ?1 AND kind = ?2
                 AND resource = ?3 AND execution = ?4 AND execution <> '' ORDER BY namespace, kind,
                 resource, execution, seq DESC",
            )
            .unwrap()
            .query_map(params!["demo", "job", "batch", "batch-a"], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|p| p.contains("entries_by_execution")),
            "{plan:?}"
        );
        let batch = LogResource::Job("batch".into());
        assert_eq!(
            texts(&s.tail("demo", &batch, Some("batch-a"), 5).unwrap()),
            ["batch 2"]
        );
    }

    #[test]
    fn newest_lines_by_service_job_and_execution() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), Limits::default());
        let mut lines = Vec::new();
        for i in 1..=10u64 {
            lines.push(line(i, "web", "", "", &format!("web {i}")));
            lines.push(line(
                100 + i,
                "",
                "batch",
                if i % 2 == 0 { "batch-a" } else { "batch-b" },
                &format!("batch {i}"),
            ));
        }
        s.append(&lines).unwrap();
        s.append(&lines[..3]).unwrap(); // the same seqs again: skipped
        let web = LogResource::Service("web".into());
        let batch = LogResource::Job("batch".into());
        assert_eq!(
            texts(&s.tail("demo", &web, None, 3).unwrap()),
            ["web 8", "web 9", "web 10"]
        );
        assert_eq!(
            texts(&s.tail("demo", &batch, Some("batch-a"), 2).unwrap()),
            ["batch 8", "batch 10"]
        );
        assert_eq!(s.tail("demo", &web, None, 100).unwrap().len(), 10);
        assert!(s.tail("other", &web, None, 100).unwrap().is_empty());
        assert_eq!(s.last_seq().unwrap(), 110);
        // A time range, oldest first, across the namespace.
        let mut got = Vec::new();
        s.scan(
            &Scan {
                namespace: "demo".into(),
                since: Some(9),
                until: Some(102),
                ..Scan::default()
            },
            |l| {
                got.push(l.line);
                true
            },
        )
        .unwrap();
        assert_eq!(got, ["web 9", "web 10", "batch 1", "batch 2"]);
        let total = s.size_of("demo", &web).unwrap();
        assert!(total > 0);
        s.remove("demo", &web).unwrap();
        assert!(s.tail("demo", &web, None, 100).unwrap().is_empty());
        assert_eq!(s.size_of("demo", &web).unwrap(), 0);
        assert_eq!(s.tail("demo", &batch, None, 100).unwrap().len(), 10);
    }

    #[test]
    fn the_size_cap_drops_a_resources_oldest_lines_only() {
        let d = tempfile::tempdir().unwrap();
        let one = serde_json::to_string(&line(1, "web", "", "", "x"))
            .unwrap()
            .len() as u64;
        let s = open(
            d.path(),
            Limits {
                max_bytes_per_resource: one * 100,
                ..Limits::default()
            },
        );
        s.append(&[line(1, "other", "", "", "x")]).unwrap();
        for batch in 0..30u64 {
            let lines: Vec<LogLine> = (0..10)
                .map(|i| line(1000 + batch * 10 + i, "web", "", "", "x"))
                .collect();
            s.append(&lines).unwrap();
            assert!(
                s.size_of("demo", &LogResource::Service("web".into()))
                    .unwrap()
                    <= one * 100
            );
        }
        let kept = s
            .tail("demo", &LogResource::Service("web".into()), None, 1000)
            .unwrap();
        assert!(kept.len() >= 80 && kept.len() <= 100, "{}", kept.len());
        assert_eq!(kept.last().unwrap().seq, 1299, "the newest stay");
        let seqs: Vec<u64> = kept.iter().map(|l| l.seq).collect();
        assert_eq!(
            seqs,
            (1300 - kept.len() as u64..1300).collect::<Vec<_>>(),
            "the oldest went"
        );
        assert_eq!(
            s.tail("demo", &LogResource::Service("other".into()), None, 10)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn sizes_count_each_resources_stored_lines_in_a_mixed_batch() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), Limits::default());
        let len = |l: &LogLine| serde_json::to_string(l).unwrap().len() as u64;
        // Runs of one service, another, a job, then the first again; one seq twice.
        let batch = [
            line(1, "web", "", "", "a"),
            line(2, "web", "", "", "bb"),
            line(3, "api", "", "", "ccc"),
            line(4, "", "etl", "etl-1", "dddd"),
            line(5, "web", "", "", "eeeee"),
            line(2, "web", "", "", "already stored"),
        ];
        s.append(&batch).unwrap();
        s.append(&[line(5, "web", "", "", "again"), line(6, "api", "", "", "f")])
            .unwrap();
        let web = len(&batch[0]) + len(&batch[1]) + len(&batch[4]);
        let api = len(&batch[2]) + len(&line(6, "api", "", "", "f"));
        let service = |n: &str| LogResource::Service(n.into());
        assert_eq!(s.size_of("demo", &service("web")).unwrap(), web);
        assert_eq!(s.size_of("demo", &service("api")).unwrap(), api);
        assert_eq!(
            s.size_of("demo", &LogResource::Job("etl".into())).unwrap(),
            len(&batch[3])
        );
    }

    #[test]
    fn old_json_lines_files_import_in_time_order() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), Limits::default());
        s.append(&[line(1_790_000_000_000_000, "web", "", "", "already here")])
            .unwrap();
        let file = d.path().join("web.jsonl");
        let mut text = String::new();
        for (i, ms) in [(1, "00.000"), (2, "00.000"), (3, "01.500")] {
            let mut l = line(i, "web", "", "", &format!("old {i}"));
            l.time = format!("2026-01-01T00:00:{ms}Z");
            text.push_str(&serde_json::to_string(&l).unwrap());
            text.push('\n');
        }
        text.push_str("not json\n");
        std::fs::write(&file, text).unwrap();
        assert_eq!(s.import_jsonl(&file).unwrap(), 3);
        let all = s
            .tail("demo", &LogResource::Service("web".into()), None, 10)
            .unwrap();
        assert_eq!(texts(&all), ["old 1", "old 2", "old 3", "already here"]);
        let t0 = crate::filter::parse_time("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(all[0].seq, t0);
        assert_eq!(all[1].seq, t0 + 1, "moved on to the next free seq");
        assert_eq!(all[1].time, "2026-01-01T00:00:00.000001Z");
        assert_eq!(all[2].seq, t0 + 1_500_000);
    }

    #[test]
    fn retention_drops_old_lines() {
        let d = tempfile::tempdir().unwrap();
        let s = open(
            d.path(),
            Limits {
                retention: Duration::from_secs(10),
                ..Limits::default()
            },
        );
        let sec = 1_000_000;
        s.append(&[
            line(sec, "web", "", "", "old"),
            line(20 * sec, "web", "", "", "new"),
        ])
        .unwrap();
        let before = s
            .size_of("demo", &LogResource::Service("web".into()))
            .unwrap();
        assert_eq!(s.expire(25 * sec).unwrap(), 1);
        let left = s
            .tail("demo", &LogResource::Service("web".into()), None, 10)
            .unwrap();
        assert_eq!(texts(&left), ["new"]);
        let after = s
            .size_of("demo", &LogResource::Service("web".into()))
            .unwrap();
        assert!(after > 0 && after < before, "{before} -> {after}");
        assert_eq!(s.expire(31 * sec).unwrap(), 1);
        assert_eq!(
            s.size_of("demo", &LogResource::Service("web".into()))
                .unwrap(),
            0
        );
    }
}
