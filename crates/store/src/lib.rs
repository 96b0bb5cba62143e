//! The durable store: one SQLite database (WAL mode, `synchronous=NORMAL`) under the data dir
//! holding every object a user created — services, revisions, IAM policies, jobs — as the JSON
//! the API serves, and the metered usage (`usage.rs`). Schema changes are numbered migrations
//! recorded in `PRAGMA user_version`.
//!
//! Only the control plane uses the store. The request path keeps its own in-memory view and
//! never waits on a write here.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{de::DeserializeOwned, Serialize};
use skiff_model::{Policy, Revision, Service, LABEL_SERVICE};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

mod usage;
pub use usage::UsageFilter;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored object is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Migrations, applied in order; index + 1 is the schema version each one produces.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE services (
        namespace TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (namespace, name));
     CREATE TABLE revisions (
        namespace TEXT NOT NULL, name TEXT NOT NULL, service TEXT NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (namespace, name));
     CREATE INDEX revisions_by_service ON revisions (namespace, service);
     CREATE TABLE policies (
        namespace TEXT NOT NULL, service TEXT NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (namespace, service));",
    // Jobs, executions, tasks and scheduler jobs: one table of objects by kind, each with the
    // parent it belongs to (a task's execution, an execution's job).
    "CREATE TABLE objects (
        kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
        parent TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (kind, namespace, name));
     CREATE INDEX objects_by_parent ON objects (kind, namespace, parent, seq);",
    // Metered usage (see `usage.rs`).
    "CREATE TABLE usage_instances (
        id TEXT PRIMARY KEY, namespace TEXT NOT NULL, kind TEXT NOT NULL, owner TEXT NOT NULL,
        revision TEXT NOT NULL, task TEXT, mode TEXT NOT NULL, cpu_millis INTEGER NOT NULL,
        memory_bytes INTEGER NOT NULL, started_ms INTEGER NOT NULL, ended_ms INTEGER,
        checkpoint_ms INTEGER NOT NULL, rounding_minute INTEGER,
        rounding_ms INTEGER NOT NULL DEFAULT 0, memory_peak_bytes INTEGER NOT NULL DEFAULT 0);
     CREATE INDEX usage_instances_by_owner ON usage_instances (namespace, kind, owner);
     CREATE TABLE usage_minutes (
        instance TEXT NOT NULL, minute INTEGER NOT NULL, billable_ms INTEGER NOT NULL,
        requests INTEGER NOT NULL, cpu_ns INTEGER NOT NULL,
        PRIMARY KEY (instance, minute));
     CREATE INDEX usage_minutes_by_minute ON usage_minutes (minute);",
    // 4: bytes each instance sent, received and sent to the internet, per minute.
    "ALTER TABLE usage_minutes ADD COLUMN sent_bytes INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE usage_minutes ADD COLUMN received_bytes INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE usage_minutes ADD COLUMN egress_bytes INTEGER NOT NULL DEFAULT 0;",
    // 5: each object write reads `MAX(seq)`; without an index that scans every object, so an
    // execution of N tasks cost O(N²) to run.
    "CREATE INDEX objects_by_seq ON objects (seq);",
];

/// Kinds of rows in the `objects` table.
pub mod kind {
    pub const JOB: &str = "job";
    pub const EXECUTION: &str = "execution";
    pub const TASK: &str = "task";
    pub const SCHEDULER_JOB: &str = "scheduler-job";
}

/// One object to write with [`Store::put_objects`].
pub struct ObjectRow<'a, T> {
    pub kind: &'static str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub parent: &'a str,
    pub body: &'a T,
}

pub struct Store {
    conn: Mutex<Connection>,
    /// How many writes to the services table this process made: a reader that saw version V
    /// (under the connection's lock, with the rows) knows nothing changed while it is still V.
    services_version: AtomicU64,
    /// The latest writes to services, oldest first, each as (the services version it made,
    /// namespace, name); at most [`CHANGES_KEPT`]. Lets a kept answer be brought up to date
    /// from what changed (see [`Store::service_changes_since`]).
    changes: Mutex<VecDeque<(u64, String, String)>>,
}

/// How many service writes [`Store::service_changes_since`] can look back over. An answer
/// older than that is built again from every service.
pub const CHANGES_KEPT: usize = 4096;

/// Stored services read in one statement, with the [`Store::services_version`] they reflect.
#[derive(Debug)]
pub struct ServiceBodies {
    /// `(name, the service's stored JSON)`, ordered by name.
    pub items: Vec<(String, String)>,
    /// The services version the rows were read at: an answer built from them is current as
    /// long as [`Store::services_version`] still returns it.
    pub version: u64,
}

/// What changed among a namespace's services since a services version: see
/// [`Store::service_changes_since`].
#[derive(Debug)]
pub struct ServiceChanges {
    /// Each service's name and its stored JSON now (`None`: it was deleted), ordered by
    /// name, each name once.
    pub items: Vec<(String, Option<String>)>,
    /// The services version these were read at.
    pub version: u64,
}

fn decode<T: DeserializeOwned>(s: String) -> Result<T> {
    Ok(serde_json::from_str(&s)?)
}

fn encode<T: Serialize>(v: &T) -> Result<String> {
    Ok(serde_json::to_string(v)?)
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let store = Store {
            conn: Mutex::new(conn),
            services_version: AtomicU64::new(0),
            changes: Mutex::new(VecDeque::new()),
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.conn();
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The count of writes to services (create, update, delete) made so far; it changes
    /// before any such write returns, so an answer cached at a version equal to the current
    /// one reflects every write that was acknowledged. Counted per process, from 0.
    pub fn services_version(&self) -> u64 {
        self.services_version.load(Ordering::SeqCst)
    }

    /// Marks a write to the service `ns`/`name`; called with the connection's lock held,
    /// after the write.
    fn services_changed(&self, ns: &str, name: &str) {
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let version = self.services_version.fetch_add(1, Ordering::SeqCst) + 1;
        if changes.len() == CHANGES_KEPT {
            changes.pop_front();
        }
        changes.push_back((version, ns.to_string(), name.to_string()));
    }

    /// The services of `ns` written after services version `since` (created, updated or
    /// deleted), each with its stored JSON as it is now, read with the version they reflect
    /// under one hold of the connection's lock: an answer built at `since` and brought up to
    /// date with them is the answer at the returned version.
    ///
    /// `None` when more than [`CHANGES_KEPT`] writes were made since `since`, or when `since`
    /// is not a version this process reached: build from every service instead.
    pub fn service_changes_since(&self, ns: &str, since: u64) -> Result<Option<ServiceChanges>> {
        let conn = self.conn();
        let version = self.services_version();
        if since > version {
            return Ok(None);
        }
        let names: std::collections::BTreeSet<String> = {
            let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
            // The log must hold every version after `since`: its oldest entry is at most
            // `since + 1` (or nothing was written since).
            if since < version && changes.front().is_none_or(|(v, _, _)| *v > since + 1) {
                return Ok(None);
            }
            changes
                .iter()
                .filter(|(v, n, _)| *v > since && n == ns)
                .map(|(_, _, name)| name.clone())
                .collect()
        };
        let mut stmt =
            conn.prepare_cached("SELECT body FROM services WHERE namespace = ?1 AND name = ?2")?;
        let items = names
            .into_iter()
            .map(|name| {
                let body = stmt
                    .query_row(params![ns, name], |r| r.get::<_, String>(0))
                    .optional()?;
                Ok((name, body))
            })
            .collect::<Result<_>>()?;
        Ok(Some(ServiceChanges { items, version }))
    }

    pub fn schema_version(&self) -> Result<usize> {
        Ok(self
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    pub fn get_service(&self, ns: &str, name: &str) -> Result<Option<Service>> {
        let body: Option<String> = self
            .conn()
            .query_row(
                "SELECT body FROM services WHERE namespace = ?1 AND name = ?2",
                params![ns, name],
                |r| r.get(0),
            )
            .optional()?;
        body.map(decode).transpose()
    }

    /// Services of one namespace, or of all when `ns` is `None`, ordered by name.
    pub fn list_services(&self, ns: Option<&str>) -> Result<Vec<Service>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT body FROM services WHERE ?1 IS NULL OR namespace = ?1 ORDER BY namespace, name",
        )?;
        let rows = stmt.query_map(params![ns], |r| r.get::<_, String>(0))?;
        rows.map(|r| decode(r?)).collect()
    }

    /// One page of a namespace's services as their stored JSON text, ordered by name: those
    /// whose name sorts after `after` (from the first when `None`), at most `limit` (all when
    /// `None`). Serving the text as stored spares a parse and a serialization per service,
    /// which is most of the cost of listing 10 000 of them. The primary key's index gives the
    /// order, so a page costs its own size, not the namespace's. The answer carries the
    /// services version it was read at (see [`Store::services_version`]).
    pub fn list_service_bodies(
        &self,
        ns: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ServiceBodies> {
        let conn = self.conn();
        // Two statements: SQLite does not seek the index for `?2 IS NULL OR name > ?2`, so a
        // page after the first would read the namespace from its start.
        let mut stmt = conn.prepare_cached(if after.is_some() {
            "SELECT name, body FROM services WHERE namespace = ?1 AND name > ?2
             ORDER BY name LIMIT ?3"
        } else {
            "SELECT name, body FROM services WHERE namespace = ?1 AND ?2 IS NULL
             ORDER BY name LIMIT ?3"
        })?;
        let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let rows = stmt.query_map(params![ns, after, limit], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let items = rows.collect::<std::result::Result<_, _>>()?;
        // Read while the lock is held: no write came between the rows and the version.
        let version = self.services_version();
        Ok(ServiceBodies { items, version })
    }

    /// The namespaces that have services, those with the most first, at most `limit`.
    pub fn service_namespaces(&self, limit: usize) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT namespace FROM services GROUP BY namespace ORDER BY COUNT(*) DESC, namespace
             LIMIT ?1",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![limit], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    pub fn put_service(&self, svc: &Service) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO services (namespace, name, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (namespace, name) DO UPDATE SET body = excluded.body",
            params![svc.metadata.namespace, svc.metadata.name, encode(svc)?],
        )?;
        self.services_changed(&svc.metadata.namespace, &svc.metadata.name);
        Ok(())
    }

    /// Writes a service and its new revision in one transaction: a deploy is all or nothing.
    pub fn put_service_with_revision(&self, svc: &Service, rev: &Revision) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO services (namespace, name, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (namespace, name) DO UPDATE SET body = excluded.body",
            params![svc.metadata.namespace, svc.metadata.name, encode(svc)?],
        )?;
        insert_revision(&tx, rev)?;
        tx.commit()?;
        self.services_changed(&svc.metadata.namespace, &svc.metadata.name);
        Ok(())
    }

    /// Deletes a service with its revisions and policy; false if there was none.
    pub fn delete_service(&self, ns: &str, name: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM services WHERE namespace = ?1 AND name = ?2",
            params![ns, name],
        )?;
        tx.execute(
            "DELETE FROM revisions WHERE namespace = ?1 AND service = ?2",
            params![ns, name],
        )?;
        tx.execute(
            "DELETE FROM policies WHERE namespace = ?1 AND service = ?2",
            params![ns, name],
        )?;
        tx.commit()?;
        if n > 0 {
            self.services_changed(ns, name);
        }
        Ok(n > 0)
    }

    pub fn get_revision(&self, ns: &str, name: &str) -> Result<Option<Revision>> {
        let body: Option<String> = self
            .conn()
            .query_row(
                "SELECT body FROM revisions WHERE namespace = ?1 AND name = ?2",
                params![ns, name],
                |r| r.get(0),
            )
            .optional()?;
        body.map(decode).transpose()
    }

    /// Revisions of a namespace (all namespaces when `None`), optionally of one service,
    /// newest generation first.
    pub fn list_revisions(&self, ns: Option<&str>, service: Option<&str>) -> Result<Vec<Revision>> {
        let conn = self.conn();
        // One service's revisions through the `revisions_by_service` index, named: SQLite
        // uses no index for `?1 IS NULL OR namespace = ?1`, and given the namespace alone it
        // prefers the primary key (already in name order) and reads every revision of the
        // namespace. Either way a deploy, and the restore of each of N services, cost O(N).
        let mut stmt = match (ns, service) {
            (Some(_), Some(_)) => conn.prepare_cached(
                "SELECT body FROM revisions INDEXED BY revisions_by_service
                 WHERE namespace = ?1 AND service = ?2
                 ORDER BY name DESC",
            )?,
            _ => conn.prepare_cached(
                "SELECT body FROM revisions
                 WHERE (?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR service = ?2)
                 ORDER BY namespace, service, name DESC",
            )?,
        };
        let rows = stmt.query_map(params![ns, service], |r| r.get::<_, String>(0))?;
        rows.map(|r| decode(r?)).collect()
    }

    pub fn put_revision(&self, rev: &Revision) -> Result<()> {
        insert_revision(&self.conn(), rev)
    }

    pub fn delete_revision(&self, ns: &str, name: &str) -> Result<bool> {
        let n = self.conn().execute(
            "DELETE FROM revisions WHERE namespace = ?1 AND name = ?2",
            params![ns, name],
        )?;
        Ok(n > 0)
    }

    pub fn get_policy(&self, ns: &str, service: &str) -> Result<Option<Policy>> {
        let body: Option<String> = self
            .conn()
            .query_row(
                "SELECT body FROM policies WHERE namespace = ?1 AND service = ?2",
                params![ns, service],
                |r| r.get(0),
            )
            .optional()?;
        body.map(decode).transpose()
    }

    /// Deletes a policy; false if there was none.
    pub fn delete_policy(&self, ns: &str, service: &str) -> Result<bool> {
        let n = self.conn().execute(
            "DELETE FROM policies WHERE namespace = ?1 AND service = ?2",
            params![ns, service],
        )?;
        Ok(n > 0)
    }

    pub fn put_policy(&self, ns: &str, service: &str, policy: &Policy) -> Result<()> {
        self.conn().execute(
            "INSERT INTO policies (namespace, service, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (namespace, service) DO UPDATE SET body = excluded.body",
            params![ns, service, encode(policy)?],
        )?;
        Ok(())
    }
}

impl Store {
    pub fn get_object<T: DeserializeOwned>(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Result<Option<T>> {
        let body: Option<String> = self
            .conn()
            .query_row(
                "SELECT body FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                params![kind, ns, name],
                |r| r.get(0),
            )
            .optional()?;
        body.map(decode).transpose()
    }

    /// Objects of a kind in a namespace (all when `None`), optionally of one parent, oldest
    /// first.
    pub fn list_objects<T: DeserializeOwned>(
        &self,
        kind: &str,
        ns: Option<&str>,
        parent: Option<&str>,
    ) -> Result<Vec<T>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT body FROM objects WHERE kind = ?1 AND (?2 IS NULL OR namespace = ?2)
             AND (?3 IS NULL OR parent = ?3) ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![kind, ns, parent], |r| r.get::<_, String>(0))?;
        rows.map(|r| decode(r?)).collect()
    }

    /// One page of objects of a kind, as their stored JSON text with each its sequence
    /// number: those in `ns` (all when `None`) of `parent` (all when `None`) with a sequence
    /// number above `after`, oldest first, at most `limit` (all when `None`). Serving the text
    /// as stored spares a parse and a serialization per object, which is most of the cost of
    /// listing the 10 000 tasks of an execution.
    pub fn list_object_bodies(
        &self,
        kind: &str,
        ns: Option<&str>,
        parent: Option<&str>,
        after: i64,
        limit: Option<usize>,
    ) -> Result<Vec<(i64, String)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, body FROM objects WHERE kind = ?1 AND (?2 IS NULL OR namespace = ?2)
             AND (?3 IS NULL OR parent = ?3) AND seq > ?4 ORDER BY seq LIMIT ?5",
        )?;
        let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let rows = stmt.query_map(params![kind, ns, parent, after, limit], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Writes objects in one transaction (an execution with all its tasks, say). A new object
    /// gets the next sequence number; a rewritten one keeps its own.
    pub fn put_objects<T: Serialize>(&self, rows: &[ObjectRow<'_, T>]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for r in rows {
            tx.execute(
                "INSERT INTO objects (kind, namespace, name, parent, seq, body)
                 VALUES (?1, ?2, ?3, ?4, (SELECT COALESCE(MAX(seq), 0) + 1 FROM objects), ?5)
                 ON CONFLICT (kind, namespace, name) DO UPDATE SET body = excluded.body",
                params![r.kind, r.namespace, r.name, r.parent, encode(r.body)?],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn put_object<T: Serialize>(
        &self,
        kind: &'static str,
        ns: &str,
        name: &str,
        parent: &str,
        body: &T,
    ) -> Result<()> {
        self.put_objects(&[ObjectRow {
            kind,
            namespace: ns,
            name,
            parent,
            body,
        }])
    }

    /// Deletes one object and, for each kind in `children`, the objects whose parent it is;
    /// false if there was no such object.
    pub fn delete_object(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
        children: &[&str],
    ) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
            params![kind, ns, name],
        )?;
        for child in children {
            tx.execute(
                "DELETE FROM objects WHERE kind = ?1 AND namespace = ?2 AND parent = ?3",
                params![child, ns, name],
            )?;
        }
        tx.commit()?;
        Ok(n > 0)
    }
}

fn insert_revision(conn: &Connection, rev: &Revision) -> Result<()> {
    let service = rev
        .metadata
        .labels
        .get(LABEL_SERVICE)
        .cloned()
        .unwrap_or_default();
    conn.execute(
        "INSERT INTO revisions (namespace, name, service, body) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (namespace, name) DO UPDATE SET body = excluded.body",
        params![
            rev.metadata.namespace,
            rev.metadata.name,
            service,
            encode(rev)?
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_model::ObjectMeta;

    fn svc(ns: &str, name: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: ns.into(),
                generation: 1,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn rev(ns: &str, service: &str, name: &str) -> Revision {
        let mut r = Revision::default();
        r.metadata.name = name.into();
        r.metadata.namespace = ns.into();
        r.metadata
            .labels
            .insert(LABEL_SERVICE.into(), service.into());
        r
    }

    #[test]
    fn round_trips_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skiff.db");
        {
            let s = Store::open(&path).unwrap();
            s.put_service_with_revision(&svc("default", "a"), &rev("default", "a", "a-00001-xyz"))
                .unwrap();
            s.put_service(&svc("team", "b")).unwrap();
            let mut p = Policy::default();
            p.set_public(true);
            s.put_policy("default", "a", &p).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len());
        assert_eq!(s.list_services(None).unwrap().len(), 2);
        assert_eq!(s.list_services(Some("team")).unwrap()[0].metadata.name, "b");
        assert!(s.get_service("default", "a").unwrap().is_some());
        let bodies = s.list_service_bodies("default", None, None).unwrap().items;
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0].0, "a");
        let stored: Service = serde_json::from_str(&bodies[0].1).unwrap();
        assert_eq!(stored.metadata.name, "a");
        assert!(s.get_service("default", "zz").unwrap().is_none());
        assert_eq!(
            s.list_revisions(Some("default"), Some("a")).unwrap().len(),
            1
        );
        assert!(s.get_policy("default", "a").unwrap().unwrap().is_public());

        assert!(s.delete_service("default", "a").unwrap());
        assert!(!s.delete_service("default", "a").unwrap());
        assert!(s
            .list_revisions(Some("default"), Some("a"))
            .unwrap()
            .is_empty());
        assert!(s.get_policy("default", "a").unwrap().is_none());
    }

    #[test]
    fn objects_by_kind_and_parent() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let rows = [("e1", "j1"), ("e2", "j1"), ("e3", "j2")];
        for (name, parent) in rows {
            s.put_object(kind::EXECUTION, "default", name, parent, &name.to_string())
                .unwrap();
        }
        s.put_object(kind::TASK, "default", "e1-0", "e1", &"t".to_string())
            .unwrap();
        s.put_object(
            kind::EXECUTION,
            "default",
            "e1",
            "j1",
            &"e1 again".to_string(),
        )
        .unwrap();
        let of_j1: Vec<String> = s
            .list_objects(kind::EXECUTION, Some("default"), Some("j1"))
            .unwrap();
        assert_eq!(of_j1, ["e1 again", "e2"], "rewrites keep their place");
        // Pages of stored text, resumed after the last sequence number seen.
        let page = s
            .list_object_bodies(kind::EXECUTION, Some("default"), Some("j1"), 0, Some(1))
            .unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].1, "\"e1 again\"");
        let rest = s
            .list_object_bodies(
                kind::EXECUTION,
                Some("default"),
                Some("j1"),
                page[0].0,
                None,
            )
            .unwrap();
        let rest: Vec<&str> = rest.iter().map(|(_, b)| b.as_str()).collect();
        assert_eq!(rest, ["\"e2\""]);
        assert_eq!(
            s.list_objects::<String>(kind::EXECUTION, None, None)
                .unwrap()
                .len(),
            3
        );
        assert!(s
            .delete_object(kind::EXECUTION, "default", "e1", &[kind::TASK])
            .unwrap());
        assert!(s
            .list_objects::<String>(kind::TASK, None, Some("e1"))
            .unwrap()
            .is_empty());
        assert!(s
            .get_object::<String>(kind::EXECUTION, "default", "e1")
            .unwrap()
            .is_none());
        assert_eq!(
            s.get_object::<String>(kind::EXECUTION, "default", "e3")
                .unwrap()
                .unwrap(),
            "e3"
        );
    }

    #[test]
    fn service_pages_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        for n in ["c", "a", "d", "b"] {
            s.put_service(&svc("default", n)).unwrap();
        }
        s.put_service(&svc("other", "aa")).unwrap();
        let names = |after, limit| -> Vec<String> {
            s.list_service_bodies("default", after, limit)
                .unwrap()
                .items
                .into_iter()
                .map(|(n, _)| n)
                .collect()
        };
        assert_eq!(names(None, None), ["a", "b", "c", "d"]);
        assert_eq!(names(None, Some(2)), ["a", "b"]);
        assert_eq!(names(Some("b"), Some(2)), ["c", "d"]);
        assert_eq!(names(Some("d"), Some(2)), Vec::<String>::new());
        assert_eq!(names(Some("a0"), None), ["b", "c", "d"]);
    }

    #[test]
    fn services_version_moves_with_each_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let v0 = s
            .list_service_bodies("default", None, None)
            .unwrap()
            .version;
        assert_eq!(v0, s.services_version());
        s.put_service(&svc("default", "a")).unwrap();
        let v1 = s.services_version();
        assert_ne!(v1, v0, "a create");
        assert_eq!(
            s.list_service_bodies("default", None, None)
                .unwrap()
                .version,
            v1
        );
        s.put_service_with_revision(&svc("default", "a"), &rev("default", "a", "a-00002-bbb"))
            .unwrap();
        let v2 = s.services_version();
        assert_ne!(v2, v1, "an update with a revision");
        // Writes elsewhere leave it.
        s.put_revision(&rev("default", "a", "a-00003-ccc")).unwrap();
        s.put_policy("default", "a", &Policy::default()).unwrap();
        assert_eq!(s.services_version(), v2);
        assert!(!s.delete_service("default", "zz").unwrap());
        assert_eq!(s.services_version(), v2, "deleting nothing");
        assert!(s.delete_service("default", "a").unwrap());
        assert_ne!(s.services_version(), v2, "a delete");
    }

    #[test]
    fn service_changes_since_a_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let v0 = s.services_version();
        let none = s.service_changes_since("default", v0).unwrap().unwrap();
        assert!(none.items.is_empty());
        assert_eq!(none.version, v0);
        s.put_service(&svc("default", "b")).unwrap();
        s.put_service(&svc("default", "a")).unwrap();
        s.put_service(&svc("team", "c")).unwrap();
        s.put_service(&svc("default", "b")).unwrap();
        let v1 = s.services_version();
        assert_eq!(s.service_namespaces(5).unwrap(), ["default", "team"]);
        assert_eq!(s.service_namespaces(1).unwrap(), ["default"]);
        let c = s.service_changes_since("default", v0).unwrap().unwrap();
        assert_eq!(c.version, v1);
        let names: Vec<_> = c
            .items
            .iter()
            .map(|(n, b)| (n.as_str(), b.is_some()))
            .collect();
        assert_eq!(
            names,
            [("a", true), ("b", true)],
            "by name, each once, this namespace's"
        );
        let body: Service = serde_json::from_str(c.items[0].1.as_deref().unwrap()).unwrap();
        assert_eq!(body.metadata.name, "a");
        assert!(s.delete_service("default", "a").unwrap());
        let c = s.service_changes_since("default", v1).unwrap().unwrap();
        assert_eq!(c.items, [("a".to_string(), None)], "a delete: no body");
        assert!(
            s.service_changes_since("default", c.version + 1)
                .unwrap()
                .is_none(),
            "a version not reached"
        );
        for _ in 0..CHANGES_KEPT {
            s.put_service(&svc("team", "c")).unwrap();
        }
        assert!(
            s.service_changes_since("default", v1).unwrap().is_none(),
            "past what the log keeps"
        );
        let now = s.services_version();
        assert!(s
            .service_changes_since("default", now - 1)
            .unwrap()
            .is_some());
        assert!(s
            .service_changes_since("default", now - CHANGES_KEPT as u64)
            .unwrap()
            .is_some());
        assert!(s
            .service_changes_since("default", now - CHANGES_KEPT as u64 - 1)
            .unwrap()
            .is_none());
    }

    #[test]
    fn revisions_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        for n in ["a-00001-aaa", "a-00003-ccc", "a-00002-bbb"] {
            s.put_revision(&rev("default", "a", n)).unwrap();
        }
        let names: Vec<_> = s
            .list_revisions(None, Some("a"))
            .unwrap()
            .into_iter()
            .map(|r| r.metadata.name)
            .collect();
        assert_eq!(names, ["a-00003-ccc", "a-00002-bbb", "a-00001-aaa"]);
        assert!(s.delete_revision("default", "a-00002-bbb").unwrap());
    }
}
