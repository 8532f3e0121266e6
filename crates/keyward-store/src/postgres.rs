//! The PostgreSQL backend: several keyward nodes on one database.
//!
//! Same schema and semantics as SQLite, with PostgreSQL's locking instead of
//! SQLite's single writer: the audit chain head and the change-log counter are
//! single rows locked inside each writing transaction (`SELECT … FOR UPDATE`,
//! `UPDATE … RETURNING`), always in that order (change log, then audit), so
//! concurrent writers on different nodes serialise on them without deadlock
//! and can neither fork the chain nor commit versions out of order.

use crate::rows::{NewChange, conflict_or};
use crate::{ChangeNotifier, KeyRecord, Result, SnapshotKey};
use keyward_core::audit::AuditEntry;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres};
use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

mod append;
use append::{append_audit_alone, append_audit_tx};

/// `crate::limits::unasked_share` of the ask's limit with `$1` nodes
/// present (20 is `UNASKED_DIVISOR`; the story test holds the two equal).
macro_rules! pg_unasked_share {
    () => {
        "(a.q / (20 * $1))"
    };
}

/// What is held back for the present nodes that have not asked.
macro_rules! pg_held {
    () => {
        concat!(
            "CASE WHEN $1 > l.nodes THEN ($1 - l.nodes) * ",
            pg_unasked_share!(),
            " ELSE 0 END"
        )
    };
}

/// What one lease ask is granted, from the row's values before the change
/// (`crate::limits`'s rule): `$1` the nodes present, `a` the ask.
macro_rules! pg_lease_grant {
    () => {
        concat!(
            "(CASE WHEN a.first THEN GREATEST(a.extra, LEAST(a.want, CASE WHEN $1 > l.nodes THEN ",
            pg_unasked_share!(),
            " ELSE 0 END + GREATEST(a.q - l.claimed - ",
            pg_held!(),
            ", 0))) ELSE LEAST(a.want, GREATEST(a.q - l.claimed - ",
            pg_held!(),
            ", 0)) END)"
        )
    };
}

crate::keys::keys_impl!(PgStore, sqlx::Postgres);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// [`Store`] on a PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// How to connect without [`SESSION_SETTINGS`], for migrations.
    untimed: std::sync::Arc<PgConnectOptions>,
    /// The chain head this process last wrote or saw: the first guess of
    /// the next append.
    head_hint: std::sync::Arc<HeadHint>,
}

/// A guess at the chain head: its sequence number and hash.
pub(crate) type HeadHint = std::sync::Mutex<Option<(i64, [u8; 32])>>;

/// How long this node may hold what other nodes wait for, and how long it
/// waits for them: every connection runs with these, so a node that is
/// frozen, cut off or killed inside a transaction loses its locks after
/// 1 s (`idle_in_transaction_session_timeout`) instead of stopping every
/// node's writes, and no node waits longer than 2 s for a lock: a stalled
/// holder is gone before a waiter gives up (docs/design.md, "Failure
/// isolation").
const SESSION_SETTINGS: &[(&str, &str)] = &[
    // Waiting for a lock: give up (and answer 503) rather than queue behind
    // a stalled node.
    ("lock_timeout", "2s"),
    // A transaction whose client stopped talking (frozen, partitioned) is
    // ended by the server, releasing its locks.
    ("idle_in_transaction_session_timeout", "1s"),
    // No statement of keyward's runs for long; one that does is stuck.
    ("statement_timeout", "5s"),
    // A client host that vanished without closing its socket is noticed by
    // the server: probes after 5 s idle, 1 s apart, 3 unanswered; unacked
    // data for 5 s also ends the connection.
    ("tcp_keepalives_idle", "5"),
    ("tcp_keepalives_interval", "1"),
    ("tcp_keepalives_count", "3"),
    ("tcp_user_timeout", "5000"),
];

impl PgStore {
    /// Connects to `url` (`postgres://…`).
    ///
    /// # Errors
    /// A malformed URL or an unreachable server.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_as(url, "keyward").await
    }

    /// Connects to `url`, calling this process `name` in
    /// `pg_stat_activity`. Every connection gets [`SESSION_SETTINGS`].
    ///
    /// # Errors
    /// A malformed URL or an unreachable server.
    pub async fn connect_as(url: &str, name: &str) -> Result<Self> {
        let untimed = PgConnectOptions::from_str(url)?.application_name(name);
        let options = untimed.clone().options(SESSION_SETTINGS.iter().copied());
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(2))
            .connect_with(options)
            .await?;
        Ok(PgStore {
            pool,
            untimed: std::sync::Arc::new(untimed),
            head_hint: std::sync::Arc::default(),
        })
    }

    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }
}

/// Leases an endpoint with events due (`crate::webhooks`, which says in
/// which order): `$1` node, `$2` lease end, `$3` now. `SKIP LOCKED` sends
/// nodes polling at once to different endpoints; the outer condition,
/// re-checked on the locked row, makes a lease taken meanwhile a miss.
const CLAIM_WEBHOOK: &str = concat!(
    "UPDATE webhooks SET lease_holder = $1, lease_until = $2 WHERE lease_until <= $3 AND id = (",
    crate::webhooks::due_webhook!(" FOR UPDATE OF w SKIP LOCKED"),
    ") RETURNING id"
);

/// Inserts `keys` and their grants in two statements; returns the ids
/// inserted (all of them, or with `skip_existing` those whose digest was
/// new). A batch of 500 imported keys is two round trips, not 1 500.
async fn insert_keys_tx(
    conn: &mut PgConnection,
    keys: &[KeyRecord],
    skip_existing: bool,
) -> Result<HashSet<String>> {
    macro_rules! insert_keys {
        ($tail:literal) => {
            concat!(
                "INSERT INTO keys (id, org_id, name, description, environment, digest, display_prefix, ",
                "legacy, created_at, created_by, expires_at, revoked_at, rolled_to, last_used_at, grants, ",
                "limits, allowed_cidrs) ",
                "SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], ",
                "$6::bytea[], $7::text[], $8::bool[], $9::int8[], $10::text[], $11::int8[], $12::int8[], ",
                "$13::text[], $14::int8[], $15::text[], $16::text[], $17::text[]) ",
                $tail
            )
        };
    }
    let sql = if skip_existing {
        insert_keys!("ON CONFLICT (digest) DO NOTHING RETURNING id")
    } else {
        insert_keys!("RETURNING id")
    };
    let col = |f: fn(&KeyRecord) -> String| keys.iter().map(f).collect::<Vec<String>>();
    let ids: Vec<(String,)> = sqlx::query_as(sql)
        .bind(col(|k| k.id.clone()))
        .bind(col(|k| k.org_id.clone()))
        .bind(col(|k| k.name.clone()))
        .bind(col(|k| k.description.clone()))
        .bind(col(|k| k.environment.clone()))
        .bind(
            keys.iter()
                .map(|k| k.digest.as_bytes().to_vec())
                .collect::<Vec<_>>(),
        )
        .bind(col(|k| k.display_prefix.clone()))
        .bind(keys.iter().map(|k| k.legacy).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.created_at).collect::<Vec<_>>())
        .bind(col(|k| k.created_by.clone()))
        .bind(keys.iter().map(|k| k.expires_at).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.revoked_at).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.rolled_to.clone()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.last_used_at).collect::<Vec<_>>())
        .bind(col(SnapshotKey::grants_text))
        .bind(col(|k| crate::limits_text(&k.limits)))
        .bind(col(|k| crate::cidrs_text(&k.allowed_cidrs)))
        .fetch_all(&mut *conn)
        .await
        .map_err(conflict_or)?;
    let inserted: HashSet<String> = ids.into_iter().map(|(id,)| id).collect();
    let (mut key_ids, mut kinds, mut names, mut positions) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for k in keys.iter().filter(|k| inserted.contains(&k.id)) {
        for (pos, (kind, name)) in k.grant_rows().enumerate() {
            key_ids.push(k.id.as_str());
            kinds.push(kind);
            names.push(name.as_str());
            positions.push(i32::try_from(pos).unwrap_or(i32::MAX));
        }
    }
    if !key_ids.is_empty() {
        sqlx::query(
            "INSERT INTO key_grants (key_id, kind, name, pos) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int4[]) ON CONFLICT DO NOTHING",
        )
        .bind(key_ids)
        .bind(kinds)
        .bind(names)
        .bind(positions)
        .execute(&mut *conn)
        .await?;
    }
    Ok(inserted)
}

/// Appends `changes` (at least one) to the change log, numbered in
/// order, and notifies listeners once.
async fn log_changes(conn: &mut PgConnection, changes: &[NewChange<'_>]) -> Result<()> {
    let versions = PgStore::reserve_versions(conn, changes.len()).await?;
    sqlx::query(
        "INSERT INTO changes (version, org_id, key_id, kind, at) \
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[])",
    )
    .bind(versions.collect::<Vec<i64>>())
    .bind(changes.iter().map(|c| c.org_id).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.key_id).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.kind).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.at).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    // Delivered when (and only if) the transaction commits; with the same
    // (empty) payload every time, PostgreSQL delivers one notification per
    // transaction, however many keys it changed (an import of 500 keys
    // wakes each node once, not 500 times). Listeners read the log anyway.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(ChangeNotifier::CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Serialises creating the default organization across nodes.
async fn lock_default_org(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(7391001)")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl PgStore {
    async fn run_migrations(&self) -> Result<()> {
        // Nothing to apply (every start of a node but the first after an
        // upgrade): no migration lock is taken, so a stalled migrator
        // elsewhere cannot hold this node's start.
        let applied: std::result::Result<Vec<(i64,)>, _> =
            sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await;
        if let Ok(applied) = applied {
            let applied: std::collections::HashSet<i64> =
                applied.into_iter().map(|(v,)| v).collect();
            if MIGRATOR.iter().all(|m| applied.contains(&m.version)) {
                return Ok(());
            }
        }
        // Migrations may rightly take longer than any statement should: on
        // a connection of their own, without the statement timeouts, but
        // with a bound on the wait for the migration lock another process
        // may hold.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with((*self.untimed).clone().options([("lock_timeout", "30s")]))
            .await?;
        let result = MIGRATOR.run(&pool).await;
        pool.close().await;
        result?;
        Ok(())
    }

    async fn touch_keys_now(&self, uses: &[(String, i64)]) -> Result<()> {
        // One statement, no transaction: key rows are locked only while it
        // runs, never while this node waits (a revocation elsewhere must not
        // queue behind a stalled flush).
        let (ids, ats): (Vec<&str>, Vec<i64>) =
            uses.iter().map(|(id, at)| (id.as_str(), *at)).unzip();
        sqlx::query(
            "UPDATE keys SET last_used_at = GREATEST(COALESCE(keys.last_used_at, 0), u.at) \
             FROM (SELECT id, MAX(at) AS at FROM UNNEST($1::text[], $2::int8[]) AS t(id, at) GROUP BY id) AS u \
             WHERE keys.id = u.id",
        )
        .bind(ids)
        .bind(ats)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn claim_leases_now(
        &self,
        nodes: u64,
        asks: &[crate::LeaseAsk],
    ) -> Result<Vec<crate::LeaseAnswer>> {
        use crate::limits::col;
        // Rows in key order, so two nodes lock shared rows in the same
        // order. Two statements, no transaction: each row is locked only
        // while a statement runs, never while this node waits.
        let mut sorted: Vec<&crate::LeaseAsk> = asks.iter().collect();
        sorted
            .sort_by(|a, b| (&a.key_id, &a.limit, a.window).cmp(&(&b.key_id, &b.limit, b.window)));
        let keys: Vec<&str> = sorted.iter().map(|a| a.key_id.as_str()).collect();
        let limits: Vec<&str> = sorted.iter().map(|a| a.limit.as_str()).collect();
        let windows: Vec<i64> = sorted.iter().map(|a| a.window).collect();
        sqlx::query(
            "INSERT INTO limit_leases (key_id, limit_name, win, expires_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&keys)
        .bind(&limits)
        .bind(&windows)
        .bind(sorted.iter().map(|a| a.ends_at).collect::<Vec<i64>>())
        .execute(&self.pool)
        .await?;
        // Every SET reads the row's newest version (READ COMMITTED re-reads
        // a row changed while this statement waited for it).
        let rows: Vec<(String, String, i64, i64, i64, i64)> = sqlx::query_as(concat!(
            "UPDATE limit_leases AS l SET granted = ",
            pg_lease_grant!(),
            ", claimed = CASE WHEN a.first THEN l.claimed ELSE GREATEST(l.claimed - a.extra, 0) END + ",
            pg_lease_grant!(),
            ", nodes = GREATEST(l.nodes + CASE WHEN a.first THEN 1 WHEN a.leaving THEN -1 ELSE 0 END, 0) \
             FROM UNNEST($2::text[], $3::text[], $4::int8[], $5::int8[], $6::bool[], $7::int8[], \
             $8::int8[], $9::bool[]) AS a(key_id, limit_name, win, q, first, want, extra, leaving) \
             WHERE l.key_id = a.key_id AND l.limit_name = a.limit_name AND l.win = a.win \
             RETURNING l.key_id, l.limit_name, l.win, l.granted, l.claimed, l.nodes"
        ))
        .bind(col(nodes))
        .bind(&keys)
        .bind(&limits)
        .bind(&windows)
        .bind(sorted.iter().map(|a| col(a.requests)).collect::<Vec<i64>>())
        .bind(sorted.iter().map(|a| a.first).collect::<Vec<bool>>())
        .bind(sorted.iter().map(|a| col(a.want)).collect::<Vec<i64>>())
        .bind(
            sorted.iter()
                .map(|a| col(if a.first { a.floor } else { a.release }))
                .collect::<Vec<i64>>(),
        )
        .bind(sorted.iter().map(|a| a.leaving).collect::<Vec<bool>>())
        .fetch_all(&self.pool)
        .await?;
        // Answers in the caller's order, not the sorted one.
        Ok(crate::limits::in_order(asks, rows))
    }

    async fn add_usage_now(&self, rows: &[crate::UsageRow]) -> Result<()> {
        use crate::limits::col;
        // One statement, no transaction: a row is locked only while it runs
        // (another node adding to the same hour waits that long, no more).
        // Rows in key order, so two nodes lock shared rows in one order.
        let mut rows: Vec<&crate::UsageRow> = rows.iter().collect();
        rows.sort_by(|a, b| {
            (&a.key_id, a.hour, &a.method, &a.route, &a.outcome)
                .cmp(&(&b.key_id, b.hour, &b.method, &b.route, &b.outcome))
        });
        sqlx::query(
            "INSERT INTO key_usage (key_id, hour, method, route, outcome, count, last_seen) \
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], \
             $6::int8[], $7::int8[]) \
             ON CONFLICT (key_id, hour, method, route, outcome) DO UPDATE SET \
             count = key_usage.count + excluded.count, \
             last_seen = GREATEST(key_usage.last_seen, excluded.last_seen)",
        )
        .bind(rows.iter().map(|r| r.key_id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.hour).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.method.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.route.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| col(r.count)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.last_seen).collect::<Vec<_>>())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn append_audit_now(&self, entries: &[AuditEntry]) -> Result<Vec<i64>> {
        // No transaction of ours: the appending statement commits by itself,
        // so the chain head is locked only while the server runs it.
        let mut conn = self.pool.acquire().await?;
        let refs: Vec<&AuditEntry> = entries.iter().collect();
        append_audit_alone(&mut conn, &refs, &self.head_hint).await
    }

    async fn notifier(&self) -> Result<Option<ChangeNotifier>> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(ChangeNotifier::CHANNEL).await?;
        Ok(Some(ChangeNotifier(listener)))
    }
}
