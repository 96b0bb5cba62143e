//! Metered usage: one row per instance (who it bills to, its size, its life, the rounding its
//! open interval would add) and one row per instance and minute (billable ms, requests, CPU
//! time, bytes sent, received and sent to the internet), written one checkpoint per transaction.

use crate::{Result, Store};
use rusqlite::params;
use skiff_metering::registry::{Checkpoint, Kind};
use skiff_metering::{Billing, UsageRow};

/// Which usage a report covers: every minute that overlaps `[since, until)` (ms since the
/// epoch); usage is recorded per minute.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub namespace: Option<String>,
    pub kind: Option<Kind>,
    /// The service or the job.
    pub owner: Option<String>,
    pub since_ms: i64,
    pub until_ms: i64,
}

impl Store {
    /// Adds what a checkpoint accrued, in one transaction.
    pub fn record_usage(&self, cp: &Checkpoint) -> Result<()> {
        if !cp.instances.iter().any(|u| u.changed) {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut inst = tx.prepare_cached(
                "INSERT INTO usage_instances (id, namespace, kind, owner, revision, task, mode,
                    cpu_millis, memory_bytes, started_ms, ended_ms, checkpoint_ms,
                    rounding_minute, rounding_ms, memory_peak_bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                 ON CONFLICT (id) DO UPDATE SET ended_ms = excluded.ended_ms,
                    checkpoint_ms = excluded.checkpoint_ms,
                    rounding_minute = excluded.rounding_minute,
                    rounding_ms = excluded.rounding_ms,
                    memory_peak_bytes = MAX(memory_peak_bytes, excluded.memory_peak_bytes)",
            )?;
            let mut minute = tx.prepare_cached(
                "INSERT INTO usage_minutes (instance, minute, billable_ms, requests, cpu_ns,
                    sent_bytes, received_bytes, egress_bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (instance, minute) DO UPDATE SET
                    billable_ms = billable_ms + excluded.billable_ms,
                    requests = requests + excluded.requests,
                    cpu_ns = cpu_ns + excluded.cpu_ns,
                    sent_bytes = sent_bytes + excluded.sent_bytes,
                    received_bytes = received_bytes + excluded.received_bytes,
                    egress_bytes = egress_bytes + excluded.egress_bytes",
            )?;
            for u in cp.instances.iter().filter(|u| u.changed) {
                let i = &u.info;
                let (rounding_minute, rounding_ms) = u.rounding.unzip();
                inst.execute(params![
                    i.id,
                    i.namespace,
                    i.kind.as_str(),
                    i.owner,
                    i.revision,
                    i.task,
                    i.mode.as_str(),
                    i.cpu_millis as i64,
                    i.memory_bytes as i64,
                    u.started_ms,
                    u.ended_ms,
                    u.ended_ms.unwrap_or(cp.at_ms),
                    rounding_minute,
                    rounding_ms.unwrap_or(0),
                    u.memory_peak_bytes as i64,
                ])?;
                for m in &u.minutes {
                    minute.execute(params![
                        i.id,
                        m.minute,
                        m.billable_ms,
                        m.requests as i64,
                        m.cpu_ns as i64,
                        m.sent_bytes as i64,
                        m.received_bytes as i64,
                        m.egress_bytes as i64,
                    ])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Ends, at its last checkpoint, every instance a previous run left open (it was killed
    /// without stopping them); returns how many.
    pub fn close_open_usage(&self) -> Result<usize> {
        Ok(self.conn().execute(
            "UPDATE usage_instances SET ended_ms = checkpoint_ms WHERE ended_ms IS NULL",
            [],
        )?)
    }

    /// Usage summed per revision (or execution), size, billing mode and calendar month.
    pub fn usage(&self, f: &UsageFilter) -> Result<Vec<UsageRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT i.namespace, i.kind, i.owner, i.revision, i.mode, i.cpu_millis,
                i.memory_bytes, strftime('%Y-%m', m.minute / 1000, 'unixepoch') AS month,
                COUNT(DISTINCT i.id), SUM(m.billable_ms), SUM(m.requests), SUM(m.cpu_ns),
                MAX(i.memory_peak_bytes), SUM(m.sent_bytes), SUM(m.received_bytes),
                SUM(m.egress_bytes)
             FROM (SELECT instance AS id, minute, billable_ms, requests, cpu_ns, sent_bytes,
                      received_bytes, egress_bytes
                   FROM usage_minutes
                   UNION ALL
                   SELECT id, rounding_minute, rounding_ms, 0, 0, 0, 0, 0
                   FROM usage_instances WHERE rounding_ms > 0) AS m
             JOIN usage_instances AS i ON i.id = m.id
             WHERE m.minute > ?1 - ?6 AND m.minute < ?2
               AND (?3 IS NULL OR i.namespace = ?3)
               AND (?4 IS NULL OR i.kind = ?4)
               AND (?5 IS NULL OR i.owner = ?5)
             GROUP BY i.namespace, i.kind, i.owner, i.revision, i.mode, i.cpu_millis,
                i.memory_bytes, month
             ORDER BY i.namespace, i.kind DESC, i.owner, i.revision, month",
        )?;
        let rows = stmt.query_map(
            params![
                f.since_ms,
                f.until_ms,
                f.namespace,
                f.kind.map(Kind::as_str),
                f.owner,
                skiff_metering::BUCKET_MS
            ],
            |r| {
                Ok(UsageRow {
                    namespace: r.get(0)?,
                    kind: Kind::parse(&r.get::<_, String>(1)?).unwrap_or(Kind::Service),
                    owner: r.get(2)?,
                    revision: r.get(3)?,
                    mode: Billing::parse(&r.get::<_, String>(4)?).unwrap_or_default(),
                    cpu_millis: r.get::<_, i64>(5)? as u64,
                    memory_bytes: r.get::<_, i64>(6)? as u64,
                    month: r.get(7)?,
                    instances: r.get::<_, i64>(8)? as u64,
                    billable_ms: r.get(9)?,
                    requests: r.get::<_, i64>(10)? as u64,
                    cpu_ns: r.get::<_, i64>(11)? as u64,
                    memory_peak_bytes: r.get::<_, i64>(12)? as u64,
                    sent_bytes: r.get::<_, i64>(13)? as u64,
                    received_bytes: r.get::<_, i64>(14)? as u64,
                    egress_bytes: r.get::<_, i64>(15)? as u64,
                })
            },
        )?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_metering::registry::{InstanceInfo, InstanceUsage, MinuteUsage};

    fn usage(id: &str, ended: Option<i64>, minutes: &[(i64, i64, u64)]) -> InstanceUsage {
        InstanceUsage {
            info: InstanceInfo {
                id: id.into(),
                namespace: "default".into(),
                kind: Kind::Service,
                owner: "hello".into(),
                revision: "hello-00001-abc".into(),
                task: None,
                mode: Billing::Request,
                cpu_millis: 1000,
                memory_bytes: 512 << 20,
            },
            started_ms: 0,
            ended_ms: ended,
            minutes: minutes
                .iter()
                .map(|&(minute, billable_ms, requests)| MinuteUsage {
                    minute,
                    billable_ms,
                    requests,
                    cpu_ns: 1_000,
                    sent_bytes: 10,
                    received_bytes: 20,
                    egress_bytes: 5,
                })
                .collect(),
            rounding: None,
            memory_peak_bytes: 5 << 20,
            changed: true,
        }
    }

    #[test]
    fn checkpoints_add_up_and_open_intervals_close_at_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let s = Store::open(&path).unwrap();
        let mut a = usage("a", None, &[(0, 500, 2)]);
        a.rounding = Some((60_000, 40));
        s.record_usage(&Checkpoint {
            at_ms: 60_960,
            instances: vec![a],
        })
        .unwrap();
        s.record_usage(&Checkpoint {
            at_ms: 61_000,
            instances: vec![usage("a", None, &[(0, 100, 1), (60_000, 60, 0)])],
        })
        .unwrap();
        drop(s);
        // As after kill -9: reopen, close what was open.
        let s = Store::open(&path).unwrap();
        assert_eq!(s.close_open_usage().unwrap(), 1);
        let all = UsageFilter {
            until_ms: i64::MAX,
            ..UsageFilter::default()
        };
        let rows = s.usage(&all).unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        let r = &rows[0];
        // The second checkpoint had no open interval: no rounding left.
        assert_eq!((r.billable_ms, r.requests, r.cpu_ns), (660, 3, 3_000));
        assert_eq!(
            (r.sent_bytes, r.received_bytes, r.egress_bytes),
            (30, 60, 15)
        );
        assert_eq!((r.instances, r.month.as_str()), (1, "1970-01"));
        // The same report, every time; a period is cut by minute.
        assert_eq!(s.usage(&all).unwrap(), rows);
        let later = UsageFilter {
            since_ms: 60_500,
            ..all.clone()
        };
        assert_eq!(s.usage(&later).unwrap()[0].billable_ms, 60);
        let other = UsageFilter {
            owner: Some("other".into()),
            ..all
        };
        assert!(s.usage(&other).unwrap().is_empty());
    }
}
