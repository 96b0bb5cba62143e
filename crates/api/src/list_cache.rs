//! Whole `services.list` answers kept ready to send: with 10 000 services, reading every
//! stored service and joining them into one 10 MB answer was most of a list's time, and a
//! namespace's services change far less often than they are listed.
//!
//! Each answer is kept with the store's services version it was built from
//! ([`skiff_store::Store::services_version`]) and served only while that version is still the
//! store's: every create, update or delete of a service moves the version before it returns,
//! so a list never misses a write that was acknowledged before the list was asked.

use bytes::Bytes;
use std::sync::Mutex;

/// How many answers are kept (one per namespace, label selector and `fields` mask); the
/// least recently used goes first. The whole list of 10 000 services is 10 MB.
const ENTRIES: usize = 4;

/// Answers by key, newest use first; see the module's documentation.
#[derive(Default)]
pub struct ListCache {
    entries: Mutex<Vec<Entry>>,
}

struct Entry {
    key: String,
    version: u64,
    body: Bytes,
}

impl ListCache {
    /// The answer kept for `key`, if it was built at services version `version`.
    pub fn get(&self, key: &str, version: u64) -> Option<Bytes> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let i = entries
            .iter()
            .position(|e| e.key == key && e.version == version)?;
        let entry = entries.remove(i);
        let body = entry.body.clone();
        entries.insert(0, entry);
        Some(body)
    }

    /// Keeps `body` as the answer for `key` at services version `version`. Answers built at
    /// another version are dropped: they can never be served again.
    pub fn put(&self, key: String, version: u64, body: Bytes) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| e.version == version && e.key != key);
        entries.insert(0, Entry { key, version, body });
        entries.truncate(ENTRIES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_only_the_version_it_was_built_at() {
        let c = ListCache::default();
        assert!(c.get("default", 0).is_none());
        c.put("default".into(), 3, Bytes::from_static(b"v3"));
        assert_eq!(c.get("default", 3).unwrap(), "v3");
        assert!(c.get("default", 4).is_none(), "a write came after it");
        assert!(c.get("other", 3).is_none());
        c.put("other".into(), 4, Bytes::from_static(b"o4"));
        assert!(c.get("default", 3).is_none(), "older versions are dropped");
        for i in 0..ENTRIES + 1 {
            c.put(format!("k{i}"), 4, Bytes::from_static(b"x"));
        }
        assert!(c.get("other", 4).is_none(), "the least recently used went");
        assert!(c.get("k0", 4).is_none());
        assert!(c.get(&format!("k{ENTRIES}"), 4).is_some());
    }
}
