//! Write statements collected and sent to the database together.
//!
//! With SQLite every statement is a hand-off to sqlx's worker thread and back,
//! and on this class of machine a thread wake-up costs about as much CPU as the
//! statement itself; after batching rows into multi-row statements
//! (`batch.rs`), an append still took two such trips and an apply six. A
//! [`Script`] collects a write path's statements (the `PRAGMA` that sets its
//! durability, `BEGIN`, the writes, `COMMIT`) with their arguments and sends
//! them to SQLite as one multi-statement query: one trip. sqlx binds `$N`
//! placeholders by number across all statements of such a query, so each
//! statement's placeholders are renumbered past the arguments before it.
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
        if one_trip && self.statements.len() > 1 {
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

    /// All statements as one text, placeholders renumbered, and all arguments in order.
    fn joined(self) -> (String, Vec<Arg>) {
        let mut sql = String::with_capacity(self.statements.iter().map(|(s, _)| s.len() + 2).sum());
        let mut args = Vec::with_capacity(self.statements.iter().map(|(_, a)| a.len()).sum());
        for (text, a) in self.statements {
            if !sql.is_empty() {
                sql.push_str(";\n");
            }
            renumber(text, args.len(), &mut sql);
            args.extend(a);
        }
        (sql, args)
    }
}

/// Appends `sql` to `out` with every placeholder `$n` written as `$(n + offset)`.
/// Our statements have no string literals, so every `$` starts a placeholder.
fn renumber(sql: &str, offset: usize, out: &mut String) {
    let bytes = sql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            let start = i + 1;
            let mut end = start;
            while end < bytes.len() && bytes[end].is_ascii_digit() {
                end += 1;
            }
            if let Ok(n) = sql[start..end].parse::<usize>() {
                out.push('$');
                out.push_str(&(n + offset).to_string());
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
    fn placeholders_continue_across_statements() {
        let mut s = Script::new();
        s.push("PRAGMA synchronous = FULL", vec![]);
        s.push(
            "INSERT INTO t VALUES ($1, $2), ($3, $4)",
            (1..=4).map(Arg::Int).collect(),
        );
        s.push(
            "UPDATE m SET v = $2 WHERE k = $1",
            vec![Arg::Text("k".into()), Arg::Blob(vec![1])],
        );
        s.push("COMMIT", vec![]);
        let (sql, args) = s.joined();
        assert_eq!(
            sql,
            "PRAGMA synchronous = FULL;\nINSERT INTO t VALUES ($1, $2), ($3, $4);\n\
             UPDATE m SET v = $6 WHERE k = $5;\nCOMMIT"
        );
        assert_eq!(args.len(), 6);
        assert_eq!(args[4], Arg::Text("k".into()));
    }

    #[test]
    fn renumber_handles_multi_digit_and_text_around() {
        let mut out = String::new();
        renumber("a = $12 AND b = $3 -- é$", 100, &mut out);
        assert_eq!(out, "a = $112 AND b = $103 -- é$");
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
            s.push("DELETE FROM t WHERE k = $1", vec![Arg::Text("b".into())]);
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
