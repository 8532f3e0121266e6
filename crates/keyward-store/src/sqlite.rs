//! The SQLite backend: one file, WAL mode, `synchronous = FULL`.
//!
//! Every write transaction starts with `BEGIN IMMEDIATE`, taking SQLite's
//! single write lock up front: a deferred transaction that reads first and
//! writes later can fail with `SQLITE_BUSY` when another process (the CLI
//! beside a running server) wrote in between, and the busy timeout cannot
//! save it. Readers never block thanks to WAL.

use crate::rows::{AuditRow, KeyRow, SnapshotRow, conflict_or, hash32};
use crate::{
    AuditRecord, Change, ChangeNotifier, KeyFilter, KeyRecord, Org, Result, Revoked, SnapshotKey,
    Store, StoreError, UserRecord,
};

crate::people::people_impl!(SqliteStore, sqlx::Sqlite);
use keyward_core::KeyDigest;
use keyward_core::audit::{AuditEntry, chain_link};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// `SELECT <key columns> FROM keys <rest>` as a static string (sqlx refuses
/// dynamically built SQL unless audited).
macro_rules! select_keys {
    ($rest:literal) => {
        concat!(
            "SELECT id, org_id, name, description, environment, digest, display_prefix, legacy, ",
            "created_at, created_by, expires_at, revoked_at, rolled_to, last_used_at FROM keys ",
            $rest
        )
    };
}

/// `SELECT <audit columns> FROM audit_log <rest>` as a static string.
macro_rules! select_audit {
    ($rest:literal) => {
        concat!(
            "SELECT seq, at, org_id, actor, action, key_id, method, path, status, required, client, ",
            "request_id, details, prev_hash, hash FROM audit_log ",
            $rest
        )
    };
}

/// Bound ids per `IN (…)` (SQLite allows 32 766 parameters).
const IDS_PER_QUERY: usize = 1000;

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

/// Audit rows per `INSERT` (15 parameters each; SQLite allows 32 766).
const AUDIT_ROWS_PER_INSERT: usize = 500;

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

/// Appends a change-log entry. Caller holds the write lock.
async fn log_change(
    conn: &mut SqliteConnection,
    org_id: &str,
    key_id: Option<&str>,
    kind: &str,
    at: i64,
) -> Result<()> {
    let (version,): (i64,) = sqlx::query_as(
        "UPDATE change_head SET version = version + 1 WHERE id = 1 RETURNING version",
    )
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO changes (version, org_id, key_id, kind, at) VALUES (?, ?, ?, ?, ?)")
        .bind(version)
        .bind(org_id)
        .bind(key_id)
        .bind(kind)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn insert_key_tx(
    conn: &mut SqliteConnection,
    k: &KeyRecord,
    skip_existing: bool,
) -> Result<bool> {
    let sql = if skip_existing {
        "INSERT INTO keys (id, org_id, name, description, environment, digest, display_prefix, legacy, created_at, \
         created_by, expires_at, revoked_at, rolled_to, last_used_at, grants) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING"
    } else {
        "INSERT INTO keys (id, org_id, name, description, environment, digest, display_prefix, legacy, created_at, \
         created_by, expires_at, revoked_at, rolled_to, last_used_at, grants) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    };
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
        .execute(&mut *conn)
        .await
        .map_err(conflict_or)?;
    if done.rows_affected() == 0 {
        return Ok(false);
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
    log_change(conn, &k.org_id, Some(&k.id), "key.created", k.created_at).await?;
    Ok(true)
}

impl SqliteStore {
    /// Attaches grants to key rows, in chunks to respect SQLite's bind limit.
    async fn with_grants(&self, rows: Vec<KeyRow>) -> Result<Vec<KeyRecord>> {
        let mut keys = rows
            .into_iter()
            .map(KeyRow::into_record)
            .collect::<Result<Vec<_>>>()?;
        let mut by_id: HashMap<String, usize> = HashMap::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            by_id.insert(k.id.clone(), i);
        }
        let ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
        for chunk in ids.chunks(500) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT key_id, kind, name FROM key_grants WHERE key_id IN (",
            );
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id);
            }
            qb.push(") ORDER BY key_id, pos");
            let grants: Vec<(String, String, String)> =
                qb.build_query_as().fetch_all(&self.pool).await?;
            for (key_id, kind, name) in grants {
                if let Some(&i) = by_id.get(&key_id) {
                    match kind.as_str() {
                        "scope" => keys[i].scopes.push(name),
                        _ => keys[i].permission_sets.push(name),
                    }
                }
            }
        }
        Ok(keys)
    }
}

impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn create_org(
        &self,
        org: &Org,
        owner: Option<&UserRecord>,
        audits: &[AuditEntry],
    ) -> Result<Org> {
        let mut tx = self.write_tx().await?;
        if org.is_default {
            let existing: Option<Org> = sqlx::query_as(
                "SELECT id, slug, name, is_default, created_at FROM orgs WHERE is_default = 1",
            )
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(existing) = existing {
                return Ok(existing);
            }
        }
        sqlx::query(
            "INSERT INTO orgs (id, slug, name, is_default, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&org.id)
        .bind(&org.slug)
        .bind(&org.name)
        .bind(org.is_default)
        .bind(org.created_at)
        .execute(&mut *tx)
        .await
        .map_err(conflict_or)?;
        if let Some(owner) = owner {
            Self::insert_user_tx(&mut tx, owner).await?;
        }
        let audits: Vec<&AuditEntry> = audits.iter().collect();
        append_audit_tx(&mut tx, &audits).await?;
        tx.commit().await?;
        Ok(org.clone())
    }

    async fn default_org(&self) -> Result<Option<Org>> {
        Ok(sqlx::query_as(
            "SELECT id, slug, name, is_default, created_at FROM orgs WHERE is_default = 1",
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn org_by_slug(&self, slug: &str) -> Result<Option<Org>> {
        Ok(
            sqlx::query_as(
                "SELECT id, slug, name, is_default, created_at FROM orgs WHERE slug = ?",
            )
            .bind(slug)
            .fetch_optional(&self.pool)
            .await?,
        )
    }

    async fn list_orgs(&self) -> Result<Vec<Org>> {
        Ok(sqlx::query_as(
            "SELECT id, slug, name, is_default, created_at FROM orgs ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn insert_keys(
        &self,
        org_id: &str,
        keys: &[KeyRecord],
        audits: &[AuditEntry],
        skip_existing: bool,
    ) -> Result<Vec<bool>> {
        let mut tx = self.write_tx().await?;
        let mut inserted = Vec::with_capacity(keys.len());
        let mut to_audit = Vec::with_capacity(audits.len());
        for (i, k) in keys.iter().enumerate() {
            if k.org_id != org_id {
                return Err(StoreError::Corrupt(format!(
                    "key `{}` does not belong to the organization",
                    k.id
                )));
            }
            let done = insert_key_tx(&mut tx, k, skip_existing).await?;
            if !done && !skip_existing {
                return Err(StoreError::Conflict("a key with this digest exists".into()));
            }
            if done && let Some(a) = audits.get(i) {
                to_audit.push(a);
            }
            inserted.push(done);
        }
        append_audit_tx(&mut tx, &to_audit).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn revoke_key(
        &self,
        org_id: &str,
        key_id: &str,
        at: i64,
        audit: &AuditEntry,
    ) -> Result<Revoked> {
        let mut tx = self.write_tx().await?;
        let current: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT revoked_at FROM keys WHERE org_id = ? AND id = ?")
                .bind(org_id)
                .bind(key_id)
                .fetch_optional(&mut *tx)
                .await?;
        match current {
            None => Err(StoreError::NotFound),
            Some((Some(when),)) => Ok(Revoked::Already(when)),
            Some((None,)) => {
                sqlx::query("UPDATE keys SET revoked_at = ? WHERE org_id = ? AND id = ?")
                    .bind(at)
                    .bind(org_id)
                    .bind(key_id)
                    .execute(&mut *tx)
                    .await?;
                log_change(&mut tx, org_id, Some(key_id), "key.revoked", at).await?;
                append_audit_tx(&mut tx, &[audit]).await?;
                tx.commit().await?;
                Ok(Revoked::Now)
            }
        }
    }

    async fn roll_key(
        &self,
        org_id: &str,
        old_id: &str,
        old_expires_at: i64,
        new_key: &KeyRecord,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE keys SET expires_at = MIN(COALESCE(expires_at, ?1), ?1), rolled_to = ?2 \
             WHERE org_id = ?3 AND id = ?4 AND revoked_at IS NULL",
        )
        .bind(old_expires_at)
        .bind(&new_key.id)
        .bind(org_id)
        .bind(old_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        log_change(
            &mut tx,
            org_id,
            Some(old_id),
            "key.rolled",
            new_key.created_at,
        )
        .await?;
        if !insert_key_tx(&mut tx, new_key, false).await? {
            return Err(StoreError::Conflict("a key with this digest exists".into()));
        }
        append_audit_tx(&mut tx, &[audit]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_key(&self, org_id: &str, key_id: &str) -> Result<Option<KeyRecord>> {
        let row: Option<KeyRow> = sqlx::query_as(select_keys!("WHERE org_id = ? AND id = ?"))
            .bind(org_id)
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(self.with_grants(row.into_iter().collect()).await?.pop())
    }

    async fn list_keys(&self, org_id: &str, f: &KeyFilter) -> Result<Vec<KeyRecord>> {
        let mut qb = QueryBuilder::<Sqlite>::new(select_keys!("WHERE org_id = "));
        qb.push_bind(org_id);
        match f.revoked {
            Some(true) => {
                qb.push(" AND revoked_at IS NOT NULL");
            }
            Some(false) => {
                qb.push(" AND revoked_at IS NULL");
            }
            None => {}
        }
        if let Some(t) = f.active_at {
            qb.push(" AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ")
                .push_bind(t)
                .push(")");
        }
        if let Some(t) = f.inactive_at {
            qb.push(" AND (revoked_at IS NOT NULL OR (expires_at IS NOT NULL AND expires_at <= ")
                .push_bind(t)
                .push("))");
        }
        if let Some(t) = f.unused_since {
            qb.push(" AND COALESCE(last_used_at, created_at) < ")
                .push_bind(t);
        }
        if let Some(l) = f.legacy {
            qb.push(" AND legacy = ").push_bind(l);
        }
        if let Some(set) = &f.permission_set {
            qb.push(
                " AND EXISTS (SELECT 1 FROM key_grants g WHERE g.key_id = keys.id AND g.name = ",
            )
            .push_bind(set)
            .push(")");
        }
        if let Some((at, id)) = &f.before {
            qb.push(" AND (created_at < ")
                .push_bind(*at)
                .push(" OR (created_at = ")
                .push_bind(*at)
                .push(" AND id < ")
                .push_bind(id)
                .push("))");
        }
        qb.push(" ORDER BY created_at DESC, id DESC");
        if let Some(limit) = f.limit {
            qb.push(" LIMIT ").push_bind(i64::from(limit));
        }
        let rows: Vec<KeyRow> = qb.build_query_as().fetch_all(&self.pool).await?;
        self.with_grants(rows).await
    }

    async fn key_by_digest(&self, digest: &KeyDigest) -> Result<Option<KeyRecord>> {
        let row: Option<KeyRow> = sqlx::query_as(select_keys!("WHERE digest = ?"))
            .bind(digest.as_bytes().as_slice())
            .fetch_optional(&self.pool)
            .await?;
        Ok(self.with_grants(row.into_iter().collect()).await?.pop())
    }

    async fn count_keys(&self) -> Result<u64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM keys")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn snapshot_keys(&self, after: &str, limit: u32) -> Result<Vec<SnapshotKey>> {
        let rows: Vec<SnapshotRow> = sqlx::query_as(
            "SELECT id, org_id, digest, legacy, expires_at, revoked_at, last_used_at, grants \
             FROM keys WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(SnapshotRow::into_key).collect()
    }

    async fn touch_keys(&self, uses: &[(String, i64)]) -> Result<()> {
        if uses.is_empty() {
            return Ok(());
        }
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
        tx.commit().await?;
        Ok(())
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<Vec<i64>> {
        let mut tx = self.write_tx().await?;
        let refs: Vec<&AuditEntry> = entries.iter().collect();
        let seqs = append_audit_tx(&mut tx, &refs).await?;
        tx.commit().await?;
        Ok(seqs)
    }

    async fn audit_chain(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>> {
        let rows: Vec<AuditRow> =
            sqlx::query_as(select_audit!("WHERE seq > ? ORDER BY seq LIMIT ?"))
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(AuditRow::into_record).collect()
    }

    async fn audit_head(&self) -> Result<(i64, [u8; 32])> {
        let (seq, hash): (i64, Vec<u8>) =
            sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
        Ok((seq, hash32(&hash, "audit head hash")?))
    }

    async fn audit_for_key(
        &self,
        org_id: &str,
        key_id: &str,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        let rows: Vec<AuditRow> = sqlx::query_as(select_audit!(
            "WHERE org_id = ? AND key_id = ? ORDER BY seq DESC LIMIT ?"
        ))
        .bind(org_id)
        .bind(key_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(AuditRow::into_record).collect()
    }

    async fn change_notifier(&self) -> Result<Option<ChangeNotifier>> {
        // SQLite has no notifications: the poll alone carries changes.
        Ok(None)
    }

    async fn changes_since(&self, version: i64, limit: u32) -> Result<(Vec<Change>, i64)> {
        let mut conn = self.pool.acquire().await?;
        let (current,): (i64,) = sqlx::query_as("SELECT version FROM change_head WHERE id = 1")
            .fetch_one(&mut *conn)
            .await?;
        let changes: Vec<Change> =
            sqlx::query_as("SELECT version, org_id, key_id, kind, at FROM changes WHERE version > ? AND version <= ? ORDER BY version LIMIT ?")
                .bind(version)
                .bind(current)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?;
        Ok((changes, current))
    }

    async fn snapshot_keys_by_id(&self, ids: &[String]) -> Result<Vec<SnapshotKey>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT id, org_id, digest, legacy, expires_at, revoked_at, last_used_at, grants \
                 FROM keys WHERE id IN (",
            );
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id);
            }
            qb.push(")");
            let rows: Vec<SnapshotRow> = qb.build_query_as().fetch_all(&self.pool).await?;
            for row in rows {
                keys.push(row.into_key()?);
            }
        }
        Ok(keys)
    }
}
