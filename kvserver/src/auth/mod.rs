//! Who a client is and what it may do (threat model and the role table:
//! `docs/security.md`).
//!
//! A request is *authenticated* once, on the node that received it, into a
//! [`Principal`]: a name, a [`Role`] and the key prefixes the role is limited
//! to. Every route then *authorizes* what the request touches against that
//! principal in the routing layer (`crate::route`), the one place every request
//! passes, received from a client or forwarded by another node. A write
//! forwarded over the peer port carries its principal, and the leader checks the
//! command against it again ([`check_command`]); a request relayed over HTTP
//! carries the client's own credential, which the leader authenticates itself.
//! Nothing a client sends is taken as a principal without proof.
//!
//! # Layout
//! - this file: roles, principals, the access a request needs, the checks;
//! - [`tokens`]: bearer tokens from files (Secrets), hashed in memory, reloaded;
//! - [`serviceaccount`]: Kubernetes ServiceAccount tokens, checked by a
//!   TokenReview and mapped to roles by binding;
//! - [`authn`]: [`Authenticator`], credentials (bearer token, ServiceAccount
//!   token, client certificate) to principals.

pub mod authn;
pub mod serviceaccount;
pub mod tokens;

use serde::Deserialize;
use serde::Serialize;

pub use self::authn::AuthFailure;
pub use self::authn::Authenticator;
pub use self::authn::CertIdentity;
pub use self::authn::Unauthenticated;
use crate::command::Command;
use crate::command::TxnStep;

/// What a principal may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Get, list, batch get, watch; txn with only compares and gets.
    Read,
    /// `read`, plus put, delete, prefix delete and any txn.
    Readwrite,
    /// `readwrite`, plus the cluster calls (init, learners, membership,
    /// leader transfer) and, later, backups.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Readwrite => "readwrite",
            Role::Admin => "admin",
        }
    }
}

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Authentication is off (`auth.enabled: false`): everyone is this admin.
    Anonymous,
    /// A bearer token from `auth.token_files`.
    Token,
    /// A client certificate bound in `auth.client_certs`.
    Certificate,
    /// A Kubernetes ServiceAccount token.
    ServiceAccount,
}

/// An authenticated caller: who, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The name from the token file, certificate binding or ServiceAccount
    /// (`namespace/name`); shown in logs and errors, never a secret.
    pub name: String,
    pub kind: Kind,
    pub role: Role,
    /// Keys the role is limited to: those starting with one of these. Empty:
    /// every key.
    pub prefixes: Vec<String>,
}

/// What a request touches, checked against a [`Principal`].
#[derive(Debug, Clone, Copy)]
pub enum Access<'a> {
    /// Read one key.
    Read(&'a str),
    /// Read every key under a prefix (list, watch): the whole prefix must be
    /// granted; a request reaching outside the grant is refused, never filtered.
    ReadPrefix(&'a str),
    /// Write (put, delete) one key.
    Write(&'a str),
    /// Delete every key under a prefix.
    WritePrefix(&'a str),
    /// A cluster call.
    Admin,
}

/// Why a principal may not do what it asked (HTTP 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{0}")]
pub struct Forbidden(pub String);

impl Principal {
    /// Everyone, when authentication is off.
    pub fn anonymous() -> Self {
        Self {
            name: "anonymous".into(),
            kind: Kind::Anonymous,
            role: Role::Admin,
            prefixes: Vec::new(),
        }
    }

    fn covers_key(&self, key: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// A prefix is covered when every key under it is: it lies inside one grant.
    fn covers_prefix(&self, prefix: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| prefix.starts_with(p.as_str()))
    }

    fn scope(&self) -> String {
        if self.prefixes.is_empty() {
            "on all keys".into()
        } else {
            format!("limited to prefixes {:?}", self.prefixes)
        }
    }

    fn refuse(&self, what: String) -> Forbidden {
        Forbidden(format!(
            "{} (role {}, {}) may not {what}",
            self.name,
            self.role.as_str(),
            self.scope()
        ))
    }

    /// Whether this principal may do `access`.
    pub fn check(&self, access: Access<'_>) -> Result<(), Forbidden> {
        let (need, inside, what) = match access {
            Access::Read(k) => (Role::Read, self.covers_key(k), format!("read key {k:?}")),
            Access::ReadPrefix(p) => (
                Role::Read,
                self.covers_prefix(p),
                format!("read the keys under prefix {p:?}"),
            ),
            Access::Write(k) => (
                Role::Readwrite,
                self.covers_key(k),
                format!("write key {k:?}"),
            ),
            Access::WritePrefix(p) => (
                Role::Readwrite,
                self.covers_prefix(p),
                format!("delete the keys under prefix {p:?}"),
            ),
            Access::Admin => (Role::Admin, true, "change the cluster".into()),
        };
        if self.role >= need && inside {
            Ok(())
        } else {
            Err(self.refuse(what))
        }
    }

    /// Every key of `keys` may be read.
    pub fn check_reads<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<(), Forbidden> {
        keys.into_iter()
            .try_for_each(|k| self.check(Access::Read(k)))
    }
}

/// Whether `principal` may have `cmd` proposed: every key a write touches is
/// written, every key a transaction compares or gets is read. Run by the node
/// that received the request and again by the leader for a forwarded write.
pub fn check_command(principal: &Principal, cmd: &Command) -> Result<(), Forbidden> {
    match cmd {
        Command::Put { key, .. } | Command::Delete { key, .. } => {
            principal.check(Access::Write(key))
        }
        Command::DeletePrefix { prefix, .. } => principal.check(Access::WritePrefix(prefix)),
        Command::Txn {
            compare,
            success,
            failure,
            ..
        } => {
            principal.check_reads(compare.iter().map(|c| c.key.as_str()))?;
            for step in success.iter().chain(failure) {
                match step {
                    TxnStep::Put { key, .. } | TxnStep::Delete { key } => {
                        principal.check(Access::Write(key))?
                    }
                    TxnStep::Get { key } => principal.check(Access::Read(key))?,
                }
            }
            Ok(())
        }
        // Expiry is the leader's own housekeeping; no client builds it.
        Command::Expire { .. } => Err(principal.refuse("propose an expiry".into())),
        // Placement is the cluster leader's own housekeeping too.
        Command::Place { .. } => Err(principal.refuse("change the placement".into())),
    }
}

#[cfg(test)]
mod tests;
