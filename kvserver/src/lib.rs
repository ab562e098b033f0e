//! kvserver: one node of kvcluster, a Raft-replicated, strongly consistent
//! key-value store with an HTTP/JSON API.
//!
//! # Layout
//! - [`node`]: [`start_node`] wires everything together and owns shutdown; used by `main.rs` and tests.
//! - [`config`]: YAML file < `KV_*` env < CLI flags, strictly validated.
//! - [`model`]: the HTTP API's request/response types (shared with the client, documented in OpenAPI).
//! - [`types`]: the openraft type configuration and the replicated command language.
//! - [`store`]: SQLite (sqlx) persistence: Raft log and vote ([`store::log`]), the state
//!   machine ([`store::sm`]) and snapshot files ([`store::snapshot`]).
//! - [`network`]: the binary Raft peer transport (client and server) on its own port.
//! - [`api`]: the client HTTP API (axum): KV, cluster management, ops endpoints, forwarding.
//! - [`metrics`]: the node's Prometheus registry.
//!
//! # Why openraft 0.10 (alpha, pinned exactly)
//! 0.10 has leader transfer (`Trigger::transfer_leader` plus the `transfer_leader` RPC),
//! which the operator needs to move leadership off a node before removing it, and the v2
//! network API with a full-snapshot call that lets us stream a snapshot file instead of
//! chunking an in-memory buffer. 0.9 has neither. The alpha is pinned with `=` so an
//! upgrade is a deliberate change; the storage conformance suite guards it.

pub mod api;
pub mod config;
pub mod metrics;
pub mod model;
pub mod network;
pub mod node;
pub mod store;
pub mod types;

pub use config::Config;
pub use config::ConfigLoader;
pub use node::NodeError;
pub use node::NodeHandle;
pub use node::start_node;
