//! Eventarc-style triggers in Skiff: the `eventarc.googleapis.com/v1` Trigger object, its REST
//! API, and the Pub/Sub plumbing that delivers a trigger's events to a Cloud Run service as
//! CloudEvents 1.0 in binary content mode.
//!
//! - [`trigger::Triggers`]: validation, create/get/list/delete, each trigger with its own push
//!   subscription in [`skiff_pubsub`] (so delivery has Pub/Sub's retry, backoff and
//!   dead-letter behaviour).
//! - [`rest`]: the HTTP routes (`/v1/projects/P/locations/L/triggers`, `.../operations/OP`).

pub mod error;
pub mod rest;
pub mod trigger;

pub use error::{EventsError, Result};
pub use trigger::{Trigger, Triggers};
