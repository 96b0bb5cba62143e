//! The vocabulary every other crate shares: Knative `serving.knative.dev/v1` objects as Cloud Run
//! Admin API v1 serves them, the settings Skiff derives from a revision, and the parsers for the
//! values users type (durations, sizes, CPU, names, `K=V` lists).
//!
//! Nothing here does I/O; it is plain data and validation so that the store, the API, the
//! serving plane and the CLI agree on one shape.

pub mod fields;
pub mod jobs;
pub mod knative;
pub mod names;
pub mod selector;
pub mod settings;
pub mod units;

pub use fields::*;
pub use jobs::*;
pub use knative::*;
pub use names::*;
pub use selector::{LabelSelector, SelectorError};
pub use settings::*;
pub use units::*;

/// A value a user gave that Skiff cannot accept; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

impl InvalidInput {
    pub fn new(msg: impl Into<String>) -> Self {
        InvalidInput(msg.into())
    }
}
