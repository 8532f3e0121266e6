//! The audit chain's append on PostgreSQL: one self-committing message per
//! attempt, so no node holds the chain head while the server waits for it
//! (docs/design.md, "Failure isolation").

use super::HeadHint;
use crate::rows::hash32;
use crate::{Result, StoreError};
use keyward_core::audit::{AuditEntry, chain_link};
use sqlx::PgConnection;

/// Optimistic attempts at appending before taking the chain head's lock:
/// a node farther from the database than the others would otherwise lose
/// every race for the head to them.
const OPTIMISTIC_ATTEMPTS: usize = 3;

/// Links `entries` into the chain and stores them, inside the caller's
/// transaction: the head stays locked from the appending statement to the
/// commit, so callers append last, just before committing.
pub(super) async fn append_audit_tx(
    conn: &mut PgConnection,
    entries: &[&AuditEntry],
) -> Result<Vec<i64>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    // Inside a transaction a failed `EXECUTE` would abort it: make sure the
    // statement is prepared first (key changes are rare; a round trip more).
    let prepared =
        sqlx::raw_sql("SELECT 1 FROM pg_prepared_statements WHERE name = 'keyward_audit_append'")
            .fetch_all(&mut *conn)
            .await?;
    if prepared.is_empty() {
        sqlx::raw_sql(PREPARE_APPEND).execute(&mut *conn).await?;
    }
    let mut head = read_head(conn, "SELECT seq, hash FROM audit_head WHERE id = 1").await?;
    for _ in 0..OPTIMISTIC_ATTEMPTS {
        match try_append(conn, head, entries, "").await? {
            Appended::Won(seqs, _) => return Ok(seqs),
            Appended::Lost(now) => head = now,
        }
    }
    let head = read_head(
        conn,
        "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
    )
    .await?;
    match try_append(conn, head, entries, "").await? {
        Appended::Won(seqs, _) => Ok(seqs),
        Appended::Lost(_) => Err(StoreError::Corrupt(
            "the audit head moved while locked".into(),
        )),
    }
}

/// Links `entries` into the chain and stores them, committed on their own.
///
/// Each attempt is one message of PostgreSQL's simple query protocol: the
/// server has the whole statement before it runs it, and commits it before
/// answering, so the head's row lock is never held while the server waits
/// for this node (a node frozen, cut off, or cut in the middle of a message
/// holds nothing; with the extended protocol, a lost `Sync` would keep the
/// statement's transaction, and its lock, open with no timeout). After
/// [`OPTIMISTIC_ATTEMPTS`] lost races the head is locked first (`BEGIN;
/// SELECT … FOR UPDATE` in one message, then the append and `COMMIT` in
/// another): held for one round trip, and ended by
/// `idle_in_transaction_session_timeout` if this node stalls in between.
/// (By then the optimistic attempts have prepared the statement on this
/// connection, so the `EXECUTE` inside the transaction cannot fail for that.)
pub(super) async fn append_audit_alone(
    conn: &mut PgConnection,
    entries: &[&AuditEntry],
    hint: &HeadHint,
) -> Result<Vec<i64>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    // The head this node last saw is the first guess (right whenever no
    // other node appended since: a round trip saved); a wrong guess costs
    // nothing more than a lost race, which returns the real head.
    let guess = *hint
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut head = match guess {
        Some(h) => h,
        None => read_head(conn, "SELECT seq, hash FROM audit_head WHERE id = 1").await?,
    };
    let remember = |h: (i64, [u8; 32])| {
        *hint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(h);
    };
    for _ in 0..OPTIMISTIC_ATTEMPTS {
        match try_append(conn, head, entries, "").await? {
            Appended::Won(seqs, now) => {
                remember(now);
                return Ok(seqs);
            }
            Appended::Lost(now) => {
                remember(now);
                head = now;
            }
        }
    }
    let locked = async {
        let head = read_head(
            conn,
            "BEGIN; SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
        )
        .await?;
        try_append(conn, head, entries, "; COMMIT").await
    }
    .await;
    match locked {
        Ok(Appended::Won(seqs, now)) => {
            remember(now);
            Ok(seqs)
        }
        Ok(Appended::Lost(_)) => {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            Err(StoreError::Corrupt(
                "the audit head moved while locked".into(),
            ))
        }
        Err(e) => {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}

/// The chain head as `sql` (simple protocol, one row `seq, hash`) reads it.
async fn read_head(conn: &mut PgConnection, sql: &'static str) -> Result<(i64, [u8; 32])> {
    let rows = sqlx::raw_sql(sql).fetch_all(&mut *conn).await?;
    let row = rows
        .last()
        .ok_or_else(|| StoreError::Corrupt("the audit head row is missing".into()))?;
    head_of(row, 0)
}

fn head_of(row: &sqlx::postgres::PgRow, at: usize) -> Result<(i64, [u8; 32])> {
    use sqlx::Row as _;
    let seq: i64 = row.try_get(at)?;
    let hash: Vec<u8> = row.try_get(at + 1)?;
    Ok((seq, hash32(&hash, "audit head hash")?))
}

enum Appended {
    /// The records were linked after the head read: their sequence numbers.
    Won(Vec<i64>, (i64, [u8; 32])),
    /// Another node appended first; the head it left.
    Lost((i64, [u8; 32])),
}

/// The append as a prepared statement of the connection's session, run by
/// `EXECUTE` in a simple-protocol message: planned once per connection, yet
/// sent whole in one message. Moves the head from `$1` to `$2`/`$3` and
/// inserts the rows (one array per column) only if it moved.
const PREPARE_APPEND: &str = "PREPARE keyward_audit_append (int8, int8, bytea, int8[], int8[], \
    text[], text[], text[], text[], text[], text[], int8[], text[], text[], text[], text[], \
    text[], text[]) AS \
    WITH moved AS (UPDATE audit_head SET seq = $2, hash = $3 WHERE id = 1 AND seq = $1 RETURNING seq), \
    linked AS (INSERT INTO audit_log (seq, at, org_id, actor, action, key_id, method, path, \
    status, required, client, request_id, details, prev_hash, hash) \
    SELECT r.seq, r.at, r.org_id, r.actor, r.action, r.key_id, r.method, r.path, r.status, \
    r.required, r.client, r.request_id, r.details, decode(r.prev_hash, 'hex'), decode(r.hash, 'hex') \
    FROM UNNEST($4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
    AS r(seq, at, org_id, actor, action, key_id, method, path, status, required, client, \
    request_id, details, prev_hash, hash) WHERE EXISTS (SELECT 1 FROM moved)) \
    SELECT EXISTS (SELECT 1 FROM moved), seq, hash FROM audit_head WHERE id = 1";

/// One attempt: moves the head from `head` and inserts the linked rows in
/// one statement (`UPDATE … WHERE seq = old` and `INSERT … WHERE EXISTS`),
/// followed by `tail` in the same message. Each column travels as one
/// PostgreSQL array literal, hex-encoded and decoded by the server
/// (`convert_from(decode('…', 'hex'), 'UTF8')::text[]`): no byte of a record
/// is ever read as SQL, whatever the server's string settings, and the
/// statement has fifteen expressions to plan however many records it holds.
async fn try_append(
    conn: &mut PgConnection,
    (seq, head): (i64, [u8; 32]),
    entries: &[&AuditEntry],
    tail: &str,
) -> Result<Appended> {
    use std::fmt::Write as _;
    let mut prev = head;
    let mut next = seq;
    let mut cols: [ArrayLiteral; 15] = Default::default();
    for e in entries {
        next += 1;
        let hash = chain_link(&prev, next, e);
        let [
            c_seq,
            c_at,
            c_org,
            c_actor,
            c_action,
            c_key,
            c_method,
            c_path,
            c_status,
            c_required,
            c_client,
            c_request,
            c_details,
            c_prev,
            c_hash,
        ] = &mut cols;
        c_seq.number(Some(next));
        c_at.number(Some(e.at_ms));
        c_org.text(Some(&e.org_id));
        c_actor.text(Some(&e.actor));
        c_action.text(Some(&e.action));
        c_key.text(e.key_id.as_deref());
        c_method.text(e.method.as_deref());
        c_path.text(e.path.as_deref());
        c_status.number(e.status.map(i64::from));
        c_required.text(Some(&e.required.join(" ")));
        c_client.text(e.client.as_deref());
        c_request.text(e.request_id.as_deref());
        c_details.text(Some(&e.details));
        c_prev.text(Some(&hex(&prev)));
        c_hash.text(Some(&hex(&hash)));
        prev = hash;
    }
    let types = [
        "int8", "int8", "text", "text", "text", "text", "text", "text", "int8", "text", "text",
        "text", "text", "text", "text",
    ];
    let mut sql = format!(
        "EXECUTE keyward_audit_append({seq}, {next}, decode('{}', 'hex')",
        hex(&prev)
    );
    for (col, ty) in cols.iter_mut().zip(types) {
        let _ = write!(
            sql,
            ", convert_from(decode('{}', 'hex'), 'UTF8')::{ty}[]",
            hex(col.finish().as_bytes())
        );
    }
    sql.push(')');
    sql.push_str(tail);
    let rows = match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
        .fetch_all(&mut *conn)
        .await
    {
        // First use on this connection: prepare, then run it again.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("26000") => {
            sqlx::raw_sql(PREPARE_APPEND).execute(&mut *conn).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut *conn)
                .await?
        }
        other => other?,
    };
    let row = rows
        .first()
        .ok_or_else(|| StoreError::Corrupt("the audit head row is missing".into()))?;
    let won: bool = sqlx::Row::try_get(row, 0)?;
    if won {
        Ok(Appended::Won(((seq + 1)..=next).collect(), (next, prev)))
    } else {
        Ok(Appended::Lost(head_of(row, 1)?))
    }
}

/// A PostgreSQL array literal (`{1,NULL,"a\"b"}`), built element by element.
#[derive(Default)]
struct ArrayLiteral(String);

impl ArrayLiteral {
    fn sep(&mut self) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
    }

    fn number(&mut self, n: Option<i64>) {
        use std::fmt::Write as _;
        self.sep();
        match n {
            Some(n) => {
                let _ = write!(self.0, "{n}");
            }
            None => self.0.push_str("NULL"),
        }
    }

    /// Quoted, with `"` and `\` escaped by a backslash, as array input
    /// reads them; `NULL` unquoted for an absent value.
    fn text(&mut self, t: Option<&str>) {
        self.sep();
        match t {
            Some(t) => {
                self.0.push('"');
                for c in t.chars() {
                    if c == '"' || c == '\\' {
                        self.0.push('\\');
                    }
                    self.0.push(c);
                }
                self.0.push('"');
            }
            None => self.0.push_str("NULL"),
        }
    }

    fn finish(&mut self) -> &str {
        if self.0.is_empty() {
            self.0.push('{');
        }
        self.0.push('}');
        &self.0
    }
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}
