//! Pub/Sub in Skiff: Google's `google.pubsub.v1` API (topics, subscriptions, publish, pull,
//! streaming pull, acknowledge, ack deadlines, seek, snapshots) over gRPC and REST/JSON,
//! durable in its own SQLite database.
//!
//! - [`broker::Broker`]: the engine (fan-out, leases, redelivery, ordering, retry backoff,
//!   dead-lettering) and its Rust API, which every surface calls.
//! - `delivery.rs`: one subscription's delivery state machine, pure.
//! - `store.rs`: the database and its group-committing writer.
//! - `filter.rs`: the subscription filter language.
//! - [`grpc`]: the Publisher and Subscriber gRPC services; [`rest`]: the REST/JSON API;
//!   [`listener`]: both on one port with the credential rule for emulator-style clients;
//!   [`iam`]: resource policies and the permission each call needs.

pub mod broker;
pub mod delivery;
pub mod error;
pub mod filter;
pub mod grpc;
pub mod iam;
pub mod listener;
pub mod metrics;
pub mod names;
pub mod push;
pub mod rest;
mod store;

/// The `google.pubsub.v1` messages and gRPC service traits, generated from the vendored protos.
#[allow(clippy::all)]
pub mod proto {
    tonic::include_proto!("google.pubsub.v1");
}

pub use broker::Broker;
pub use error::{PubsubError, Result};
