//! Write statements collected and sent to the database together.
//!
//! With SQLite every statement is a hand-off to sqlx's worker thread and back,
//! and on this class of machine a thread wake-up costs about as much CPU as the
//! statement itself; after batching rows into multi-row statements
//! (`batch.rs`), an append still took two such trips and an apply six. A
//! [`Script`] collects a write path's statements (the `PRAGMA` that sets its
//! durability, `BEGIN`, the writes, `COMMIT`) with their arguments and sends
//! them to SQLite as one multi-statement query: one trip. For SQLite the
//! statements' `$N` placeholders are rewritten to anonymous `?`s, with the
//! arguments laid out in the order the placeholders appear: sqlx looks up the
//! name of every numbered parameter with `sqlite3_bind_parameter_name`, a linear
//! scan of the statement's parameter list, so binding a 64-row upsert with
//! numbered placeholders is quadratic (5 % of all CPU samples under a 64-connection
//! put load, the largest user-space symbol); anonymous ones have no name to look up.
//! PostgreSQL's extended protocol takes one statement per query, so there the
//! same script runs statement by statement on one connection.

use sqlx::Any;
use sqlx::AnyConnection;
use sqlx::Executor;

use super::StoreError;

/// One bound value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    Blob(Vec<u8>),
}

type Query<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>;

fn bind(q: Query<'_>, arg: Arg) -> Query<'_> {
    match arg {
        Arg::Int(v) => q.bind(v),
        Arg::OptInt(v) => q.bind(v),
        Arg::Text(v) => q.bind(v),
        Arg::Blob(v) => q.bind(v),
    }
}

/// Statements to run in order on one connection.
#[derive(Debug, Default)]
pub(crate) struct Script {
    statements: Vec<(&'static str, Vec<Arg>)>,
}

impl Script {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `sql` (placeholders `$1`… numbered within the statement) with its arguments.
    pub fn push(&mut self, sql: &'static str, args: Vec<Arg>) {
        self.statements.push((sql, args));
    }

    /// Runs every statement on `conn`: as one query when `one_trip` (SQLite), else
    /// one query per statement (PostgreSQL). An error leaves the statements before
    /// it executed: a script that opened a transaction must be rolled back by the
    /// caller.
    pub async fn run(self, conn: &mut AnyConnection, one_trip: bool) -> Result<(), StoreError> {
        if self.statements.is_empty() {
            return Ok(());
        }
        if one_trip {
            let (sql, args) = self.joined();
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for arg in args {
                q = bind(q, arg);
            }
            conn.execute(q).await?;
        } else {
            for (sql, args) in self.statements {
                let mut q = sqlx::query(sql);
                for arg in args {
                    q = bind(q, arg);
                }
                conn.execute(q).await?;
            }
        }
        Ok(())
    }

    /// All statements as one text with anonymous `?` placeholders, and the
    /// arguments in the order those appear (an argument used twice is bound twice).
    fn joined(self) -> (String, Vec<Arg>) {
        let mut sql = String::with_capacity(self.statements.iter().map(|(s, _)| s.len() + 2).sum());
        let mut args = Vec::with_capacity(self.statements.iter().map(|(_, a)| a.len()).sum());
        for (text, a) in self.statements {
            if !sql.is_empty() {
                sql.push_str(";\n");
            }
            let mut a: Vec<Option<Arg>> = a.into_iter().map(Some).collect();
            // Where each argument went in `args`, for a placeholder that repeats.
            let mut placed: Vec<Option<usize>> = vec![None; a.len()];
            anonymize(text, &mut sql, |n| {
                let i = n.checked_sub(1).filter(|&i| i < a.len())?;
                let arg = match (a[i].take(), placed[i]) {
                    (Some(arg), _) => arg,
                    (None, Some(at)) => args.get(at).cloned()?,
                    (None, None) => return None,
                };
                placed[i] = Some(args.len());
                args.push(arg);
                Some(())
            });
        }
        (sql, args)
    }
}

/// Appends `sql` to `out` with every placeholder `$n` written as `?`, calling
/// `bound(n)` for each in order of appearance. A `$n` that `bound` rejects (no
/// such argument) is kept as written, so SQLite reports it rather than binding
/// a wrong value. Our statements have no string literals, so every `$` starts a
/// placeholder.
fn anonymize(sql: &str, out: &mut String, mut bound: impl FnMut(usize) -> Option<()>) {
    let bytes = sql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            let start = i + 1;
            let mut end = start;
            while end < bytes.len() && bytes[end].is_ascii_digit() {
                end += 1;
            }
            if let Some(()) = sql[start..end].parse::<usize>().ok().and_then(&mut bound) {
                out.push('?');
                i = end;
                continue;
            }
        }
        // Copy up to the next `$` in one piece (keeps multi-byte characters whole).
        let next = sql[i + 1..].find('$').map_or(bytes.len(), |p| i + 1 + p);
        out.push_str(&sql[i..next]);
        i = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_anonymous_with_arguments_in_order() {
        let mut s = Script::new();
        s.push("PRAGMA synchronous = FULL", vec![]);
        s.push(
            "INSERT INTO t VALUES ($1, $2), ($3, $4)",
            (1..=4).map(Arg::Int).collect(),
        );
        s.push(
            "UPDATE m SET v = $2 WHERE k = $1 OR j = $1",
            vec![Arg::Text("k".into()), Arg::Blob(vec![1])],
        );
        s.push("COMMIT", vec![]);
        let (sql, args) = s.joined();
        assert_eq!(
            sql,
            "PRAGMA synchronous = FULL;\nINSERT INTO t VALUES (?, ?), (?, ?);\n\
             UPDATE m SET v = ? WHERE k = ? OR j = ?;\nCOMMIT"
        );
        assert_eq!(
            args,
            vec![
                Arg::Int(1),
                Arg::Int(2),
                Arg::Int(3),
                Arg::Int(4),
                Arg::Blob(vec![1]),
                Arg::Text("k".into()),
                Arg::Text("k".into()),
            ]
        );
    }

    #[test]
    fn anonymize_handles_multi_digit_unknown_and_text_around() {
        let mut out = String::new();
        let mut seen = Vec::new();
        anonymize("a = $12 AND b = $3 AND c = $99 -- é$", &mut out, |n| {
            seen.push(n);
            (n != 99).then_some(())
        });
        assert_eq!(out, "a = ? AND b = ? AND c = $99 -- é$");
        assert_eq!(seen, vec![12, 3, 99]);
    }

    #[tokio::test]
    async fn one_trip_and_per_statement_runs_agree_on_sqlite() -> Result<(), StoreError> {
        sqlx::any::install_default_drivers();
        let mut conn = <AnyConnection as sqlx::Connection>::connect("sqlite::memory:").await?;
        conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER, b BLOB)")
            .await?;
        for one_trip in [true, false] {
            let mut s = Script::new();
            s.push("BEGIN", vec![]);
            s.push(
                "INSERT INTO t VALUES ($1, $2, $3), ($4, $5, $6) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                vec![
                    Arg::Text("a".into()),
                    Arg::Int(i64::from(one_trip)),
                    Arg::Blob(vec![0, 1]),
                    Arg::Text("b".into()),
                    Arg::OptInt(None),
                    Arg::Blob(vec![]),
                ],
            );
            // Out of order and repeated placeholders bind the right values.
            s.push(
                "DELETE FROM t WHERE k = $2 OR (k = $1 AND k = $1)",
                vec![Arg::Text("zz".into()), Arg::Text("b".into())],
            );
            s.push("COMMIT", vec![]);
            s.run(&mut conn, one_trip).await?;
            let rows: Vec<(String, Option<i64>)> = sqlx::query_as("SELECT k, v FROM t ORDER BY k")
                .fetch_all(&mut conn)
                .await?;
            assert_eq!(rows, vec![("a".to_string(), Some(i64::from(one_trip)))]);
        }
        // A failing statement stops the script; the caller rolls back.
        let mut s = Script::new();
        s.push("BEGIN", vec![]);
        s.push(
            "INSERT INTO t VALUES ($1, 5, NULL)",
            vec![Arg::Text("z".into())],
        );
        s.push("INSERT INTO nope VALUES (1)", vec![]);
        s.push("COMMIT", vec![]);
        assert!(s.run(&mut conn, true).await.is_err());
        conn.execute("ROLLBACK").await?;
        let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM t WHERE k = 'z'")
            .fetch_one(&mut conn)
            .await?;
        assert_eq!(n.0, 0);
        Ok(())
    }
}
