//! The SQLite backend: one file, WAL mode, `synchronous = FULL`.
//!
//! Every write transaction starts with `BEGIN IMMEDIATE`, taking SQLite's
//! single write lock up front: a deferred transaction that reads first and
//! writes later can fail with `SQLITE_BUSY` when another process (the CLI
//! beside a running server) wrote in between, and the busy timeout cannot
//! save it. Readers never block thanks to WAL.

use crate::rows::{NewChange, conflict_or, hash32};
use crate::{ChangeNotifier, KeyRecord, Result, SnapshotKey};
use keyward_core::audit::{AuditEntry, chain_link};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

crate::keys::keys_impl!(SqliteStore, sqlx::Sqlite);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// [`Store`] on a SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The one connection this process writes through. Always the same
    /// connection, so its page cache and prepared statements stay warm: a
    /// connection of `pool` that had not written last must first re-read from
    /// the WAL every page the others changed (measured: ten `pread`s per
    /// audit commit under load).
    write_pool: SqlitePool,
    /// Writers of this process queue here, first come first served, before
    /// taking SQLite's write lock. Without it they would contend inside
    /// SQLite, whose busy handler sleeps with growing back-off: measured at
    /// 8 concurrent key creations, a p99 of 130 ms and stalls of 800 ms for
    /// writes that take 2 ms. Other processes (the CLI) still meet the busy
    /// timeout.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A write transaction holding this process's turn to write.
struct WriteTx {
    tx: sqlx::Transaction<'static, Sqlite>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl WriteTx {
    async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }
}

impl std::ops::Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://PATH`).
    ///
    /// # Errors
    /// A malformed URL or an unopenable file.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Rows cross from sqlx's worker thread in batches this large: the
            // default (50) costs a thread hand-off every 50 rows, which
            // dominated loading a million-key snapshot.
            .row_buffer_size(4096);
        // A file connection does not go stale: skip the ping that would
        // otherwise cost each acquisition a round trip to its thread.
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        let write_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        Ok(SqliteStore {
            pool,
            write_pool,
            writer: std::sync::Arc::default(),
        })
    }

    async fn write_tx(&self) -> Result<WriteTx> {
        let turn = self.writer.clone().lock_owned().await;
        Ok(WriteTx {
            tx: self.write_pool.begin_with("BEGIN IMMEDIATE").await?,
            _turn: turn,
        })
    }
}

/// Leases an endpoint with events due (`crate::webhooks`, which says in
/// which order): `$1` node, `$2` lease end, `$3` now. One writer at a
/// time, so no two processes take the same endpoint.
const CLAIM_WEBHOOK: &str = concat!(
    "UPDATE webhooks SET lease_holder = $1, lease_until = $2 WHERE id = (",
    crate::webhooks::due_webhook!(""),
    ") RETURNING id"
);

/// Audit rows per `INSERT` (15 parameters each; SQLite allows 32 766).
const AUDIT_ROWS_PER_INSERT: usize = 500;

/// Usage rows per `INSERT` (7 parameters each).
const USAGE_ROWS_PER_INSERT: usize = 1_000;

/// A text argument in one allocation: sqlx-sqlite takes an `Arc<str>` as it
/// is, where a `&str` costs two (a `String` copy, then an `Arc` around it).
/// Audit rows bind nine texts each, on every audited request.
fn text(s: &str) -> std::sync::Arc<str> {
    std::sync::Arc::from(s)
}

/// Links `entries` into the chain. Caller holds the write lock.
async fn append_audit_tx(conn: &mut SqliteConnection, entries: &[&AuditEntry]) -> Result<Vec<i64>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let (mut seq, head): (i64, Vec<u8>) =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&mut *conn)
            .await?;
    let mut prev = hash32(&head, "audit head hash")?;
    let mut links = Vec::with_capacity(entries.len());
    for e in entries {
        seq += 1;
        let hash = chain_link(&prev, seq, e);
        links.push((seq, *e, prev, hash));
        prev = hash;
    }
    // Multi-row inserts: one statement per chunk instead of one per record,
    // which is what lets a group commit of hundreds of records stay cheap.
    for chunk in links.chunks(AUDIT_ROWS_PER_INSERT) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO audit_log (seq, at, org_id, actor, action, key_id, method, path, status, \
             required, client, request_id, details, prev_hash, hash) ",
        );
        qb.push_values(chunk, |mut b, (seq, e, prev, hash)| {
            b.push_bind(*seq)
                .push_bind(e.at_ms)
                .push_bind(text(&e.org_id))
                .push_bind(text(&e.actor))
                .push_bind(text(&e.action))
                .push_bind(e.key_id.as_deref().map(text))
                .push_bind(e.method.as_deref().map(text))
                .push_bind(e.path.as_deref().map(text))
                .push_bind(e.status.map(i64::from))
                .push_bind(e.required.join(" "))
                .push_bind(e.client.as_deref().map(text))
                .push_bind(e.request_id.as_deref().map(text))
                .push_bind(text(&e.details))
                .push_bind(prev.to_vec())
                .push_bind(hash.to_vec());
        });
        qb.build().execute(&mut *conn).await?;
    }
    let seqs = links.iter().map(|l| l.0).collect();
    sqlx::query("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1")
        .bind(seq)
        .bind(prev.as_slice())
        .execute(&mut *conn)
        .await?;
    Ok(seqs)
}

/// Appends `changes` (at least one) to the change log, numbered in
/// order. Caller holds the write lock.
async fn log_changes(conn: &mut SqliteConnection, changes: &[NewChange<'_>]) -> Result<()> {
    let versions = SqliteStore::reserve_versions(conn, changes.len()).await?;
    for (version, c) in versions.zip(changes) {
        sqlx::query(
            "INSERT INTO changes (version, org_id, key_id, kind, at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(version)
        .bind(c.org_id)
        .bind(c.key_id)
        .bind(c.kind)
        .bind(c.at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Inserts `keys` and their grants, a statement each (in-process, so a
/// statement costs no round trip); returns the ids inserted (all, or with
/// `skip_existing` those whose digest was new). Caller holds the write lock.
async fn insert_keys_tx(
    conn: &mut SqliteConnection,
    keys: &[KeyRecord],
    skip_existing: bool,
) -> Result<HashSet<String>> {
    let sql = if skip_existing {
        "INSERT INTO keys (id, org_id, name, description, environment, digest, display_prefix, legacy, created_at, \
         created_by, expires_at, revoked_at, rolled_to, last_used_at, grants, limits, allowed_cidrs) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING"
    } else {
        "INSERT INTO keys (id, org_id, name, description, environment, digest, display_prefix, legacy, created_at, \
         created_by, expires_at, revoked_at, rolled_to, last_used_at, grants, limits, allowed_cidrs) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    };
    let mut inserted = HashSet::with_capacity(keys.len());
    for k in keys {
        let done = sqlx::query(sql)
            .bind(&k.id)
            .bind(&k.org_id)
            .bind(&k.name)
            .bind(&k.description)
            .bind(&k.environment)
            .bind(k.digest.as_bytes().as_slice())
            .bind(&k.display_prefix)
            .bind(k.legacy)
            .bind(k.created_at)
            .bind(&k.created_by)
            .bind(k.expires_at)
            .bind(k.revoked_at)
            .bind(&k.rolled_to)
            .bind(k.last_used_at)
            .bind(SnapshotKey::grants_text(k))
            .bind(crate::limits_text(&k.limits))
            .bind(crate::cidrs_text(&k.allowed_cidrs))
            .execute(&mut *conn)
            .await
            .map_err(conflict_or)?;
        if done.rows_affected() == 0 {
            continue;
        }
        for (pos, (kind, name)) in k.grant_rows().enumerate() {
            sqlx::query(
                "INSERT INTO key_grants (key_id, kind, name, pos) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(&k.id)
            .bind(kind)
            .bind(name)
            .bind(i32::try_from(pos).unwrap_or(i32::MAX))
            .execute(&mut *conn)
            .await?;
        }
        inserted.insert(k.id.clone());
    }
    Ok(inserted)
}

/// Nothing to do: `BEGIN IMMEDIATE` already holds SQLite's one write lock.
#[allow(clippy::unused_async)]
async fn lock_default_org(_conn: &mut SqliteConnection) -> Result<()> {
    Ok(())
}

impl SqliteStore {
    async fn run_migrations(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn touch_keys_now(&self, uses: &[(String, i64)]) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for (id, at) in uses {
            sqlx::query(
                "UPDATE keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?",
            )
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    async fn claim_leases_now(
        &self,
        nodes: u64,
        asks: &[crate::LeaseAsk],
    ) -> Result<Vec<crate::LeaseAnswer>> {
        use crate::limits::{col, uncol};
        // The single writer serialises every change: the rule of
        // `crate::limits`, one row at a time.
        let mut tx = self.write_tx().await?;
        let mut answers = Vec::with_capacity(asks.len());
        for a in asks {
            sqlx::query(
                "INSERT INTO limit_leases (key_id, limit_name, win, expires_at) \
                 VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(&a.key_id)
            .bind(&a.limit)
            .bind(a.window)
            .bind(a.ends_at)
            .execute(&mut *tx)
            .await?;
            let (claimed, held_nodes): (i64, i64) = sqlx::query_as(
                "SELECT claimed, nodes FROM limit_leases WHERE key_id = ? AND limit_name = ? AND win = ?",
            )
            .bind(&a.key_id)
            .bind(&a.limit)
            .bind(a.window)
            .fetch_one(&mut *tx)
            .await?;
            let before = crate::LeaseAnswer {
                granted: 0,
                claimed: uncol(claimed),
                nodes: uncol(held_nodes),
            };
            let room = before.room(a.requests, nodes);
            let answer = if a.first {
                let own = if nodes > before.nodes {
                    crate::limits::unasked_share(a.requests, nodes)
                } else {
                    0
                };
                let granted = a.floor.max(a.want.min(own + room));
                crate::LeaseAnswer {
                    granted,
                    claimed: before.claimed.saturating_add(granted),
                    nodes: before.nodes + 1,
                }
            } else {
                let granted = a.want.min(room);
                crate::LeaseAnswer {
                    granted,
                    claimed: before
                        .claimed
                        .saturating_sub(a.release)
                        .saturating_add(granted),
                    nodes: before.nodes.saturating_sub(u64::from(a.leaving)),
                }
            };
            sqlx::query(
                "UPDATE limit_leases SET granted = ?, claimed = ?, nodes = ? \
                 WHERE key_id = ? AND limit_name = ? AND win = ?",
            )
            .bind(col(answer.granted))
            .bind(col(answer.claimed))
            .bind(col(answer.nodes))
            .bind(&a.key_id)
            .bind(&a.limit)
            .bind(a.window)
            .execute(&mut *tx)
            .await?;
            answers.push(answer);
        }
        tx.commit().await?;
        Ok(answers)
    }

    async fn add_usage_now(&self, rows: &[crate::UsageRow]) -> Result<()> {
        // Many rows per statement: one statement per row held the write
        // lock 1.7 s for 30 000 rows (bench `usage`), every audited write
        // queued behind it.
        let mut tx = self.write_tx().await?;
        for chunk in rows.chunks(USAGE_ROWS_PER_INSERT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO key_usage (key_id, hour, method, route, outcome, count, last_seen) ",
            );
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(text(&r.key_id))
                    .push_bind(r.hour)
                    .push_bind(text(&r.method))
                    .push_bind(text(&r.route))
                    .push_bind(text(&r.outcome))
                    .push_bind(crate::limits::col(r.count))
                    .push_bind(r.last_seen);
            });
            qb.push(
                " ON CONFLICT (key_id, hour, method, route, outcome) DO UPDATE SET \
                 count = key_usage.count + excluded.count, \
                 last_seen = MAX(key_usage.last_seen, excluded.last_seen)",
            );
            qb.build().execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    async fn append_audit_now(&self, entries: &[AuditEntry]) -> Result<Vec<i64>> {
        let mut tx = self.write_tx().await?;
        let refs: Vec<&AuditEntry> = entries.iter().collect();
        let seqs = append_audit_tx(&mut tx, &refs).await?;
        tx.commit().await?;
        Ok(seqs)
    }

    /// SQLite has no notifications: the poll alone carries changes.
    #[allow(clippy::unused_async)]
    async fn notifier(&self) -> Result<Option<ChangeNotifier>> {
        Ok(None)
    }
}
