//! kvserver: one node of kvcluster, a Raft-replicated, strongly consistent
//! key-value store with an HTTP/JSON API.
//!
//! # Layout
//! - [`node`]: [`start_node`] wires everything together and owns shutdown; used by `main.rs` and tests.
//! - [`config`]: YAML file < `KV_*` env < CLI flags, strictly validated.
//! - [`model`]: the HTTP API's request/response types (shared with the client, documented in OpenAPI).
//! - [`client`]: a typed async client (KV, txn, watch stream, cluster API) with endpoint failover.
//! - [`record`]: the stored form of a key, shared by the server and backup files.
//! - [`placement`]: partitions: which partition a key is in ([`placement::hash`]), and
//!   the pure planner that places each partition's replicas and leadership on pods and
//!   gives the next quorum-safe moves (issue 21; used by the server and the operator).
//! - [`backup`] (feature `backup`, in `server` and `cli`): the backup file and segment
//!   formats, destinations (a directory or S3-compatible object storage), continuous
//!   backup from the watch feed, and composing a restore point.
//!
//! Everything but `model` and `client` sits behind the default `server` feature; with
//! `default-features = false` the crate builds without openraft and sqlx (for the operator).
//! - [`command`]: the openraft type configuration and the replicated command language.
//! - [`raftlog`]: the Raft log and vote, one log per node shared by its Raft groups
//!   (`<data_dir>/raftlog/`), with group commit; openraft's log storage on top.
//! - [`store`]: the state machine in SQLite or PostgreSQL (sqlx): the key-value data
//!   ([`store::sm`]) and snapshot files ([`store::snapshot`]).
//! - [`catchup`]: a node that started empty neither campaigns nor votes until it
//!   holds an entry of the current leader's term (its replayed membership may be stale).
//! - [`restore`]: forming a cluster, from nothing or from a backup (`restore_from`).
//! - [`recover`]: forced recovery from permanent quorum loss: a new cluster from a survivor.
//! - [`group`]: the Raft groups a node hosts: group 0 (the cluster's) and one per
//!   hosted partition, each started by [`group::launch`] over the shared log.
//! - [`raft`]: the Raft handle, its openraft configuration, membership look-ups, proposing.
//! - [`peer`]: the binary Raft peer transport on its own port: [`peer::wire`],
//!   [`peer::client`] (outbound), [`peer::server`] (inbound).
//! - [`route`]: where each write, linearizable read and cluster call is served —
//!   here or by the leader (peer port, or the HTTP relay) — in one place for every route.
//! - [`api`]: the client HTTP API (axum): handlers that validate, build the command,
//!   route it ([`route`]) and map the outcome to HTTP; ops endpoints; OpenAPI.
//! - [`auth`]: who a client is (bearer tokens, client certificates) and what its
//!   role lets it do; checked in [`route`] for every request.
//! - [`metrics`]: the node's Prometheus registry.
//! - [`tls`]: certificates from files (reloaded on change), mutual TLS of the peer
//!   port and member identities, the HTTPS listener, client TLS settings, and (feature
//!   `ca`) issuing certificates. Client TLS settings and issuing build without `server`.
//!
//! # Why openraft 0.10 (alpha, pinned exactly)
//! 0.10 has leader transfer (`Trigger::transfer_leader` plus the `transfer_leader` RPC),
//! which the operator needs to move leadership off a node before removing it, and the v2
//! network API with a full-snapshot call that lets us stream a snapshot file instead of
//! chunking an in-memory buffer. 0.9 has neither. The alpha is pinned with `=` so an
//! upgrade is a deliberate change; the storage conformance suite guards it.

#[cfg(feature = "backup")]
pub mod backup;
pub mod client;
pub mod model;
pub mod placement;
pub mod record;
pub mod tls;

#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod catchup;
#[cfg(feature = "server")]
pub mod command;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod group;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod node;
#[cfg(feature = "server")]
pub mod peer;
#[cfg(feature = "server")]
pub mod raft;
#[cfg(feature = "server")]
pub mod raftlog;
#[cfg(feature = "server")]
pub mod recover;
#[cfg(feature = "server")]
pub mod restore;
#[cfg(feature = "server")]
pub mod route;
#[cfg(feature = "server")]
pub mod store;

#[cfg(feature = "server")]
pub use config::Config;
#[cfg(feature = "server")]
pub use config::ConfigLoader;
#[cfg(feature = "server")]
pub use node::NodeError;
#[cfg(feature = "server")]
pub use node::NodeHandle;
#[cfg(feature = "server")]
pub use node::start_node;
