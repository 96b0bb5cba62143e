//! The durable side of the broker: one SQLite database (`DATA/pubsub/pubsub.db`, WAL,
//! `synchronous=FULL`) written by one thread that commits in groups. Every publish, ack and
//! change queued while a commit runs goes into the next transaction, so a burst of publishes
//! costs one fsync per batch, not per message, and nothing is answered before its transaction
//! is on disk.
//!
//! Tables: `topics`, `subscriptions` and `snapshots` hold the resources as protobuf bytes;
//! `messages` one row per published message (`id` is its message id); `deliveries` one row
//! per (subscription, message) fanned out at publish, with `acked` and `attempts`;
//! `snapshot_messages` the messages a snapshot holds unacknowledged; `iam_policies` each
//! resource's IAM policy as JSON.

use crate::delivery::Message;
use crate::error::{PubsubError, Result};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topics(name TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions(name TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots(name TEXT PRIMARY KEY, subscription TEXT NOT NULL,
    created_ms INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot_messages(snapshot TEXT NOT NULL, msg INTEGER NOT NULL,
    PRIMARY KEY(snapshot, msg)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages(id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
    data BLOB NOT NULL, attributes TEXT NOT NULL, ordering_key TEXT NOT NULL,
    publish_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries(subscription TEXT NOT NULL, msg INTEGER NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(subscription, msg)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_by_msg ON deliveries(msg);
CREATE INDEX IF NOT EXISTS messages_by_time ON messages(publish_ms);
CREATE TABLE IF NOT EXISTS iam_policies(name TEXT PRIMARY KEY, body TEXT NOT NULL);
";

/// Opens (creating) the database with the broker's settings.
pub fn open(path: &Path) -> Result<Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            PubsubError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Publishes are answered once on disk; group commit amortizes the fsync.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Every row of a resource table, decoded.
pub fn load_all<T: prost::Message + Default>(conn: &Connection, table: &str) -> Result<Vec<T>> {
    let mut stmt = conn.prepare(&format!("SELECT body FROM {table} ORDER BY name"))?;
    let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
    let mut out = Vec::new();
    for body in rows {
        out.push(
            T::decode(body?.as_slice())
                .map_err(|e| PubsubError::Unavailable(format!("corrupt {table} row: {e}")))?,
        );
    }
    Ok(out)
}

/// Writes a resource row (insert or replace).
pub fn put<T: prost::Message>(conn: &Connection, table: &str, name: &str, v: &T) -> Result<()> {
    conn.execute(
        &format!("INSERT OR REPLACE INTO {table}(name, body) VALUES (?1, ?2)"),
        params![name, v.encode_to_vec()],
    )?;
    Ok(())
}

/// Inserts a message and returns its id.
pub fn insert_message(
    conn: &Connection,
    topic: &str,
    data: &[u8],
    attributes: &HashMap<String, String>,
    ordering_key: &str,
    publish_ms: i64,
) -> Result<u64> {
    let attrs = serde_json::to_string(attributes).expect("string map serializes");
    conn.prepare_cached(
        "INSERT INTO messages(topic, data, attributes, ordering_key, publish_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![topic, data, attrs, ordering_key, publish_ms])?;
    Ok(conn.last_insert_rowid() as u64)
}

/// Adds a (subscription, message) delivery row, unacknowledged.
pub fn insert_delivery(conn: &Connection, sub: &str, msg: u64) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO deliveries(subscription, msg, acked, attempts) VALUES (?1, ?2, 0, 0)",
    )?
    .execute(params![sub, msg as i64])?;
    Ok(())
}

/// Marks deliveries acknowledged.
pub fn ack(conn: &Connection, sub: &str, ids: &[u64]) -> Result<()> {
    let mut stmt = conn
        .prepare_cached("UPDATE deliveries SET acked = 1 WHERE subscription = ?1 AND msg = ?2")?;
    for id in ids {
        stmt.execute(params![sub, *id as i64])?;
    }
    Ok(())
}

/// Records how many times a message has been delivered to a subscription.
pub fn set_attempts(conn: &Connection, sub: &str, id: u64, attempts: u32) -> Result<()> {
    conn.prepare_cached(
        "UPDATE deliveries SET attempts = MAX(attempts, ?3) WHERE subscription = ?1 AND msg = ?2",
    )?
    .execute(params![sub, id as i64, attempts])?;
    Ok(())
}

/// A subscription's unacknowledged messages with their delivery counts, in publish order;
/// messages already loaded for another subscription are shared through `cache`.
pub fn unacked(
    conn: &Connection,
    sub: &str,
    cache: &mut HashMap<u64, Arc<Message>>,
) -> Result<Vec<(Arc<Message>, u32)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT m.id, m.data, m.attributes, m.ordering_key, m.publish_ms, d.attempts
         FROM deliveries d JOIN messages m ON m.id = d.msg
         WHERE d.subscription = ?1 AND d.acked = 0 ORDER BY m.id",
    )?;
    let mut rows = stmt.query(params![sub])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let id = r.get::<_, i64>(0)? as u64;
        let attempts: u32 = r.get(5)?;
        let msg = match cache.get(&id) {
            Some(m) => m.clone(),
            None => {
                let attrs: String = r.get(2)?;
                let m = Arc::new(Message {
                    id,
                    data: r.get(1)?,
                    attributes: serde_json::from_str(&attrs).unwrap_or_default(),
                    ordering_key: r.get(3)?,
                    publish_ms: r.get(4)?,
                });
                cache.insert(id, m.clone());
                m
            }
        };
        out.push((msg, attempts));
    }
    Ok(out)
}

/// Creation time of a snapshot and the subscription it was taken of.
pub fn snapshot_created(conn: &Connection, name: &str) -> Result<Option<i64>> {
    Ok(conn
        .query_row(
            "SELECT created_ms FROM snapshots WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()?)
}
