//! Whole `services.list` answers kept ready to send, and kept up to date by what changed:
//! with 10 000 services, reading every stored service, projecting each on the request's
//! `fields` and joining them into one answer took 30–75 ms, and a namespace's services change
//! far less often than they are listed, one or a few at a time.
//!
//! Each answer is kept with the store's services version it reflects
//! ([`skiff_store::Store::services_version`]) and with where each item's text lies in it. While
//! that version is still the store's, the answer is served as kept: every create, update or
//! delete of a service moves the version before it returns, so a list never misses a write
//! that was acknowledged before the list was asked. When the version moved, only the
//! services written since are read again ([`skiff_store::Store::service_changes_since`]) and
//! spliced into the kept answer, which costs a copy of its text; when none is kept, or more
//! changed than the store remembers, the answer is built from every service.
//!
//! The answers kept are also brought up to date in the background, soon after services change
//! ([`ListCache::refresh`]), and [`ListCache::warm`] keeps the answers gcloud's `run services
//! list` (every field) and `skiff services list` ([`skiff_model::SERVICE_TABLE_FIELDS`]) ask
//! for from the server's start: a list is then served as kept even right after a deploy or a
//! restart, as the Kubernetes API server serves lists from its watch cache.

use crate::error::{ApiError, ApiResult};
use crate::fields::FieldMask;
use bytes::Bytes;
use skiff_model::LabelSelector;
use skiff_store::Store;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// How many answers are kept (one per namespace, label selector and `fields` mask); the
/// least recently used goes first. The whole list of 10 000 services is 10 MB.
const ENTRIES: usize = 4;

/// Kept answers, newest use first; see the module's documentation. Each has a lock of its
/// own, so that requests for one answer wait for the one that builds it, not for others.
#[derive(Default)]
pub struct ListCache {
    slots: Mutex<Vec<Arc<Slot>>>,
}

/// One query's kept answer.
struct Slot {
    key: String,
    query: ListQuery,
    kept: Mutex<Option<Kept>>,
}

/// What a whole list holds: a namespace's services that a label selector matches, with what
/// a `fields` mask keeps of the answer (`None`: all of it).
pub struct ListQuery {
    pub ns: String,
    pub selector: LabelSelector,
    pub mask: Option<FieldMask>,
}

impl ListQuery {
    /// The key its answer is kept under: equal queries (whatever the spelling of their
    /// selector and mask) share it.
    fn key(&self) -> String {
        format!("{:?} {:?} {:?}", self.ns, self.selector, self.mask)
    }
}

/// A whole list answer at services version `version`.
struct Kept {
    version: u64,
    body: Bytes,
    /// Where the items are in `body`; `None` when the mask leaves `items` out.
    items: Option<ItemsAt>,
}

/// The items of a kept answer: their texts, joined by `,`, fill `body[start..end]`.
struct ItemsAt {
    start: usize,
    end: usize,
    /// Each item's service name and its text's range in `body`, ordered by name.
    index: Vec<(String, Range<usize>)>,
}

impl ListCache {
    /// The whole `services.list` answer for `query`, as [`crate::routes::stored_list_text`]
    /// makes it: served as kept, brought up to date from the services changed since, or built
    /// from every service (see the module's documentation). Reads the store: call it from a
    /// blocking thread.
    ///
    /// Errors: the store's (internal), a stored service that is not JSON (internal).
    pub fn services(&self, store: &Store, query: ListQuery) -> ApiResult<Bytes> {
        self.slot(query).up_to_date(store)
    }

    /// Brings every kept answer up to date with the store (see the module's documentation):
    /// the server calls it soon after services change, so that the next list finds its answer
    /// ready. Reads the store: call it from a blocking thread.
    ///
    /// Errors: as [`ListCache::services`], for the first answer that failed; the others are
    /// brought up to date all the same.
    pub fn refresh(&self, store: &Store) -> ApiResult<()> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut result = Ok(());
        for slot in slots {
            if let Err(e) = slot.up_to_date(store) {
                result = result.and(Err(e));
            }
        }
        result
    }

    /// Keeps the answers gcloud's and the CLI's `services list` ask for (every field, and
    /// [`skiff_model::SERVICE_TABLE_FIELDS`]) in `default` and in the namespaces with the most
    /// services, as many as are kept. Reads the store: call it from a blocking thread.
    ///
    /// Errors: as [`ListCache::services`].
    pub fn warm(&self, store: &Store) -> ApiResult<()> {
        let table = FieldMask::parse(skiff_model::SERVICE_TABLE_FIELDS)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let mut namespaces = store.service_namespaces(ENTRIES / 2)?;
        if !namespaces.iter().any(|n| n == "default") {
            namespaces.truncate(ENTRIES / 2 - 1);
            namespaces.insert(0, "default".to_string());
        }
        // In that order of worth, the first kept last: it is then the last pushed out.
        for ns in namespaces.into_iter().rev() {
            for mask in [Some(table.clone()), None] {
                let query = ListQuery {
                    ns: ns.clone(),
                    selector: LabelSelector::default(),
                    mask,
                };
                self.services(store, query)?;
            }
        }
        Ok(())
    }

    /// The slot kept for `query`, made empty when there is none; it becomes the most recently
    /// used, and the least recently used past [`ENTRIES`] is dropped.
    fn slot(&self, query: ListQuery) -> Arc<Slot> {
        let key = query.key();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match slots.iter().position(|s| s.key == key) {
            Some(i) => slots.remove(i),
            None => Arc::new(Slot {
                key,
                query,
                kept: Mutex::default(),
            }),
        };
        slots.insert(0, slot.clone());
        slots.truncate(ENTRIES);
        slot
    }
}

impl Slot {
    /// The kept answer, brought up to date with the store first when a service changed.
    fn up_to_date(&self, store: &Store) -> ApiResult<Bytes> {
        let query = &self.query;
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = kept.as_ref() {
            if k.version == store.services_version() {
                return Ok(k.body.clone());
            }
        }
        let changes = match kept.as_ref() {
            Some(k) => store.service_changes_since(&query.ns, k.version)?,
            None => None,
        };
        let fresh = match (kept.take(), changes) {
            (Some(old), Some(changes)) => update(old, changes, query)?,
            _ => build(store, query)?,
        };
        let body = fresh.body.clone();
        *kept = Some(fresh);
        Ok(body)
    }
}

/// The answer for `query` built from every stored service.
fn build(store: &Store, query: &ListQuery) -> ApiResult<Kept> {
    let listed = store.list_service_bodies(&query.ns, None, None)?;
    let (head, item_mask) = crate::routes::list_head(
        "serving.knative.dev/v1",
        "ServiceList",
        None,
        query.mask.as_ref(),
    )?;
    let Some(item_mask) = item_mask else {
        return Ok(Kept {
            version: listed.version,
            body: Bytes::from(head + "}"),
            items: None,
        });
    };
    // Every item's whole text when the mask keeps it whole; a projection's size is not
    // known ahead, so its answer grows as it is written.
    let room = match item_mask {
        FieldMask::All => listed.items.iter().map(|(_, b)| b.len() + 1).sum(),
        FieldMask::Fields(_) => 0,
    };
    let mut out = Joiner::new(head, room);
    for (name, body) in &listed.items {
        if let Some(text) = item_text(body, query, item_mask)? {
            out.push(name.clone(), text.as_bytes());
        }
    }
    Ok(out.finish(listed.version, b"]}"))
}

/// `old` with the services in `changes` replaced, added or removed.
fn update(old: Kept, changes: skiff_store::ServiceChanges, query: &ListQuery) -> ApiResult<Kept> {
    let at = match old.items {
        Some(at) if !changes.items.is_empty() => at,
        // The mask leaves the items out (nothing a service holds is in the answer), or only
        // other namespaces' services changed.
        items => {
            return Ok(Kept {
                version: changes.version,
                body: old.body,
                items,
            })
        }
    };
    // Kept items: the mask keeps `items`.
    let item_mask = query
        .mask
        .as_ref()
        .unwrap_or(&FieldMask::All)
        .child("items")
        .unwrap_or(&FieldMask::All);
    let mut fresh = Vec::with_capacity(changes.items.len());
    for (name, body) in &changes.items {
        let text = match body {
            Some(body) => item_text(body, query, item_mask)?,
            None => None,
        };
        fresh.push((name.clone(), text));
    }
    let old_body = &old.body[..];
    let grown: usize = fresh
        .iter()
        .filter_map(|(_, t)| t.as_ref().map(|t| t.len() + 1))
        .sum();
    let head = old_body[..at.start].to_vec();
    let mut out = Joiner::from_bytes(head, old_body.len() + grown);
    let mut fresh = fresh.into_iter().peekable();
    let mut index = at.index.into_iter().peekable();
    loop {
        // Whichever comes first by name: a changed service, or a kept one (which a change
        // of the same name replaces).
        let take_fresh = match (fresh.peek(), index.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((f, _)), Some((k, _))) => f <= k,
        };
        if take_fresh {
            let (name, text) = fresh.next().expect("peeked");
            if index.peek().is_some_and(|(k, _)| *k == name) {
                index.next();
            }
            if let Some(text) = text {
                out.push(name, text.as_bytes());
            }
        } else {
            let (name, range) = index.next().expect("peeked");
            out.push(name, &old_body[range]);
        }
    }
    Ok(out.finish(changes.version, &old_body[at.end..]))
}

/// What the list keeps of one stored service: `None` when the selector leaves it out, else
/// its text with only what `item_mask` keeps.
fn item_text<'a>(
    body: &'a str,
    query: &ListQuery,
    item_mask: &FieldMask,
) -> ApiResult<Option<std::borrow::Cow<'a, str>>> {
    let corrupt = |e: serde_json::Error| ApiError::internal(format!("stored service: {e}"));
    if !query.selector.requirements.is_empty() {
        let labels: crate::jobs::LabelsOnly = serde_json::from_str(body).map_err(corrupt)?;
        if !query.selector.matches_map(&labels.metadata.labels) {
            return Ok(None);
        }
    }
    Ok(Some(match item_mask {
        FieldMask::All => body.into(),
        mask => {
            let mut out = String::with_capacity(256);
            mask.project(body, &mut out).map_err(corrupt)?;
            out.into()
        }
    }))
}

/// An answer being written: its head, then items joined by `,`, each one's range noted.
struct Joiner {
    out: Vec<u8>,
    start: usize,
    index: Vec<(String, Range<usize>)>,
}

impl Joiner {
    /// After `head` (which ends where the first item goes), with room for `items` bytes.
    fn new(head: String, items: usize) -> Joiner {
        let capacity = head.len() + items + 2;
        Joiner::from_bytes(head.into_bytes(), capacity)
    }

    /// After `head`, the answer's text up to where the first item goes.
    fn from_bytes(mut head: Vec<u8>, capacity: usize) -> Joiner {
        head.reserve(capacity.saturating_sub(head.len()));
        Joiner {
            start: head.len(),
            out: head,
            index: Vec::new(),
        }
    }

    fn push(&mut self, name: String, text: &[u8]) {
        if !self.index.is_empty() {
            self.out.push(b',');
        }
        let at = self.out.len();
        self.out.extend_from_slice(text);
        self.index.push((name, at..self.out.len()));
    }

    /// The answer, closed by `tail` (`]}`).
    fn finish(mut self, version: u64, tail: &[u8]) -> Kept {
        let end = self.out.len();
        self.out.extend_from_slice(tail);
        // What grew by doubling gives back the rest: this answer may be kept for long.
        self.out.shrink_to_fit();
        Kept {
            version,
            body: Bytes::from(self.out),
            items: Some(ItemsAt {
                start: self.start,
                end,
                index: self.index,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_model::Service;

    fn svc(name: &str, labels: &[(&str, &str)], url: &str) -> Service {
        let mut s = Service::default();
        s.metadata.name = name.into();
        s.metadata.namespace = "default".into();
        for (k, v) in labels {
            s.metadata.labels.insert(k.to_string(), v.to_string());
        }
        s.status = Some(skiff_model::ServiceStatus {
            url: Some(url.into()),
            ..Default::default()
        });
        s
    }

    fn query(ns: &str, selector: &str, mask: Option<&str>) -> ListQuery {
        ListQuery {
            ns: ns.into(),
            selector: LabelSelector::parse(selector).unwrap(),
            mask: mask.map(|m| FieldMask::parse(m).unwrap()),
        }
    }

    /// The answer made from every stored service, as the paged path makes it.
    fn from_scratch(store: &Store, q: &ListQuery) -> String {
        let items: Vec<String> = store
            .list_service_bodies(&q.ns, None, None)
            .unwrap()
            .items
            .into_iter()
            .filter(|(_, b)| item_text(b, q, &FieldMask::All).unwrap().is_some())
            .map(|(_, b)| b)
            .collect();
        crate::routes::stored_list_text(
            "serving.knative.dev/v1",
            "ServiceList",
            None,
            items.iter().map(String::as_str),
            q.mask.as_ref(),
        )
        .unwrap()
    }

    const MASKS: [Option<&str>; 4] = [
        None,
        Some(skiff_model::SERVICE_TABLE_FIELDS),
        Some("kind"),
        Some("items.metadata.labels,kind"),
    ];
    const SELECTORS: [&str; 2] = ["", "team=a"];

    fn queries() -> impl Iterator<Item = ListQuery> {
        MASKS
            .into_iter()
            .flat_map(|m| SELECTORS.into_iter().map(move |s| query("default", s, m)))
    }

    #[test]
    fn kept_answers_follow_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        // One cache per query: more queries than one keeps would push each other out.
        let caches: Vec<ListCache> = queries().map(|_| ListCache::default()).collect();
        let check = |step: &str| {
            for (q, cache) in queries().zip(&caches) {
                let want = from_scratch(&store, &q);
                let what = format!("{step}: {}", q.key());
                let kept = cache.services(&store, q).unwrap();
                assert_eq!(std::str::from_utf8(&kept).unwrap(), want, "{what}");
                serde_json::from_slice::<serde_json::Value>(&kept).unwrap();
            }
        };
        check("empty");
        // A small, repeatable sequence of creates, updates and deletes, with the answers
        // read between some of them (and so brought up to date) and not others.
        let mut x: u32 = 7;
        for step in 0..300 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let name = format!("s{}", (x >> 8) % 40);
            let team = if (x >> 4).is_multiple_of(2) { "a" } else { "b" };
            match (x >> 16) % 4 {
                0 => {
                    store.delete_service("default", &name).unwrap();
                }
                _ => store
                    .put_service(&svc(&name, &[("team", team)], &format!("http://{step}")))
                    .unwrap(),
            }
            if (x >> 20).is_multiple_of(3) {
                check(&format!("step {step}"));
            }
        }
        check("the end");
        // Another namespace's writes leave these answers as they are.
        let mut other = svc("z", &[], "http://z");
        other.metadata.namespace = "team".into();
        store.put_service(&other).unwrap();
        check("a write elsewhere");
        // More writes than the store remembers: built again from every service.
        for i in 0..skiff_store::CHANGES_KEPT + 1 {
            store
                .put_service(&svc("s1", &[("team", "a")], &format!("http://many{i}")))
                .unwrap();
        }
        check("past the change log");
    }

    /// The kept answer of `q`, if any, and the version it is at.
    fn kept(cache: &ListCache, q: &ListQuery) -> Option<(u64, Bytes)> {
        let slots = cache.slots.lock().unwrap();
        let slot = slots.iter().find(|s| s.key == q.key())?;
        let kept = slot.kept.lock().unwrap();
        kept.as_ref().map(|k| (k.version, k.body.clone()))
    }

    #[test]
    fn warm_and_refresh_keep_gclouds_and_the_clis_lists_ready() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        for ns in ["team", "team", "ops"] {
            let mut s = svc(
                &format!("in-{ns}-{}", store.services_version()),
                &[],
                "http://x",
            );
            s.metadata.namespace = ns.into();
            store.put_service(&s).unwrap();
        }
        let cache = ListCache::default();
        cache.warm(&store).unwrap();
        let keys: Vec<String> = cache
            .slots
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.key.clone())
            .collect();
        let table = Some(skiff_model::SERVICE_TABLE_FIELDS);
        // `default` (the CLI's project), then the namespace with the most services.
        let want: Vec<String> = [
            query("default", "", None),
            query("default", "", table),
            query("team", "", None),
            query("team", "", table),
        ]
        .iter()
        .map(ListQuery::key)
        .collect();
        assert_eq!(keys, want);
        // A write, then a refresh: the answers are current before anyone asks.
        let v0 = store.services_version();
        store.put_service(&svc("new", &[], "http://new")).unwrap();
        let q = query("default", "", table);
        assert_eq!(
            kept(&cache, &q).unwrap().0,
            v0,
            "not yet brought up to date"
        );
        cache.refresh(&store).unwrap();
        let (version, body) = kept(&cache, &q).unwrap();
        assert_eq!(version, store.services_version());
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            from_scratch(&store, &q)
        );
        assert!(std::str::from_utf8(&body).unwrap().contains("http://new"));
    }
}
