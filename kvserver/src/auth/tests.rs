//! Roles and prefixes against every kind of access and command; token files.

use std::io::Write;

use super::tokens::Tokens;
use super::*;
use crate::command::Condition;
use crate::command::ConditionOp;
use crate::command::ConditionTarget;

fn p(role: Role, prefixes: &[&str]) -> Principal {
    Principal {
        name: "t".into(),
        kind: Kind::Token,
        role,
        prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn roles_include_the_ones_below() {
    let read = p(Role::Read, &[]);
    let rw = p(Role::Readwrite, &[]);
    let admin = p(Role::Admin, &[]);
    for who in [&read, &rw, &admin] {
        assert!(who.check(Access::Read("a")).is_ok());
        assert!(who.check(Access::ReadPrefix("")).is_ok());
    }
    assert!(read.check(Access::Write("a")).is_err());
    assert!(read.check(Access::WritePrefix("a")).is_err());
    assert!(rw.check(Access::Write("a")).is_ok());
    assert!(rw.check(Access::WritePrefix("")).is_ok());
    assert!(read.check(Access::Admin).is_err());
    assert!(rw.check(Access::Admin).is_err());
    assert!(admin.check(Access::Admin).is_ok());
}

#[test]
fn prefixes_bound_keys_and_prefix_scans() {
    let who = p(Role::Readwrite, &["app/", "cfg/x"]);
    assert!(who.check(Access::Read("app/a")).is_ok());
    assert!(who.check(Access::Write("cfg/xy")).is_ok());
    assert!(who.check(Access::Read("ap")).is_err());
    assert!(who.check(Access::Write("other")).is_err());
    // A scan is allowed only when it lies inside a grant: never filtered.
    assert!(who.check(Access::ReadPrefix("app/sub/")).is_ok());
    assert!(who.check(Access::ReadPrefix("app/")).is_ok());
    assert!(who.check(Access::ReadPrefix("app")).is_err());
    assert!(who.check(Access::ReadPrefix("")).is_err());
    assert!(who.check(Access::WritePrefix("")).is_err());
    // Prefixes limit keys, not the cluster calls of an admin.
    assert!(p(Role::Admin, &["app/"]).check(Access::Admin).is_ok());
    let msg = who.check(Access::Write("other")).err().map(|e| e.0);
    assert!(msg.is_some_and(|m| m.contains("readwrite") && m.contains("\"other\"")));
}

#[test]
fn commands_need_every_key_they_touch() {
    let put = |k: &str| Command::Put {
        key: k.into(),
        value: "v".into(),
        expires_at_ms: None,
        if_revision: None,
        now_ms: 0,
    };
    let who = p(Role::Readwrite, &["app/"]);
    assert!(check_command(&who, &put("app/a")).is_ok());
    assert!(check_command(&who, &put("x")).is_err());
    assert!(check_command(&p(Role::Read, &[]), &put("app/a")).is_err());
    let del = Command::DeletePrefix {
        prefix: "app/".into(),
        now_ms: 0,
    };
    assert!(check_command(&who, &del).is_ok());
    let wide = Command::DeletePrefix {
        prefix: "ap".into(),
        now_ms: 0,
    };
    assert!(check_command(&who, &wide).is_err());
    let txn = |cmp: &str, get: &str, put: &str| Command::Txn {
        compare: vec![Condition {
            key: cmp.into(),
            op: ConditionOp::Eq,
            target: ConditionTarget::Exists(true),
        }],
        success: vec![
            TxnStep::Get { key: get.into() },
            TxnStep::Put {
                key: put.into(),
                value: "v".into(),
                expires_at_ms: None,
            },
        ],
        failure: vec![TxnStep::Delete {
            key: "app/z".into(),
        }],
        now_ms: 0,
    };
    assert!(check_command(&who, &txn("app/a", "app/b", "app/c")).is_ok());
    // One key out of scope anywhere refuses the whole transaction.
    assert!(check_command(&who, &txn("x", "app/b", "app/c")).is_err());
    assert!(check_command(&who, &txn("app/a", "x", "app/c")).is_err());
    assert!(check_command(&who, &txn("app/a", "app/b", "x")).is_err());
    // A reader may compare and get, not write, in a transaction.
    let reader = p(Role::Read, &[]);
    assert!(check_command(&reader, &txn("a", "b", "c")).is_err());
    let expire = Command::Expire {
        keys: vec!["app/a".into()],
        now_ms: 0,
    };
    assert!(check_command(&p(Role::Admin, &[]), &expire).is_err());
}

fn file(text: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    let mut f = tempfile::NamedTempFile::new()?;
    f.write_all(text.as_bytes())?;
    Ok(f)
}

#[test]
fn token_files_load_and_look_up_by_digest() -> anyhow::Result<()> {
    let f = file(
        "tokens:\n  - {name: alice, token: alice-token-0123456789, role: readwrite, prefixes: [app/]}\n  - {name: alice, token: alice-token-rotated-0123, role: readwrite}\n  - {name: ops, token: ops-token-0123456789ab, role: admin}\n",
    )?;
    let t = Tokens::load(vec![f.path().to_path_buf()])?;
    assert_eq!(t.len(), 3);
    let a = t.lookup("alice-token-0123456789");
    assert_eq!(a.as_ref().map(|p| p.role), Some(Role::Readwrite));
    assert_eq!(
        a.map(|p| p.prefixes.clone()),
        Some(vec!["app/".to_string()])
    );
    assert!(t.lookup("alice-token-rotated-0123").is_some());
    assert!(t.lookup("alice-token-012345678").is_none());
    assert!(t.lookup("").is_none());
    Ok(())
}

#[test]
fn bad_token_files_name_the_entry_and_never_the_token() -> anyhow::Result<()> {
    let cases = [
        (
            "tokens:\n  - {name: a, token: short, role: read}\n",
            "tokens[0] (a)",
        ),
        (
            "tokens:\n  - {name: a, token: [12345678901234567890], role: read}\n",
            "tokens[0].token: must be a string",
        ),
        (
            "tokens:\n  - {name: a, token: ok-token-0123456789, role: owner}\n",
            "tokens[0].role",
        ),
        (
            "tokens:\n  - {name: 'a b', token: ok-token-0123456789, role: read}\n",
            "name must be",
        ),
        (
            "tokens:\n  - {name: a, token: ok-token-0123456789, role: read, prefixes: ['']}\n",
            "prefixes[0]",
        ),
        (
            "tokens:\n  - {name: a, token: ok-token-0123456789, role: read}\n  - {name: b, token: ok-token-0123456789, role: admin}\n",
            "listed twice",
        ),
        (
            "tokens:\n  - {name: a, token: ok-token-0123456789, role: read, extra: 1}\n",
            "extra",
        ),
    ];
    for (text, want) in cases {
        let f = file(text)?;
        let err = Tokens::load(vec![f.path().to_path_buf()])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(want), "{text}: {err}");
        for secret in ["ok-token-0123456789", "12345678901234567890", "short"] {
            assert!(!err.contains(secret), "{err} shows a token");
        }
    }
    Ok(())
}

#[test]
fn a_bad_reload_keeps_the_old_tokens_and_a_good_one_replaces_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tokens.yaml");
    std::fs::write(
        &path,
        "tokens:\n  - {name: a, token: first-token-0123456789, role: read}\n",
    )?;
    let t = Tokens::load(vec![path.clone()])?;
    assert!(!t.reload()?, "unchanged files are not reloaded");
    std::fs::write(&path, "tokens: [")?;
    assert!(t.reload().is_err());
    assert!(t.failing().is_some());
    assert!(t.lookup("first-token-0123456789").is_some());
    // The same bad contents are reported once.
    assert!(!t.reload()?);
    // Undoing the bad change clears the failure.
    std::fs::write(
        &path,
        "tokens:\n  - {name: a, token: first-token-0123456789, role: read}\n",
    )?;
    assert!(!t.reload()?);
    assert!(t.failing().is_none());
    std::fs::write(&path, "tokens: [")?;
    assert!(t.reload().is_err());
    std::fs::write(
        &path,
        "tokens:\n  - {name: a, token: second-token-0123456789, role: read}\n",
    )?;
    assert!(t.reload()?);
    assert!(t.failing().is_none());
    assert!(t.lookup("first-token-0123456789").is_none());
    assert!(t.lookup("second-token-0123456789").is_some());
    std::fs::remove_file(&path)?;
    assert!(t.reload().is_err(), "a missing file fails the reload");
    assert!(t.lookup("second-token-0123456789").is_some());
    Ok(())
}
