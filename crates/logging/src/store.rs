//! The log store: one SQLite database (`DATA/logs/logs.db`, WAL). A row holds a run of one
//! stream's lines (one service's or job's, of one execution): up to [`ROW_LINES`] lines,
//! taken in within [`ROW_SPAN`] microseconds, in `seq` order, as JSON lines. It is keyed by
//! its first line's `seq` (the time it was taken in, in microseconds, unique) and names the
//! last in `last` (NULL for a row of one line, as every row of earlier stores). A busy stream
//! (one entry per request) so costs one insert per run instead of one per line; a quiet one
//! writes rows of one line. A row names its namespace and its stream by integer ids (see
//! `SCHEMA`). Indexes by namespace, by stream, and by execution, each ordered by `seq`, make
//! the newest N lines, a time range or an execution's lines cost in proportion to what is
//! read, however long the history. One stream's rows of one execution never overlap, so a
//! read of a service or of a job execution takes rows as they come; a read of a namespace or
//! of a whole job merges its rows' lines back into `seq` order (rows of different streams or
//! executions overlap in time, by at most [`ROW_SPAN`]). Lines older than the
//! retention go, oldest first, a row at a time; so do a service's or job's oldest rows when
//! it holds more than its size cap (a per-stream byte count is kept in the same transactions
//! as the lines, so the cap costs nothing to check).
//!
//! Lines come to [`LogStore::append`] in `seq` order per stream, as the log sink sends them.
//! A line whose `seq` is not past its stream's newest stored line is skipped when stored
//! already; else it goes into its place in the row whose span it falls within, or into a row
//! of its own between rows. Lines imported from the files an older server kept
//! ([`LogStore::import_jsonl`]) are older than any row, and go in rows of one line.

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

/// Most lines in one row.
pub const ROW_LINES: usize = 64;

/// Longest time from a row's first line to its last, in microseconds (`seq` units). A read
/// in `seq` order can hand on a line once the rows still to come cannot hold an earlier one
/// (later ones, newest first): rows come in order of their first `seq`, so that bound is the
/// next row's first `seq` (plus this span, newest first).
pub const ROW_SPAN: u64 = 5_000;

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

/// The log store at one path: one writing connection (behind a lock, with the ids it has
/// looked up) and a read-only connection per [`LogStore::scan`]. Errors: [`StoreError`].
pub struct LogStore {
    path: PathBuf,
    writer: Mutex<Writer>,
    limits: Limits,
}

/// The writing connection, with the ids it has looked up.
struct Writer {
    conn: Connection,
    /// Ids by namespace name, then by service or job name: a line's ids are found without
    /// making a key.
    ids: HashMap<String, NamespaceIds>,
    /// The newest `seq` stored, by stream id and execution, as far as this writer has looked
    /// or written (a line at or before it is checked against the stored rows).
    newest: HashMap<(i64, String), u64>,
}

/// A namespace's id, and the ids of its services' and jobs' streams.
#[derive(Default)]
struct NamespaceIds {
    id: i64,
    services: HashMap<String, i64>,
    jobs: HashMap<String, i64>,
}

/// The store's tables. A row of `lines` holds `n` lines of one stream (and execution), from
/// `seq` to `last` (NULL: one line), as JSON lines; `size` is the bytes of its lines' JSON. It
/// names its namespace and its service's or job's stream by integer ids, so that its two
/// index entries hold two integers and its `seq`, and are placed by comparing integers; names
/// are kept once, in `namespaces` and `streams`. `streams` also holds each stream's byte
/// count.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS namespaces (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    resource TEXT NOT NULL,
    bytes INTEGER NOT NULL DEFAULT 0,
    UNIQUE (namespace, kind, resource)
);
CREATE TABLE IF NOT EXISTS lines (
    seq INTEGER PRIMARY KEY,
    ns INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    execution TEXT NOT NULL,
    size INTEGER NOT NULL,
    body TEXT NOT NULL,
    last INTEGER,
    n INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS lines_by_namespace ON lines (ns, seq);
CREATE INDEX IF NOT EXISTS lines_by_stream ON lines (stream, seq);
CREATE INDEX IF NOT EXISTS lines_by_execution
    ON lines (stream, execution, seq) WHERE execution <> '';
";

/// Moves the lines of a store made with names in every row (tables `entries` and `sizes`)
/// into [`SCHEMA`]'s tables, in one transaction, and drops the old tables. A no-op for a
/// store without `entries`.
const MIGRATE_ENTRIES: &str = "
BEGIN;
INSERT OR IGNORE INTO namespaces (name) SELECT DISTINCT namespace FROM entries;
INSERT OR IGNORE INTO streams (namespace, kind, resource, bytes)
    SELECT namespace, kind, resource, bytes FROM sizes;
INSERT OR IGNORE INTO streams (namespace, kind, resource)
    SELECT DISTINCT namespace, kind, resource FROM entries;
INSERT OR IGNORE INTO lines (seq, ns, stream, execution, size, body)
    SELECT e.seq, n.id, s.id, e.execution, e.size, e.body FROM entries e
    JOIN namespaces n ON n.name = e.namespace
    JOIN streams s ON s.namespace = e.namespace AND s.kind = e.kind AND s.resource = e.resource;
DROP TABLE entries;
DROP TABLE sizes;
COMMIT;
";

/// Inserts one line (`seq`, namespace id, stream id, execution, size, body); a `seq` already
/// stored is skipped.
const INSERT_LINE: &str = "INSERT OR IGNORE INTO lines (seq, ns, stream, execution, size, body)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Inserts a row of several lines: as [`INSERT_LINE`], then the last line's `seq` and the
/// number of lines.
const INSERT_ROW: &str =
    "INSERT OR IGNORE INTO lines (seq, ns, stream, execution, size, body, last, n)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// The columns a store made before rows of several lines lacks, added on opening.
const ADD_ROW_COLUMNS: &str = "
ALTER TABLE lines ADD COLUMN last INTEGER;
ALTER TABLE lines ADD COLUMN n INTEGER NOT NULL DEFAULT 1;
";

/// Adds bytes (`?2`) to a stream's (`?1`) count.
const ADD_BYTES: &str = "UPDATE streams SET bytes = bytes + ?2 WHERE id = ?1";

/// Runs [`INSERT_LINE`] for line `l` of namespace `ns` and stream `stream`, stored as `body`;
/// the rows added (0 when its `seq` was taken).
fn insert_line(
    ins: &mut rusqlite::CachedStatement<'_>,
    l: &LogLine,
    (ns, stream): (i64, i64),
    body: &str,
) -> rusqlite::Result<usize> {
    ins.execute(params![
        l.seq as i64,
        ns,
        stream,
        l.source.execution,
        body.len() as i64,
        body
    ])
}

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

fn has_column(c: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

fn table_exists(c: &Connection, name: &str) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

impl Writer {
    /// The ids of namespace `ns` and of its `kind` (`service` or `job`) `name`'s stream,
    /// made if new, remembered in `ids` (the [`Writer`]'s). Runs within the caller's
    /// transaction: if that fails, the caller clears `ids`, which may hold ids its rollback
    /// took back.
    fn ids(
        conn: &Connection,
        ids: &mut HashMap<String, NamespaceIds>,
        ns: &str,
        kind: &str,
        name: &str,
    ) -> rusqlite::Result<(i64, i64)> {
        if let Some(n) = ids.get(ns) {
            let streams = if kind == "job" { &n.jobs } else { &n.services };
            if let Some(&stream) = streams.get(name) {
                return Ok((n.id, stream));
            }
        }
        let n = match ids.get_mut(ns) {
            Some(n) => n,
            None => {
                conn.prepare_cached("INSERT OR IGNORE INTO namespaces (name) VALUES (?1)")?
                    .execute([ns])?;
                let id = conn
                    .prepare_cached("SELECT id FROM namespaces WHERE name = ?1")?
                    .query_row([ns], |r| r.get(0))?;
                ids.entry(ns.to_string()).or_insert(NamespaceIds {
                    id,
                    ..NamespaceIds::default()
                })
            }
        };
        conn.prepare_cached(
            "INSERT OR IGNORE INTO streams (namespace, kind, resource) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![ns, kind, name])?;
        let stream = conn
            .prepare_cached(
                "SELECT id FROM streams WHERE namespace = ?1 AND kind = ?2 AND resource = ?3",
            )?
            .query_row(params![ns, kind, name], |r| r.get(0))?;
        let streams = if kind == "job" {
            &mut n.jobs
        } else {
            &mut n.services
        };
        streams.insert(name.to_string(), stream);
        Ok((n.id, stream))
    }
}

/// A stream and execution's rows: where [`LogStore::append`] puts one run of lines.
struct Key<'a> {
    ns: i64,
    stream: i64,
    execution: &'a str,
}

impl Key<'_> {
    /// The rows' condition and order, along the index by stream, or by execution for a job's
    /// lines (the literal term lets SQLite use that partial index).
    fn rows_sql(&self, cond: &str) -> String {
        match self.execution.is_empty() {
            true => format!(
                "SELECT seq, last, body FROM lines WHERE stream = ?1 AND execution = ?2 {cond}
                 ORDER BY stream, seq DESC"
            ),
            false => format!(
                "SELECT seq, last, body FROM lines
                 WHERE stream = ?1 AND execution = ?2 AND execution <> '' {cond}
                 ORDER BY stream, execution, seq DESC"
            ),
        }
    }

    /// The newest `seq` stored (0 for none): the newest row's last line (one stream's rows,
    /// of one execution, do not overlap).
    fn newest(&self, tx: &Connection) -> rusqlite::Result<u64> {
        let mut q = tx.prepare_cached(&self.rows_sql(""))?;
        let mut rows = q.query(params![self.stream, self.execution])?;
        let Some(r) = rows.next()? else {
            return Ok(0);
        };
        let first: i64 = r.get(0)?;
        let last = r.get::<_, Option<i64>>(1)?.unwrap_or(first);
        Ok(last.max(0) as u64)
    }

    /// Stores line `l`, which is not past the newest stored: skipped if a row holds it
    /// already; else put in its place in the row whose span it falls within (so that one
    /// stream's rows never overlap, and a read of one stream needs no merge), or in a row of
    /// its own between rows. Such a row may so hold more than [`ROW_LINES`] lines.
    fn put_late(&self, rows: &mut Rows<'_, '_>, l: &LogLine) -> rusqlite::Result<()> {
        let found = {
            let mut q = rows
                .tx
                .prepare_cached(&self.rows_sql("AND seq <= ?3 AND seq >= ?4"))?;
            let mut found = q.query(params![
                self.stream,
                self.execution,
                l.seq as i64,
                l.seq.saturating_sub(ROW_SPAN) as i64
            ])?;
            let mut covering = None;
            while let Some(r) = found.next()? {
                let first: i64 = r.get(0)?;
                let last = r.get::<_, Option<i64>>(1)?.unwrap_or(first);
                if last >= l.seq as i64 {
                    covering = Some((first, r.get::<_, String>(2)?));
                    break;
                }
            }
            covering
        };
        let Some((first, body)) = found else {
            return rows.put(self, &[l]);
        };
        let mut lines: Vec<&str> = body.split('\n').collect();
        let at = lines.partition_point(|t| line_seq(t).is_some_and(|q| q < l.seq));
        if lines.get(at).and_then(|t| line_seq(t)) == Some(l.seq) {
            return Ok(());
        }
        let mut json = Vec::new();
        l.write_json(&mut json);
        let json = String::from_utf8(json).unwrap_or_default();
        lines.insert(at, &json);
        rows.tx
            .prepare_cached(
                "UPDATE lines SET body = ?2, size = size + ?3, n = n + 1,
                 last = MAX(COALESCE(last, seq), ?4) WHERE seq = ?1",
            )?
            .execute(params![
                first,
                lines.join("\n"),
                json.len() as i64,
                l.seq as i64
            ])?;
        *rows.added.entry(self.stream).or_default() += json.len() as i64;
        Ok(())
    }
}

/// Writes runs of lines as rows, counting the bytes added per stream.
struct Rows<'t, 'a> {
    tx: &'t rusqlite::Transaction<'t>,
    body: Vec<u8>,
    added: &'a mut HashMap<i64, i64>,
}

impl Rows<'_, '_> {
    /// Stores `run` (in `seq` order, within [`ROW_SPAN`]) as one row; a run of one line as a
    /// row of one line. A run whose first `seq` is taken goes line by line instead.
    fn put(&mut self, key: &Key<'_>, run: &[&LogLine]) -> rusqlite::Result<()> {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return Ok(());
        };
        self.body.clear();
        for l in run {
            if !self.body.is_empty() {
                self.body.push(b'\n');
            }
            // JSON in UTF-8, without raw newlines.
            l.write_json(&mut self.body);
        }
        let text = std::str::from_utf8(&self.body).unwrap_or_default();
        // The lines' own bytes, without the newlines between them.
        let size = (text.len() + 1 - run.len()) as i64;
        let stored = if run.len() == 1 {
            let mut ins = self.tx.prepare_cached(INSERT_LINE)?;
            insert_line(&mut ins, first, (key.ns, key.stream), text)?
        } else {
            self.tx.prepare_cached(INSERT_ROW)?.execute(params![
                first.seq as i64,
                key.ns,
                key.stream,
                key.execution,
                size,
                text,
                last.seq as i64,
                run.len() as i64
            ])?
        };
        if stored > 0 {
            *self.added.entry(key.stream).or_default() += size;
        } else if run.len() > 1 {
            for l in run {
                self.put(key, &[l])?;
            }
        }
        Ok(())
    }
}

/// The `seq` a stored line's JSON begins with (`{"seq":N,`, as a [`LogLine`] serializes),
/// read without parsing the rest.
fn line_seq(json: &str) -> Option<u64> {
    let digits = json.strip_prefix("{\"seq\":")?;
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits[..end].parse().ok()
}

/// Puts the lines of rows read in order of their first `seq` back into `seq` order. Rows of
/// different streams (or of a job's executions) overlap in time by at most [`ROW_SPAN`]; one
/// stream's rows, of one execution, never overlap.
struct Merge {
    newest_first: bool,
    /// How far a row still to come may reach past its first `seq`: [`ROW_SPAN`] when the
    /// rows read are of several streams or executions, 0 when of one.
    overlap: u64,
    /// Lines read and not handed on yet, by `seq`.
    waiting: std::collections::BTreeMap<u64, String>,
}

impl Merge {
    fn new(newest_first: bool, overlap: u64) -> Merge {
        Merge {
            newest_first,
            overlap,
            waiting: std::collections::BTreeMap::new(),
        }
    }

    fn take(&mut self, seq: u64, json: String) {
        self.waiting.insert(seq, json);
    }

    /// Hands on, in order, every waiting line that no row from one beginning at `next` on
    /// can precede; false once `each` wants no more.
    fn hand_on(&mut self, next: u64, each: &mut impl FnMut(LogLine) -> bool) -> bool {
        loop {
            let ready = match self.newest_first {
                false => self.waiting.first_key_value().filter(|(&s, _)| s < next),
                true => self
                    .waiting
                    .last_key_value()
                    .filter(|(&s, _)| s > next.saturating_add(self.overlap) || next == 0),
            };
            let Some((&seq, _)) = ready else {
                return true;
            };
            let Some(json) = self.waiting.remove(&seq) else {
                return true;
            };
            match serde_json::from_str::<LogLine>(&json) {
                Ok(l) => {
                    if !each(l) {
                        return false;
                    }
                }
                Err(e) => tracing::warn!("skipping an unreadable log line: {e}"),
            }
        }
    }
}

impl LogStore {
    /// Opens (creating it and its directory if needed) the store at `path`, moving the lines
    /// of a store made with names in every row into the current tables first.
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
        let conn = Connection::open(path).map_err(|e| StoreError::Sqlite {
            path: path.to_path_buf(),
            source: e,
        })?;
        let store = LogStore {
            path: path.to_path_buf(),
            writer: Mutex::new(Writer {
                conn,
                ids: HashMap::new(),
                newest: HashMap::new(),
            }),
            limits,
        };
        {
            let w = store.writer.lock().unwrap_or_else(|p| p.into_inner());
            let c = &w.conn;
            c.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000; PRAGMA cache_size = -16384;",
            )
            .and_then(|_| c.execute_batch(SCHEMA))
            .and_then(|_| has_column(c, "lines", "last"))
            .and_then(|has| match has {
                true => Ok(()),
                false => c.execute_batch(ADD_ROW_COLUMNS),
            })
            .and_then(|_| table_exists(c, "entries"))
            .and_then(|old| match old {
                true => c.execute_batch(MIGRATE_ENTRIES).inspect_err(|_| {
                    let _ = c.execute_batch("ROLLBACK");
                }),
                false => Ok(()),
            })
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

    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store's limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The highest `seq` stored (0 when empty): new lines must take higher ones.
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        self.writer()
            .conn
            .query_row(
                "SELECT COALESCE(MAX(COALESCE(last, seq)), 0) FROM lines
                 WHERE seq >= (SELECT MAX(seq) FROM lines) - ?1",
                [ROW_SPAN as i64],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v as u64)
            .map_err(|e| self.err(e))
    }

    /// Appends lines in one transaction, then trims every service or job they touched to its
    /// size cap. A stream's lines go in rows of up to [`ROW_LINES`] (see the module's doc); a
    /// line already stored is skipped.
    pub fn append(&self, lines: &[LogLine]) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut w = self.writer();
        let Writer { conn, ids, newest } = &mut *w;
        let added = Self::insert(conn, ids, newest, lines).map_err(|e| {
            ids.clear();
            newest.clear();
            self.err(e)
        })?;
        for stream in added {
            self.trim(conn, stream)?;
        }
        Ok(())
    }

    /// [`LogStore::append`]'s transaction; returns the streams it added to.
    fn insert(
        conn: &mut Connection,
        ids: &mut HashMap<String, NamespaceIds>,
        newest: &mut HashMap<(i64, String), u64>,
        lines: &[LogLine],
    ) -> rusqlite::Result<Vec<i64>> {
        let tx = conn.transaction()?;
        let mut added: HashMap<i64, i64> = HashMap::new();
        {
            // The lines by stream and execution, in the order they came; lines come in runs
            // from one service or job, whose ids are kept.
            let mut groups: Vec<(Key<'_>, Vec<&LogLine>)> = Vec::new();
            let mut group_of: HashMap<(i64, &str), usize> = HashMap::new();
            let mut last: Option<(&LogLine, (i64, i64))> = None;
            for l in lines {
                let (kind, name) = kind_and_name(l);
                let (ns, stream) = match last {
                    Some((prev, found))
                        if prev.source.namespace == l.source.namespace
                            && kind_and_name(prev) == (kind, name) =>
                    {
                        found
                    }
                    _ => Writer::ids(&tx, ids, &l.source.namespace, kind, name)?,
                };
                last = Some((l, (ns, stream)));
                let execution = l.source.execution.as_str();
                let g = *group_of.entry((stream, execution)).or_insert_with(|| {
                    groups.push((
                        Key {
                            ns,
                            stream,
                            execution,
                        },
                        Vec::new(),
                    ));
                    groups.len() - 1
                });
                groups[g].1.push(l);
            }
            let mut rows = Rows {
                tx: &tx,
                body: Vec::new(),
                added: &mut added,
            };
            for (key, mut group) in groups {
                group.sort_by_key(|l| l.seq);
                let stored = (key.stream, key.execution.to_string());
                let mut top = match newest.get(&stored) {
                    Some(&t) => t,
                    None => key.newest(&tx)?,
                };
                let mut run: Vec<&LogLine> = Vec::with_capacity(group.len().min(ROW_LINES));
                for l in group {
                    if l.seq > top {
                        let full = run.len() == ROW_LINES
                            || run.first().is_some_and(|f| l.seq - f.seq > ROW_SPAN);
                        if full {
                            rows.put(&key, &run)?;
                            run.clear();
                        }
                        run.push(l);
                        top = l.seq;
                    } else {
                        rows.put(&key, &run)?;
                        run.clear();
                        key.put_late(&mut rows, l)?;
                    }
                }
                rows.put(&key, &run)?;
                newest.insert(stored, top);
            }
            let mut size = tx.prepare_cached(ADD_BYTES)?;
            for (stream, bytes) in &added {
                size.execute(params![stream, bytes])?;
            }
        }
        tx.commit()?;
        Ok(added.into_keys().collect())
    }

    /// Deletes a stream's oldest lines while it holds more than its cap, down to 90 % of it,
    /// reading only the rows it deletes.
    fn trim(&self, c: &mut Connection, stream: i64) -> Result<(), StoreError> {
        let cap = self.limits.max_bytes_per_resource as i64;
        let bytes: i64 = c
            .prepare_cached("SELECT bytes FROM streams WHERE id = ?1")
            .and_then(|mut q| q.query_row([stream], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))?
            .unwrap_or(0);
        if bytes <= cap {
            return Ok(());
        }
        let excess = bytes - cap / 10 * 9;
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let (last, freed) = {
            let mut q = tx
                .prepare_cached("SELECT seq, size FROM lines WHERE stream = ?1 ORDER BY seq")
                .map_err(|e| self.err(e))?;
            let mut rows = q.query([stream]).map_err(|e| self.err(e))?;
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
                "DELETE FROM lines WHERE stream = ?1 AND seq <= ?2",
                params![stream, last],
            )
            .map_err(|e| self.err(e))?;
            tx.execute(
                "UPDATE streams SET bytes = bytes - ?2 WHERE id = ?1",
                params![stream, freed],
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
        let mut w = self.writer();
        let Writer { conn, ids, .. } = &mut *w;
        let mut go = || -> rusqlite::Result<u64> {
            let tx = conn.transaction()?;
            let mut n = 0;
            {
                let mut ins = tx.prepare_cached(INSERT_LINE)?;
                let mut size = tx.prepare_cached(ADD_BYTES)?;
                for mut l in batch.drain(..) {
                    let (kind, name) = kind_and_name(&l);
                    let found = Writer::ids(&tx, ids, &l.source.namespace, kind, name)?;
                    loop {
                        l.time = crate::record::rfc3339_micros(l.seq);
                        let body = serde_json::to_string(&l).unwrap_or_default();
                        if insert_line(&mut ins, &l, found, &body)? > 0 {
                            size.execute(params![found.1, body.len() as i64])?;
                            n += 1;
                            break;
                        }
                        l.seq += 1;
                    }
                }
            }
            tx.commit()?;
            Ok(n)
        };
        let n = go();
        if n.is_err() {
            ids.clear();
        }
        n.map_err(|e| self.err(e))
    }

    /// Deletes every row whose lines are all older than the retention, as of `now`
    /// (microseconds since the epoch); returns how many lines went.
    pub fn expire(&self, now: u64) -> Result<u64, StoreError> {
        let cutoff = now.saturating_sub(self.limits.retention.as_micros() as u64) as i64;
        let mut w = self.writer();
        let tx = w.conn.transaction().map_err(|e| self.err(e))?;
        // Whole rows: a row whose last line is within the retention stays (for at most
        // ROW_SPAN longer).
        const OLD: &str = "seq < ?1 AND COALESCE(last, seq) < ?1";
        tx.execute(
            &format!(
                "UPDATE streams SET bytes = MAX(0, bytes - COALESCE((SELECT SUM(size) FROM lines l
                   WHERE l.stream = streams.id AND {OLD}), 0))"
            ),
            params![cutoff],
        )
        .map_err(|e| self.err(e))?;
        let n: i64 = tx
            .query_row(
                &format!("SELECT COALESCE(SUM(n), 0) FROM lines WHERE {OLD}"),
                params![cutoff],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        tx.execute(&format!("DELETE FROM lines WHERE {OLD}"), params![cutoff])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(n as u64)
    }

    /// Deletes a service's or job's lines, and its stream (it was deleted).
    pub fn remove(&self, ns: &str, resource: &LogResource) -> Result<(), StoreError> {
        let (kind, name) = kind_of(resource);
        let mut w = self.writer();
        // Its id may be given to another stream once its row is gone.
        w.ids.clear();
        w.newest.clear();
        let tx = w.conn.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "DELETE FROM lines WHERE stream IN
               (SELECT id FROM streams WHERE namespace = ?1 AND kind = ?2 AND resource = ?3)",
            params![ns, kind, name],
        )
        .map_err(|e| self.err(e))?;
        tx.execute(
            "DELETE FROM streams WHERE namespace = ?1 AND kind = ?2 AND resource = ?3",
            params![ns, kind, name],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Bytes a service or job holds now.
    pub fn size_of(&self, ns: &str, resource: &LogResource) -> Result<u64, StoreError> {
        let (kind, name) = kind_of(resource);
        self.writer()
            .conn
            .query_row(
                "SELECT bytes FROM streams WHERE namespace = ?1 AND kind = ?2 AND resource = ?3",
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
        // The names' ids first: a namespace, service or job never written to has no lines.
        let (mut sql, mut args, order) = match &scan.resource {
            None => {
                let ns: Option<i64> = c
                    .query_row(
                        "SELECT id FROM namespaces WHERE name = ?1",
                        [&scan.namespace],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(|e| self.err(e))?;
                let Some(ns) = ns else { return Ok(()) };
                (
                    String::from("SELECT seq, body FROM lines WHERE ns = ?"),
                    vec![V::Integer(ns)],
                    "ns",
                )
            }
            Some(res) => {
                let (kind, name) = kind_of(res);
                let stream: Option<i64> = c
                    .query_row(
                        "SELECT id FROM streams WHERE namespace = ?1 AND kind = ?2 AND resource = ?3",
                        params![scan.namespace, kind, name],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(|e| self.err(e))?;
                let Some(stream) = stream else { return Ok(()) };
                let mut sql = String::from("SELECT seq, body FROM lines WHERE stream = ?");
                let mut args = vec![V::Integer(stream)];
                let mut order = "stream";
                if let Some(e) = &scan.execution {
                    // The literal term lets SQLite use the partial index (a job's lines only).
                    sql.push_str(" AND execution = ? AND execution <> ''");
                    args.push(V::Text(e.clone()));
                    order = "stream, execution";
                }
                (sql, args, order)
            }
        };
        // A row holding lines from `since` on may begin up to ROW_SPAN before it.
        if let Some(s) = scan.since {
            sql.push_str(" AND seq >= ?");
            args.push(V::Integer(
                s.saturating_sub(ROW_SPAN).min(i64::MAX as u64) as i64
            ));
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
        let (since, until) = (scan.since.unwrap_or(0), scan.until.unwrap_or(u64::MAX));
        // One stream's rows of one execution (a service's, or a job execution's) never
        // overlap, and are read as they come.
        let one_key = match &scan.resource {
            Some(LogResource::Service(_)) => true,
            Some(LogResource::Job(_)) => scan.execution.is_some(),
            None => false,
        };
        let mut merge = Merge::new(scan.newest_first, if one_key { 0 } else { ROW_SPAN });
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let first: i64 = r.get(0).map_err(|e| self.err(e))?;
            if !merge.hand_on(first.max(0) as u64, &mut each) {
                return Ok(());
            }
            let body: String = r.get(1).map_err(|e| self.err(e))?;
            for text in body.split('\n') {
                match line_seq(text) {
                    Some(seq) if seq < since || seq > until => {}
                    Some(seq) => merge.take(seq, text.to_string()),
                    None => tracing::warn!("skipping an unreadable log line"),
                }
            }
        }
        merge.hand_on(if scan.newest_first { 0 } else { u64::MAX }, &mut each);
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

    /// The tables of a store made with names in every row, before ids.
    const NAMED_SCHEMA: &str = "
        CREATE TABLE entries (
            seq INTEGER PRIMARY KEY, namespace TEXT NOT NULL, kind TEXT NOT NULL,
            resource TEXT NOT NULL, execution TEXT NOT NULL, size INTEGER NOT NULL,
            body TEXT NOT NULL);
        CREATE INDEX entries_by_namespace ON entries (namespace, seq);
        CREATE INDEX entries_by_resource ON entries (namespace, kind, resource, seq);
        CREATE INDEX entries_by_execution ON entries (namespace, kind, resource, execution, seq);
        CREATE TABLE sizes (
            namespace TEXT NOT NULL, kind TEXT NOT NULL, resource TEXT NOT NULL,
            bytes INTEGER NOT NULL, PRIMARY KEY (namespace, kind, resource));";

    #[test]
    fn a_store_with_names_in_every_row_moves_to_ids_and_reads_the_same() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("logs.db");
        let old = [
            line(1, "web", "", "", "web 1"),
            line(2, "", "batch", "batch-a", "batch 2"),
            line(3, "web", "", "", "web 3"),
        ];
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(NAMED_SCHEMA).unwrap();
            for l in &old {
                let body = serde_json::to_string(l).unwrap();
                let (kind, name) = kind_and_name(l);
                c.execute(
                    "INSERT INTO entries VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        l.seq as i64,
                        l.source.namespace,
                        kind,
                        name,
                        l.source.execution,
                        body.len() as i64,
                        body
                    ],
                )
                .unwrap();
                c.execute(
                    "INSERT INTO sizes VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO UPDATE SET bytes = bytes + ?4",
                    params![l.source.namespace, kind, name, body.len() as i64],
                )
                .unwrap();
            }
        }
        let web = LogResource::Service("web".into());
        let batch = LogResource::Job("batch".into());
        let s = LogStore::open(&path, Limits::default()).unwrap();
        let size = |l: &LogLine| serde_json::to_string(l).unwrap().len() as u64;
        assert_eq!(
            s.size_of("demo", &web).unwrap(),
            size(&old[0]) + size(&old[2])
        );
        assert_eq!(s.size_of("demo", &batch).unwrap(), size(&old[1]));
        s.append(&[line(4, "web", "", "", "web 4")]).unwrap();
        assert_eq!(
            texts(&s.tail("demo", &web, None, 10).unwrap()),
            ["web 1", "web 3", "web 4"]
        );
        assert_eq!(
            texts(&s.tail("demo", &batch, Some("batch-a"), 10).unwrap()),
            ["batch 2"]
        );
        assert_eq!(s.last_seq().unwrap(), 4);
        drop(s);
        let c = Connection::open(&path).unwrap();
        let tables: Vec<String> = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(tables, ["lines", "namespaces", "streams"]);
        // Opened again, nothing moves twice.
        let s = LogStore::open(&path, Limits::default()).unwrap();
        assert_eq!(s.tail("demo", &web, None, 10).unwrap().len(), 3);
    }

    #[test]
    fn reads_go_along_the_integer_indexes() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("logs.db");
        let s = LogStore::open(&path, Limits::default()).unwrap();
        s.append(&[
            line(1, "web", "", "", "web 1"),
            line(2, "", "batch", "batch-a", "batch 2"),
        ])
        .unwrap();
        let c = Connection::open(&path).unwrap();
        let plan = |sql: &str| -> String {
            c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
                .join("; ")
        };
        for (sql, index) in [
            ("SELECT body FROM lines WHERE ns = 1 ORDER BY ns, seq DESC", "lines_by_namespace"),
            ("SELECT body FROM lines WHERE stream = 1 AND seq >= 5 ORDER BY stream, seq DESC", "lines_by_stream"),
            (
                "SELECT body FROM lines WHERE stream = 2 AND execution = 'batch-a' AND execution <> '' ORDER BY stream, execution, seq DESC",
                "lines_by_execution",
            ),
        ] {
            let p = plan(sql);
            assert!(p.contains(index) && !p.contains("TEMP B-TREE"), "{sql}: {p}");
        }
        // Only job lines are in the execution index.
        let indexed: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM lines INDEXED BY lines_by_execution WHERE execution <> ''",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexed, 1);
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
        // A service made again under the same name starts empty, and its lines and bytes
        // are its own (its stream is made anew, not the removed one's id reused from memory).
        let again = line(200, "web", "", "", "web again");
        s.append(std::slice::from_ref(&again)).unwrap();
        assert_eq!(
            texts(&s.tail("demo", &web, None, 100).unwrap()),
            ["web again"]
        );
        assert_eq!(
            s.size_of("demo", &web).unwrap(),
            serde_json::to_string(&again).unwrap().len() as u64
        );
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
    /// Rows in the store, and lines in them.
    fn rows_and_lines(path: &Path) -> (i64, i64) {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT COUNT(*), SUM(n) FROM lines", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
    }

    #[test]
    fn a_busy_streams_lines_share_rows_and_read_back_in_seq_order() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), Limits::default());
        // A service's steady stream, another's, and a job's two executions, interleaved.
        let mut lines = Vec::new();
        for i in 0..200u64 {
            let seq = 1_000 + i * 3;
            lines.push(line(seq, "web", "", "", &format!("web {seq}")));
            if i % 4 == 0 {
                lines.push(line(seq + 1, "api", "", "", &format!("api {}", seq + 1)));
            }
            if i % 5 == 0 {
                let e = if i % 10 == 0 { "etl-a" } else { "etl-b" };
                lines.push(line(seq + 2, "", "etl", e, &format!("etl {}", seq + 2)));
            }
        }
        s.append(&lines[..150]).unwrap();
        s.append(&lines[150..]).unwrap();
        let (rows, stored) = rows_and_lines(&d.path().join("logs.db"));
        assert_eq!(stored as usize, lines.len());
        assert!(rows <= 12, "{rows} rows for {} lines", lines.len());
        let web = LogResource::Service("web".into());
        let seqs = |v: &[LogLine]| v.iter().map(|l| l.seq).collect::<Vec<_>>();
        let want: Vec<u64> = (100..200).map(|i| 1_000 + i * 3).collect();
        assert_eq!(seqs(&s.tail("demo", &web, None, 100).unwrap()), want);
        let etl = LogResource::Job("etl".into());
        let a = s.tail("demo", &etl, Some("etl-a"), 100).unwrap();
        assert_eq!(a.len(), 20);
        assert!(a.iter().all(|l| l.source.execution == "etl-a"));
        // The job's two executions' rows overlap in time; read together, in order.
        let both = seqs(&s.tail("demo", &etl, None, 100).unwrap());
        assert_eq!(both.len(), 40);
        assert!(both.windows(2).all(|w| w[0] < w[1]), "{both:?}");
        // The whole namespace, both ways, and a time range that begins and ends inside rows.
        let mut all = seqs(&lines);
        all.sort_unstable();
        for newest_first in [false, true] {
            for (since, until) in [(None, None), (Some(1_100), Some(1_301))] {
                let mut got = Vec::new();
                s.scan(
                    &Scan {
                        namespace: "demo".into(),
                        newest_first,
                        since,
                        until,
                        ..Scan::default()
                    },
                    |l| {
                        got.push(l.seq);
                        true
                    },
                )
                .unwrap();
                let mut want: Vec<u64> = all
                    .iter()
                    .copied()
                    .filter(|q| since.is_none_or(|s| *q >= s) && until.is_none_or(|u| *q <= u))
                    .collect();
                if newest_first {
                    want.reverse();
                }
                assert_eq!(
                    got, want,
                    "newest first: {newest_first}, {since:?}..{until:?}"
                );
            }
        }
        assert_eq!(s.last_seq().unwrap(), *all.last().unwrap());
    }

    #[test]
    fn rows_end_at_their_span_and_a_line_taken_in_late_joins_the_row_it_falls_in() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("logs.db");
        let s = open(d.path(), Limits::default());
        let web = LogResource::Service("web".into());
        let far = ROW_SPAN + 1;
        s.append(&[
            line(10, "web", "", "", "a"),
            line(20, "web", "", "", "b"),
            line(20 + far, "web", "", "", "c"),
        ])
        .unwrap();
        assert_eq!(rows_and_lines(&path), (2, 3), "c is past a's row's span");
        let before = s.size_of("demo", &web).unwrap();
        // 20 again is stored already: skipped. 15 is new, though earlier than the newest: it
        // goes into the row of 10 and 20. 21 falls between the two rows: a row of its own.
        s.append(&[
            line(20, "web", "", "", "b again"),
            line(15, "web", "", "", "late"),
            line(21, "web", "", "", "later"),
        ])
        .unwrap();
        assert_eq!(rows_and_lines(&path), (3, 5));
        let json = |l: LogLine| serde_json::to_string(&l).unwrap().len() as u64;
        assert_eq!(
            s.size_of("demo", &web).unwrap(),
            before + json(line(15, "web", "", "", "late")) + json(line(21, "web", "", "", "later"))
        );
        assert_eq!(
            texts(&s.tail("demo", &web, None, 10).unwrap()),
            ["a", "late", "b", "later", "c"]
        );
        assert_eq!(
            texts(&s.tail("demo", &web, None, 3).unwrap()),
            ["b", "later", "c"]
        );
        // Opened again, the newest stored is looked up: 20 and 15 are still skipped.
        drop(s);
        let s = open(d.path(), Limits::default());
        s.append(&[
            line(15, "web", "", "", "late again"),
            line(20, "web", "", "", "b again"),
        ])
        .unwrap();
        assert_eq!(rows_and_lines(&path), (3, 5));
    }

    #[test]
    fn a_store_with_a_row_per_line_gets_the_new_columns_and_reads_the_same() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("logs.db");
        {
            let s = open(d.path(), Limits::default());
            s.append(&[line(1, "web", "", "", "one")]).unwrap();
        }
        {
            // As stores were before rows of several lines: no `last`, no `n`.
            let c = Connection::open(&path).unwrap();
            c.execute_batch("ALTER TABLE lines DROP COLUMN last; ALTER TABLE lines DROP COLUMN n;")
                .unwrap();
            assert!(!has_column(&c, "lines", "n").unwrap());
        }
        let s = open(d.path(), Limits::default());
        s.append(&[
            line(2, "web", "", "", "two"),
            line(3, "web", "", "", "three"),
        ])
        .unwrap();
        let web = LogResource::Service("web".into());
        assert_eq!(
            texts(&s.tail("demo", &web, None, 10).unwrap()),
            ["one", "two", "three"]
        );
        assert_eq!(rows_and_lines(&path), (2, 3));
    }
}
