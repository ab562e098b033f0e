//! What clients record: one [`Op`] per request, with the time it was sent
//! (invoke), the time its answer arrived (complete) and what the answer said.
//!
//! Outcomes are classified conservatively. A definite failure (the node said
//! nothing was proposed: 4xx, or 503 `no_leader` / `not_initialized` /
//! `shutting_down`) had no effect and is left out of the check. Anything else
//! that is not a success (timeouts, resets, `leader_unreachable`,
//! `commit_timeout`, `write_outcome_unknown`, 5xx) is **unknown**: the write may
//! take effect at any moment after its invoke, so the checker treats it as
//! never completing. Reads without an answer are dropped (they change nothing).

use serde::Deserialize;
use serde::Serialize;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Call {
    /// Linearizable read of the key.
    Read,
    /// Unconditional put.
    Write { value: String },
    /// Put `new` if the key's value equals `expect` (`None`: the key must not exist).
    Cas { expect: Option<String>, new: String },
}

/// What the answer said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Ret {
    /// The value read (`None`: key absent).
    Read {
        value: Option<String>,
    },
    Write,
    Cas {
        ok: bool,
    },
    /// No definite answer: the operation may or may not have taken effect.
    Unknown,
}

/// One operation on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub call: Call,
    pub ret: Ret,
    /// Microseconds since the run started, when the request was sent.
    pub invoke_us: u64,
    /// When the answer arrived; `u64::MAX` for unknown outcomes (may linearize any time after invoke).
    pub complete_us: u64,
    /// The node the request was sent to (for reports).
    pub node: u64,
}

impl Op {
    pub fn describe(&self) -> String {
        let call = match &self.call {
            Call::Read => "read".to_string(),
            Call::Write { value } => format!("write {value:?}"),
            Call::Cas { expect, new } => format!("cas {expect:?} -> {new:?}"),
        };
        let ret = match &self.ret {
            Ret::Read { value } => format!("= {value:?}"),
            Ret::Write => "ok".into(),
            Ret::Cas { ok } => if *ok { "ok" } else { "failed (value differed)" }.into(),
            Ret::Unknown => "outcome unknown".into(),
        };
        let end = if self.complete_us == u64::MAX {
            "∞".to_string()
        } else {
            format!("{:.3}", self.complete_us as f64 / 1e6)
        };
        format!(
            "client {} via node {}: {call} {ret}  [{:.3}s, {end}s]",
            self.client,
            self.node,
            self.invoke_us as f64 / 1e6
        )
    }
}
