//! Logs as Cloud Logging keeps them: what services' instances and jobs' tasks write, and one
//! entry per request, stored so that reads cost in proportion to what they return, kept
//! within a retention and a size cap, and served as Cloud Logging API v2 `LogEntry` objects
//! filtered with the logging query language.
//!
//! - [`record`]: one stored line ([`LogLine`]) and where it came from.
//! - [`store`]: the SQLite store (`DATA/logs/logs.db`): append, newest-first and
//!   oldest-first scans by service, job or execution and time, retention and size cap.
//! - [`filter`]: the logging query language subset (`resource.type`, labels, `severity>=`,
//!   `timestamp>=`, `textPayload:`, `AND`/`OR`/`NOT`).
//! - [`entry`]: a stored line as Cloud Run's `LogEntry` (`cloud_run_revision`,
//!   `cloud_run_job`, `textPayload` or `jsonPayload`, `httpRequest`).

pub mod entry;
pub mod filter;
pub mod record;
pub mod store;

pub use entry::to_entry;
pub use filter::{Filter, FilterError};
pub use record::{HttpRequest, LogLine, LogResource, LogSource};
pub use store::{Limits, LogStore, Scan, StoreError};
