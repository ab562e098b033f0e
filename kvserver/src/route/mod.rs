//! Request routing: where a write, a linearizable read or a cluster call is
//! served — on this node, or by the leader — decided in one place for every
//! route. Handlers (`crate::api`) validate input and build the command; they
//! hand it here and map the [`Routed`] outcome to HTTP. Authorization happens
//! here too ([`authorize`]): every request passes through one of these
//! functions, whether it was received from a client or forwarded by another
//! node, and each says what it touches (`crate::auth::Access`). The API's
//! middleware (`crate::api::auth`) has already authenticated the caller and
//! kept cluster calls to `admin`.
//!
//! # Layout
//! - [`write`]: proposing a command here, or handing it to the leader
//!   ([`forward`], over the peer port), with the rules for leader changes.
//! - [`read`]: linearizable reads: ReadIndex on the leader, a read index fetched
//!   from the leader on followers ([`read_index`]).
//! - [`leader`]: calls only the leader serves (cluster changes) and the HTTP
//!   relay to the leader, the fallback of every other path.
//! - [`target`]: which Raft group serves a key (the cluster's, or its
//!   partition's), here or on a node that hosts it.
//! - [`fanout`]: requests that span every partition, one sub-request per
//!   partition where it is.

pub mod fanout;
pub mod forward;
pub mod leader;
pub mod read;
pub mod read_index;
pub mod target;
pub mod write;

use std::time::Duration;

use axum::response::Response;

use crate::api::ApiError;
use crate::api::AppState;
use crate::api::Raw;
use crate::auth::Access;
use crate::auth::Principal;

pub use self::leader::leader_only;
pub use self::leader::membership;
pub use self::leader::relay;
pub use self::read::read;
pub use self::target::Located;
pub use self::target::Target;
pub use self::target::locate;
pub use self::write::write;

/// Time a client write may wait for commit before the API gives up on it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a request was served. Every routing function returns this.
#[derive(Debug)]
pub enum Routed<T> {
    /// This node finishes the request with `T`: the result of a write (applied
    /// here, or by the leader and sent back over the peer port), or `()` once a
    /// read may be served from the local state / a leader-only call may run here.
    Local(T),
    /// The leader answered the relayed HTTP request; its response goes back as is.
    Relayed(Response),
}

/// Whether `principal` may do every access of `access`; a refusal is a 403
/// (counted in `kv_auth_refused_total`, logged at debug with the principal).
pub fn authorize(
    state: &AppState,
    principal: &Principal,
    access: &[Access<'_>],
) -> Result<(), ApiError> {
    access
        .iter()
        .try_for_each(|a| principal.check(*a))
        .map_err(|e| forbidden(state, principal, e))
}

/// Whether the caller of `raw` may have `cmd` proposed.
pub fn authorize_command(
    state: &AppState,
    raw: &Raw,
    cmd: &crate::command::Command,
) -> Result<(), ApiError> {
    crate::auth::check_command(&raw.principal, cmd).map_err(|e| forbidden(state, &raw.principal, e))
}

fn forbidden(state: &AppState, principal: &Principal, e: crate::auth::Forbidden) -> ApiError {
    state
        .metrics
        .auth_refused
        .with_label_values(&["forbidden"])
        .inc();
    tracing::debug!(principal = %principal.name, error = %e, "request forbidden");
    ApiError::Forbidden(e)
}
