//! What makes a command acceptable, in one place for both doors a write comes
//! in by: the client API (after it parsed a request into a command) and the peer
//! port, where the leader checks a follower's forwarded write again before
//! proposing it. A member is trusted to be a member, not to be right: it may run
//! another release, or be compromised, and a command in the log is applied by
//! every replica forever.
//!
//! The API's handlers check the same rules first, to answer with their precise
//! errors; `crate::route::write` runs [`Command::check`] on every write it
//! routes, so the two doors cannot drift apart.

use serde::Deserialize;
use serde::Serialize;

use super::Command;
use super::ConditionOp;
use super::ConditionTarget;
use super::TxnStep;

/// Longest key (and prefix) in bytes.
pub const MAX_KEY_BYTES: usize = 4096;
/// Longest TTL accepted (10 years): keeps `now + ttl` far from overflow.
pub const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;
/// Most comparisons, and most operations per branch, in one transaction.
pub const MAX_TXN_ITEMS: usize = 128;

/// Why a command is not acceptable: an API error code and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{code}: {message}")]
pub struct Invalid {
    pub code: String,
    pub message: String,
}

fn invalid(code: &str, message: impl Into<String>) -> Invalid {
    Invalid {
        code: code.to_string(),
        message: message.into(),
    }
}

/// A key: 1 to [`MAX_KEY_BYTES`] bytes, no NUL.
pub fn check_key(key: &str) -> Result<(), Invalid> {
    if key.is_empty() {
        return Err(invalid("invalid_key", "key must not be empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(
            "key_too_long",
            format!("key is {} bytes; the limit is {MAX_KEY_BYTES}", key.len()),
        ));
    }
    if key.contains('\0') {
        return Err(invalid(
            "invalid_key",
            "key must not contain NUL characters",
        ));
    }
    Ok(())
}

fn check_value(value: &str, max_value_bytes: usize) -> Result<(), Invalid> {
    if value.len() > max_value_bytes {
        return Err(invalid(
            "value_too_large",
            format!(
                "value is {} bytes; the limit is {max_value_bytes}",
                value.len()
            ),
        ));
    }
    Ok(())
}

fn check_expiry(expires_at_ms: Option<u64>, now_ms: u64) -> Result<(), Invalid> {
    match expires_at_ms {
        None => Ok(()),
        Some(e) if e > now_ms && e - now_ms <= MAX_TTL_SECONDS * 1000 => Ok(()),
        Some(_) => Err(invalid(
            "invalid_ttl",
            format!("a TTL must be between 1 and {MAX_TTL_SECONDS} seconds"),
        )),
    }
}

impl Command {
    /// Whether this command may enter the log as a client's write.
    pub fn check(&self, max_value_bytes: usize) -> Result<(), Invalid> {
        match self {
            Command::Put {
                key,
                value,
                expires_at_ms,
                now_ms,
                ..
            } => {
                check_key(key)?;
                check_value(value, max_value_bytes)?;
                check_expiry(*expires_at_ms, *now_ms)
            }
            Command::Delete { key, .. } => check_key(key),
            Command::DeletePrefix { prefix, .. } => {
                if prefix.is_empty() {
                    return Err(invalid("invalid_parameter", "prefix must not be empty"));
                }
                if prefix.len() > MAX_KEY_BYTES {
                    return Err(invalid(
                        "key_too_long",
                        format!("prefix is longer than {MAX_KEY_BYTES} bytes"),
                    ));
                }
                Ok(())
            }
            Command::Place { .. } => Err(invalid(
                "invalid_command",
                "the placement is proposed by the cluster group's leader itself, never by a client or a peer",
            )),
            // Only the leader's own expiry reaper proposes these.
            Command::Expire { .. } => Err(invalid(
                "invalid_command",
                "expiry is proposed by the leader itself, never by a client or a peer",
            )),
            Command::Txn {
                compare,
                success,
                failure,
                now_ms,
            } => {
                for (name, n) in [
                    ("compare", compare.len()),
                    ("success", success.len()),
                    ("failure", failure.len()),
                ] {
                    if n > MAX_TXN_ITEMS {
                        return Err(invalid(
                            "invalid_txn",
                            format!("{name} has {n} items; the limit is {MAX_TXN_ITEMS}"),
                        ));
                    }
                }
                for c in compare {
                    check_key(&c.key)?;
                    if matches!(c.target, ConditionTarget::Exists(_))
                        && !matches!(c.op, ConditionOp::Eq | ConditionOp::Ne)
                    {
                        return Err(invalid("invalid_txn", "exists takes only == or !="));
                    }
                }
                for step in success.iter().chain(failure) {
                    match step {
                        TxnStep::Put {
                            key,
                            value,
                            expires_at_ms,
                        } => {
                            check_key(key)?;
                            check_value(value, max_value_bytes)?;
                            check_expiry(*expires_at_ms, *now_ms)?;
                        }
                        TxnStep::Delete { key } | TxnStep::Get { key } => check_key(key)?,
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Condition;

    fn put(key: &str, value: &str, expires_at_ms: Option<u64>) -> Command {
        Command::Put {
            key: key.into(),
            value: value.into(),
            expires_at_ms,
            if_revision: None,
            now_ms: 1_000,
        }
    }

    #[test]
    fn what_the_api_refuses_is_refused_here_too() {
        let max = 8;
        assert!(put("k", "12345678", None).check(max).is_ok());
        assert!(put("k", "12345678", Some(2_000)).check(max).is_ok());
        let code = |c: Command| c.check(max).map_err(|e| e.code);
        assert_eq!(code(put("", "v", None)), Err("invalid_key".into()));
        assert_eq!(code(put("a\0b", "v", None)), Err("invalid_key".into()));
        assert_eq!(
            code(put(&"k".repeat(MAX_KEY_BYTES + 1), "v", None)),
            Err("key_too_long".into())
        );
        assert_eq!(
            code(put("k", "123456789", None)),
            Err("value_too_large".into())
        );
        assert_eq!(code(put("k", "v", Some(1_000))), Err("invalid_ttl".into()));
        assert_eq!(
            code(put("k", "v", Some(1_000 + MAX_TTL_SECONDS * 1000 + 1))),
            Err("invalid_ttl".into())
        );
        assert_eq!(
            code(Command::DeletePrefix {
                prefix: String::new(),
                now_ms: 0
            }),
            Err("invalid_parameter".into())
        );
        assert_eq!(
            code(Command::Expire {
                keys: vec!["k".into()],
                now_ms: 0
            }),
            Err("invalid_command".into())
        );
        // A placement map arrives only from the cluster leader's own driver.
        assert_eq!(
            code(Command::Place {
                map: crate::placement::map::PlacementMap::default(),
                now_ms: 0
            }),
            Err("invalid_command".into())
        );
        let txn = |compare: Vec<Condition>, success: Vec<TxnStep>| Command::Txn {
            compare,
            success,
            failure: vec![],
            now_ms: 1_000,
        };
        assert_eq!(
            code(txn(vec![], vec![TxnStep::Delete { key: String::new() }])),
            Err("invalid_key".into())
        );
        assert_eq!(
            code(txn(
                vec![Condition {
                    key: "k".into(),
                    op: ConditionOp::Lt,
                    target: ConditionTarget::Exists(true)
                }],
                vec![]
            )),
            Err("invalid_txn".into())
        );
        assert_eq!(
            code(txn(
                vec![],
                (0..=MAX_TXN_ITEMS)
                    .map(|i| TxnStep::Get {
                        key: format!("k{i}")
                    })
                    .collect()
            )),
            Err("invalid_txn".into())
        );
        assert!(
            txn(
                vec![],
                vec![TxnStep::Put {
                    key: "k".into(),
                    value: "v".into(),
                    expires_at_ms: Some(5_000)
                }]
            )
            .check(max)
            .is_ok()
        );
    }
}
