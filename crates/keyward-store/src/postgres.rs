//! The PostgreSQL backend: several keyward nodes on one database.
//!
//! Same schema and semantics as SQLite, with PostgreSQL's locking instead of
//! SQLite's single writer: the audit chain head and the change-log counter are
//! single rows locked inside each writing transaction (`SELECT … FOR UPDATE`,
//! `UPDATE … RETURNING`), always in that order (change log, then audit), so
//! concurrent writers on different nodes serialise on them without deadlock
//! and can neither fork the chain nor commit versions out of order.

use crate::rows::{AuditRow, KeyRow, SnapshotRow, conflict_or, hash32};
use crate::{
    AuditRecord, Change, ChangeNotifier, KeyFilter, KeyRecord, Org, Result, Revoked, SnapshotKey,
    Store, StoreError, UserRecord,
};

crate::people::people_impl!(PgStore, sqlx::Postgres);
use keyward_core::KeyDigest;
use keyward_core::audit::AuditEntry;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

mod append;
use append::{append_audit_alone, append_audit_tx};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

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

/// Inserts `keys` and their grants in two statements; returns the ids
/// inserted (all of them, or with `skip_existing` those whose digest was
/// new). A batch of 500 imported keys is two round trips, not 1 500.
async fn insert_keys_bulk(
    conn: &mut PgConnection,
    keys: &[KeyRecord],
    skip_existing: bool,
) -> Result<std::collections::HashSet<String>> {
    macro_rules! insert_keys {
        ($tail:literal) => {
            concat!(
                "INSERT INTO keys (id, org_id, name, description, environment, digest, display_prefix, ",
                "legacy, created_at, created_by, expires_at, revoked_at, rolled_to, last_used_at, grants) ",
                "SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], ",
                "$6::bytea[], $7::text[], $8::bool[], $9::int8[], $10::text[], $11::int8[], $12::int8[], ",
                "$13::text[], $14::int8[], $15::text[]) ",
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
        .fetch_all(&mut *conn)
        .await
        .map_err(conflict_or)?;
    let inserted: std::collections::HashSet<String> = ids.into_iter().map(|(id,)| id).collect();
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

/// A change-log entry to append.
struct NewChange<'a> {
    org_id: &'a str,
    key_id: &'a str,
    kind: &'a str,
    at: i64,
}

impl<'a> NewChange<'a> {
    fn created(k: &'a KeyRecord) -> Self {
        NewChange {
            org_id: &k.org_id,
            key_id: &k.id,
            kind: "key.created",
            at: k.created_at,
        }
    }
}

/// Appends `changes` to the change log, numbered in order by one bump of
/// the counter (its row stays locked until the commit, so commit order is
/// version order), and notifies listeners once.
async fn log_changes(conn: &mut PgConnection, changes: &[NewChange<'_>]) -> Result<()> {
    let Ok(n) = i64::try_from(changes.len()) else {
        return Err(StoreError::Corrupt("too many changes in one batch".into()));
    };
    if n == 0 {
        return Ok(());
    }
    let (last,): (i64,) = sqlx::query_as(
        "UPDATE change_head SET version = version + $1 WHERE id = 1 RETURNING version",
    )
    .bind(n)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO changes (version, org_id, key_id, kind, at) \
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[])",
    )
    .bind(((last - n + 1)..=last).collect::<Vec<i64>>())
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

impl PgStore {
    /// Attaches grants to key rows, in chunks of bound ids.
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
            let mut qb = QueryBuilder::<Postgres>::new(
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

impl Store for PgStore {
    async fn migrate(&self) -> Result<()> {
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

    async fn create_org(
        &self,
        org: &Org,
        owner: Option<&UserRecord>,
        audits: &[AuditEntry],
    ) -> Result<Org> {
        let mut tx = self.write_tx().await?;
        if org.is_default {
            // Two nodes starting at once must not both create a default org.
            sqlx::query("SELECT pg_advisory_xact_lock(7391001)")
                .execute(&mut *tx)
                .await?;
            let existing: Option<Org> = sqlx::query_as(
                "SELECT id, slug, name, is_default, created_at FROM orgs WHERE is_default",
            )
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(existing) = existing {
                return Ok(existing);
            }
        }
        sqlx::query(
            "INSERT INTO orgs (id, slug, name, is_default, created_at) VALUES ($1, $2, $3, $4, $5)",
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
            "SELECT id, slug, name, is_default, created_at FROM orgs WHERE is_default",
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn org_by_slug(&self, slug: &str) -> Result<Option<Org>> {
        Ok(sqlx::query_as(
            "SELECT id, slug, name, is_default, created_at FROM orgs WHERE slug = $1",
        )
        .bind(slug)
        .fetch_optional(&self.pool)
        .await?)
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
        if let Some(k) = keys.iter().find(|k| k.org_id != org_id) {
            return Err(StoreError::Corrupt(format!(
                "key `{}` does not belong to the organization",
                k.id
            )));
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.write_tx().await?;
        let inserted = insert_keys_bulk(&mut tx, keys, skip_existing).await?;
        if !skip_existing && inserted.len() < keys.len() {
            return Err(StoreError::Conflict("a key with this digest exists".into()));
        }
        let done: Vec<bool> = keys.iter().map(|k| inserted.contains(&k.id)).collect();
        let new_keys: Vec<&KeyRecord> = keys
            .iter()
            .zip(&done)
            .filter_map(|(k, d)| d.then_some(k))
            .collect();
        let changes: Vec<NewChange<'_>> = new_keys.iter().map(|k| NewChange::created(k)).collect();
        log_changes(&mut tx, &changes).await?;
        let to_audit: Vec<&AuditEntry> = done
            .iter()
            .zip(audits)
            .filter_map(|(d, a)| d.then_some(a))
            .collect();
        append_audit_tx(&mut tx, &to_audit).await?;
        tx.commit().await?;
        Ok(done)
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
            sqlx::query_as("SELECT revoked_at FROM keys WHERE org_id = $1 AND id = $2 FOR UPDATE")
                .bind(org_id)
                .bind(key_id)
                .fetch_optional(&mut *tx)
                .await?;
        match current {
            None => Err(StoreError::NotFound),
            Some((Some(when),)) => Ok(Revoked::Already(when)),
            Some((None,)) => {
                sqlx::query("UPDATE keys SET revoked_at = $1 WHERE org_id = $2 AND id = $3")
                    .bind(at)
                    .bind(org_id)
                    .bind(key_id)
                    .execute(&mut *tx)
                    .await?;
                let revoked = NewChange {
                    org_id,
                    key_id,
                    kind: "key.revoked",
                    at,
                };
                log_changes(&mut tx, &[revoked]).await?;
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
            "UPDATE keys SET expires_at = LEAST(COALESCE(expires_at, $1), $1), rolled_to = $2 \
             WHERE org_id = $3 AND id = $4 AND revoked_at IS NULL",
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
        let rolled = NewChange {
            org_id,
            key_id: old_id,
            kind: "key.rolled",
            at: new_key.created_at,
        };
        insert_keys_bulk(&mut tx, std::slice::from_ref(new_key), false).await?;
        log_changes(&mut tx, &[rolled, NewChange::created(new_key)]).await?;
        append_audit_tx(&mut tx, &[audit]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_key(&self, org_id: &str, key_id: &str) -> Result<Option<KeyRecord>> {
        let row: Option<KeyRow> = sqlx::query_as(select_keys!("WHERE org_id = $1 AND id = $2"))
            .bind(org_id)
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(self.with_grants(row.into_iter().collect()).await?.pop())
    }

    async fn list_keys(&self, org_id: &str, f: &KeyFilter) -> Result<Vec<KeyRecord>> {
        let mut qb = QueryBuilder::<Postgres>::new(select_keys!("WHERE org_id = "));
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
        let row: Option<KeyRow> = sqlx::query_as(select_keys!("WHERE digest = $1"))
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
             FROM keys WHERE id > $1 ORDER BY id LIMIT $2",
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

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<Vec<i64>> {
        // No transaction of ours: the appending statement commits by itself,
        // so the chain head is locked only while the server runs it.
        let mut conn = self.pool.acquire().await?;
        let refs: Vec<&AuditEntry> = entries.iter().collect();
        append_audit_alone(&mut conn, &refs, &self.head_hint).await
    }

    async fn audit_chain(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>> {
        let rows: Vec<AuditRow> =
            sqlx::query_as(select_audit!("WHERE seq > $1 ORDER BY seq LIMIT $2"))
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
            "WHERE org_id = $1 AND key_id = $2 ORDER BY seq DESC LIMIT $3"
        ))
        .bind(org_id)
        .bind(key_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(AuditRow::into_record).collect()
    }

    async fn change_notifier(&self) -> Result<Option<ChangeNotifier>> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(ChangeNotifier::CHANNEL).await?;
        Ok(Some(ChangeNotifier(listener)))
    }

    async fn changes_since(&self, version: i64, limit: u32) -> Result<(Vec<Change>, i64)> {
        let mut conn = self.pool.acquire().await?;
        let (current,): (i64,) = sqlx::query_as("SELECT version FROM change_head WHERE id = 1")
            .fetch_one(&mut *conn)
            .await?;
        let changes: Vec<Change> =
            sqlx::query_as("SELECT version, org_id, key_id, kind, at FROM changes WHERE version > $1 AND version <= $2 ORDER BY version LIMIT $3")
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
        let rows: Vec<SnapshotRow> = sqlx::query_as(
            "SELECT id, org_id, digest, legacy, expires_at, revoked_at, last_used_at, grants \
             FROM keys WHERE id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(SnapshotRow::into_key).collect()
    }
}
