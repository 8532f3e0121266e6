//! Organizations, keys, the change log and the audit chain's reads, written
//! once for both backends.
//!
//! Like [`crate::people`], the SQL is portable (`$N` placeholders, `CASE`
//! rather than `MIN`/`LEAST`, plain types) and [`keys_impl!`] expands the
//! same bodies inside each backend module. What differs between the two
//! engines is the *dialect seam*: a handful of items every backend module
//! defines under the same names, which the expanded bodies call:
//!
//! | item | SQLite | PostgreSQL |
//! |---|---|---|
//! | `Self::write_tx` | `BEGIN IMMEDIATE` on the one writing connection | a pooled transaction |
//! | `Self::run_migrations` | the migrator | skip when current, else a lock-bounded migrator |
//! | `lock_default_org` | nothing (the write lock is held) | an advisory lock |
//! | `insert_keys_tx` | one `INSERT` per key | two `UNNEST` statements |
//! | `log_changes` | counter bump and rows | the same, plus one `NOTIFY` |
//! | `append_audit_tx` | multi-row `INSERT` | a session-prepared append (`postgres/append.rs`) |
//! | `self.append_audit_now` | in a write transaction | one statement that commits itself |
//! | `self.touch_keys_now` | one `UPDATE` per key | one `UNNEST` statement |
//! | `self.claim_leases_now` | one `UPDATE` per ask | two `UNNEST` statements |
//! | `self.add_usage_now` | one upsert per row | one `UNNEST` upsert |
//! | `self.notifier` | none (the poll carries changes) | a `PgListener` |
//! | `CLAIM_WEBHOOK` | the lease statement | the same, `FOR UPDATE SKIP LOCKED` |
//!
//! So a backend file is its dialect and its migrations; everything a
//! client can observe is decided here, once.

/// `SELECT <key columns> FROM keys <rest>` as a static string (sqlx refuses
/// dynamically built SQL unless audited).
macro_rules! select_keys {
    ($rest:literal) => {
        concat!(
            "SELECT id, org_id, name, description, environment, digest, display_prefix, legacy, ",
            "created_at, created_by, expires_at, revoked_at, rolled_to, last_used_at, limits, ",
            "allowed_cidrs, flagged_unused_at, leaked_at FROM keys ",
            $rest
        )
    };
}
pub(crate) use select_keys;

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
pub(crate) use select_audit;

/// Columns of a snapshot row, in [`crate::rows::SnapshotRow`] order.
macro_rules! select_snapshot {
    ($rest:literal) => {
        concat!(
            "SELECT id, org_id, digest, legacy, expires_at, revoked_at, last_used_at, grants, ",
            "limits, allowed_cidrs ",
            "FROM keys ",
            $rest
        )
    };
}
pub(crate) use select_snapshot;

/// Bound ids per `IN (…)`: well under SQLite's 32 766 parameters and
/// PostgreSQL's 65 535.
pub(crate) const IDS_PER_QUERY: usize = 500;

/// Bound ids per `IN (…)` of [`crate::Store::snapshot_keys_by_id`]: a sync
/// page of 5 000 changes names at most 5 000 keys, so a page is read in one
/// statement (one round trip on PostgreSQL), within both engines' limits.
pub(crate) const SNAPSHOT_IDS_PER_QUERY: usize = 5_000;

/// Implements [`crate::Store`] (and, through `people_impl!`,
/// [`crate::Directory`]) for one backend: `$store` is the store type, `$db`
/// its sqlx database. The dialect seam (module docs) must be in scope.
macro_rules! keys_impl {
    ($store:ty, $db:ty) => {
        $crate::people::people_impl!($store, $db);
        $crate::settings::settings_impl!($store, $db);
        $crate::webhooks::webhooks_impl!($store, $db);

        impl $store {
            /// Reserves `n` change-log versions, in order, by one bump of
            /// the counter, whose row stays locked until the commit: commit
            /// order is version order on every backend.
            async fn reserve_versions(
                conn: &mut <$db as sqlx::Database>::Connection,
                n: usize,
            ) -> $crate::Result<std::ops::RangeInclusive<i64>> {
                let Ok(n) = i64::try_from(n) else {
                    return Err($crate::StoreError::Corrupt(
                        "too many changes in one batch".into(),
                    ));
                };
                let (last,): (i64,) = sqlx::query_as(
                    "UPDATE change_head SET version = version + $1 WHERE id = 1 RETURNING version",
                )
                .bind(n)
                .fetch_one(&mut *conn)
                .await?;
                Ok((last - n + 1)..=last)
            }

            /// Attaches grants to key rows, in their stored order, in chunks
            /// of bound ids.
            async fn with_grants(
                &self,
                rows: Vec<$crate::rows::KeyRow>,
            ) -> $crate::Result<Vec<$crate::KeyRecord>> {
                let mut keys = rows
                    .into_iter()
                    .map($crate::rows::KeyRow::into_record)
                    .collect::<$crate::Result<Vec<_>>>()?;
                let mut by_id: std::collections::HashMap<String, usize> =
                    std::collections::HashMap::with_capacity(keys.len());
                for (i, k) in keys.iter().enumerate() {
                    by_id.insert(k.id.clone(), i);
                }
                let ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
                for chunk in ids.chunks($crate::keys::IDS_PER_QUERY) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
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

        impl $crate::Store for $store {
            async fn migrate(&self) -> $crate::Result<()> {
                self.run_migrations().await
            }

            async fn create_org(
                &self,
                org: &$crate::Org,
                owner: Option<&$crate::UserRecord>,
                audits: &[keyward_core::audit::AuditEntry],
            ) -> $crate::Result<$crate::Org> {
                let mut tx = self.write_tx().await?;
                if org.is_default {
                    // Two processes starting at once must not both create a
                    // default organization.
                    lock_default_org(&mut tx).await?;
                    let existing: Option<$crate::Org> = sqlx::query_as(
                        "SELECT id, slug, name, is_default, created_at FROM orgs WHERE is_default",
                    )
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(existing) = existing {
                        return Ok(existing);
                    }
                }
                sqlx::query(
                    "INSERT INTO orgs (id, slug, name, is_default, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&org.id)
                .bind(&org.slug)
                .bind(&org.name)
                .bind(org.is_default)
                .bind(org.created_at)
                .execute(&mut *tx)
                .await
                .map_err($crate::rows::conflict_or)?;
                if let Some(owner) = owner {
                    Self::insert_user_tx(&mut tx, owner).await?;
                }
                let audits: Vec<&keyward_core::audit::AuditEntry> = audits.iter().collect();
                Self::append_audited_tx(&mut tx, &audits).await?;
                tx.commit().await?;
                Ok(org.clone())
            }

            async fn default_org(&self) -> $crate::Result<Option<$crate::Org>> {
                Ok(sqlx::query_as(
                    "SELECT id, slug, name, is_default, created_at FROM orgs WHERE is_default",
                )
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn org_by_slug(&self, slug: &str) -> $crate::Result<Option<$crate::Org>> {
                Ok(sqlx::query_as(
                    "SELECT id, slug, name, is_default, created_at FROM orgs WHERE slug = $1",
                )
                .bind(slug)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn list_orgs(&self) -> $crate::Result<Vec<$crate::Org>> {
                Ok(sqlx::query_as(
                    "SELECT id, slug, name, is_default, created_at FROM orgs \
                     ORDER BY created_at, id",
                )
                .fetch_all(&self.pool)
                .await?)
            }

            async fn insert_keys(
                &self,
                org_id: &str,
                keys: &[$crate::KeyRecord],
                audits: &[keyward_core::audit::AuditEntry],
                skip_existing: bool,
            ) -> $crate::Result<Vec<bool>> {
                if let Some(k) = keys.iter().find(|k| k.org_id != org_id) {
                    return Err($crate::StoreError::Corrupt(format!(
                        "key `{}` does not belong to the organization",
                        k.id
                    )));
                }
                if keys.is_empty() {
                    return Ok(Vec::new());
                }
                let mut tx = self.write_tx().await?;
                let inserted = insert_keys_tx(&mut tx, keys, skip_existing).await?;
                if !skip_existing && inserted.len() < keys.len() {
                    return Err($crate::StoreError::Conflict(
                        "a key with this digest exists".into(),
                    ));
                }
                let done: Vec<bool> = keys.iter().map(|k| inserted.contains(&k.id)).collect();
                let changes: Vec<$crate::rows::NewChange<'_>> = keys
                    .iter()
                    .zip(&done)
                    .filter_map(|(k, d)| d.then(|| $crate::rows::NewChange::created(k)))
                    .collect();
                if !changes.is_empty() {
                    log_changes(&mut tx, &changes).await?;
                }
                let to_audit: Vec<&keyward_core::audit::AuditEntry> = done
                    .iter()
                    .zip(audits)
                    .filter_map(|(d, a)| d.then_some(a))
                    .collect();
                Self::append_audited_tx(&mut tx, &to_audit).await?;
                tx.commit().await?;
                Ok(done)
            }

            async fn revoke_key(
                &self,
                org_id: &str,
                key_id: &str,
                at: i64,
                audit: &keyward_core::audit::AuditEntry,
            ) -> $crate::Result<$crate::Revoked> {
                let mut tx = self.write_tx().await?;
                // The update is the lock: of two revocations racing on two
                // nodes, the second waits for the first and then finds the
                // key revoked.
                let done = sqlx::query(
                    "UPDATE keys SET revoked_at = $1 \
                     WHERE org_id = $2 AND id = $3 AND revoked_at IS NULL",
                )
                .bind(at)
                .bind(org_id)
                .bind(key_id)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    let current: Option<(Option<i64>,)> =
                        sqlx::query_as("SELECT revoked_at FROM keys WHERE org_id = $1 AND id = $2")
                            .bind(org_id)
                            .bind(key_id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    return match current {
                        Some((Some(when),)) => Ok($crate::Revoked::Already(when)),
                        _ => Err($crate::StoreError::NotFound),
                    };
                }
                let revoked = $crate::rows::NewChange {
                    org_id,
                    key_id,
                    kind: "key.revoked",
                    at,
                };
                log_changes(&mut tx, &[revoked]).await?;
                Self::append_audited_tx(&mut tx, &[audit]).await?;
                tx.commit().await?;
                Ok($crate::Revoked::Now)
            }

            async fn roll_key(
                &self,
                org_id: &str,
                old_id: &str,
                old_expires_at: i64,
                new_key: &$crate::KeyRecord,
                audit: &keyward_core::audit::AuditEntry,
            ) -> $crate::Result<()> {
                let mut tx = self.write_tx().await?;
                let done = sqlx::query(
                    "UPDATE keys SET rolled_to = $2, expires_at = CASE \
                     WHEN expires_at IS NULL OR expires_at > $1 THEN $1 ELSE expires_at END \
                     WHERE org_id = $3 AND id = $4 AND revoked_at IS NULL AND rolled_to IS NULL",
                )
                .bind(old_expires_at)
                .bind(&new_key.id)
                .bind(org_id)
                .bind(old_id)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    // A key is rolled once: a second roll, even one racing
                    // the first, would leave two live successors.
                    let rolled: Option<(Option<String>,)> =
                        sqlx::query_as("SELECT rolled_to FROM keys WHERE org_id = $1 AND id = $2")
                            .bind(org_id)
                            .bind(old_id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    return Err(match rolled {
                        Some((Some(to),)) => $crate::StoreError::Conflict(format!(
                            "key `{old_id}` was already rolled to `{to}`: roll that key instead"
                        )),
                        _ => $crate::StoreError::NotFound,
                    });
                }
                let inserted =
                    insert_keys_tx(&mut tx, std::slice::from_ref(new_key), false).await?;
                if inserted.is_empty() {
                    return Err($crate::StoreError::Conflict(
                        "a key with this digest exists".into(),
                    ));
                }
                let rolled = $crate::rows::NewChange {
                    org_id,
                    key_id: old_id,
                    kind: "key.rolled",
                    at: new_key.created_at,
                };
                log_changes(&mut tx, &[rolled, $crate::rows::NewChange::created(new_key)])
                    .await?;
                Self::append_audited_tx(&mut tx, &[audit]).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_key(
                &self,
                org_id: &str,
                key_id: &str,
            ) -> $crate::Result<Option<$crate::KeyRecord>> {
                let row: Option<$crate::rows::KeyRow> = sqlx::query_as(
                    $crate::keys::select_keys!("WHERE org_id = $1 AND id = $2"),
                )
                .bind(org_id)
                .bind(key_id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(self.with_grants(row.into_iter().collect()).await?.pop())
            }

            async fn list_keys(
                &self,
                org_id: &str,
                f: &$crate::KeyFilter,
            ) -> $crate::Result<Vec<$crate::KeyRecord>> {
                let mut qb =
                    sqlx::QueryBuilder::<$db>::new($crate::keys::select_keys!("WHERE org_id = "));
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
                    qb.push(
                        " AND (revoked_at IS NOT NULL OR (expires_at IS NOT NULL AND expires_at <= ",
                    )
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
                        " AND EXISTS (SELECT 1 FROM key_grants g \
                         WHERE g.key_id = keys.id AND g.name = ",
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
                let rows: Vec<$crate::rows::KeyRow> =
                    qb.build_query_as().fetch_all(&self.pool).await?;
                self.with_grants(rows).await
            }

            async fn key_by_digest(
                &self,
                digest: &keyward_core::KeyDigest,
            ) -> $crate::Result<Option<$crate::KeyRecord>> {
                let row: Option<$crate::rows::KeyRow> =
                    sqlx::query_as($crate::keys::select_keys!("WHERE digest = $1"))
                        .bind(digest.as_bytes().as_slice())
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(self.with_grants(row.into_iter().collect()).await?.pop())
            }

            async fn count_keys(&self) -> $crate::Result<u64> {
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM keys")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(u64::try_from(n).unwrap_or(0))
            }

            async fn snapshot_keys(
                &self,
                after: &str,
                limit: u32,
            ) -> $crate::Result<Vec<$crate::SnapshotKey>> {
                let rows: Vec<$crate::rows::SnapshotRow> = sqlx::query_as(
                    $crate::keys::select_snapshot!("WHERE id > $1 ORDER BY id LIMIT $2"),
                )
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map($crate::rows::SnapshotRow::into_key)
                    .collect()
            }

            async fn snapshot_keys_by_id(
                &self,
                ids: &[String],
            ) -> $crate::Result<Vec<$crate::SnapshotKey>> {
                let mut keys = Vec::with_capacity(ids.len());
                for chunk in ids.chunks($crate::keys::SNAPSHOT_IDS_PER_QUERY) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        $crate::keys::select_snapshot!("WHERE id IN ("),
                    );
                    let mut sep = qb.separated(", ");
                    for id in chunk {
                        sep.push_bind(id);
                    }
                    qb.push(")");
                    let rows: Vec<$crate::rows::SnapshotRow> =
                        qb.build_query_as().fetch_all(&self.pool).await?;
                    for row in rows {
                        keys.push(row.into_key()?);
                    }
                }
                Ok(keys)
            }

            async fn limit_heartbeat(
                &self,
                node: &str,
                now: i64,
                alive_ms: i64,
            ) -> $crate::Result<u64> {
                // The node's own row only: nothing else waits on it.
                let mut tx = self.write_tx().await?;
                sqlx::query(
                    "INSERT INTO limit_nodes (node, seen_at, alive_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (node) DO UPDATE SET seen_at = excluded.seen_at, \
                     alive_ms = excluded.alive_ms",
                )
                .bind(node)
                .bind(now)
                .bind(alive_ms)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                let (n,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM limit_nodes WHERE seen_at + alive_ms >= $1")
                        .bind(now)
                        .fetch_one(&self.pool)
                        .await?;
                Ok($crate::limits::uncol(n).max(1))
            }

            async fn claim_leases(
                &self,
                nodes: u64,
                asks: &[$crate::LeaseAsk],
            ) -> $crate::Result<Vec<$crate::LeaseAnswer>> {
                if asks.is_empty() {
                    return Ok(Vec::new());
                }
                self.claim_leases_now(nodes.max(1), asks).await
            }

            async fn limit_leave(&self, node: &str) -> $crate::Result<()> {
                let mut tx = self.write_tx().await?;
                sqlx::query("DELETE FROM limit_nodes WHERE node = $1")
                    .bind(node)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn forget_leases(&self, before: i64) -> $crate::Result<()> {
                // Rows of ended windows: no node asks about them any more.
                let mut tx = self.write_tx().await?;
                sqlx::query("DELETE FROM limit_leases WHERE expires_at < $1")
                    .bind(before)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM limit_nodes WHERE seen_at + alive_ms < $1")
                    .bind(before)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn add_usage(&self, rows: &[$crate::UsageRow]) -> $crate::Result<()> {
                if rows.is_empty() {
                    return Ok(());
                }
                self.add_usage_now(rows).await
            }

            async fn key_usage(
                &self,
                key_id: &str,
                since: i64,
                until: i64,
            ) -> $crate::Result<Vec<$crate::UsageRow>> {
                let rows: Vec<$crate::usage::UsageTuple> = sqlx::query_as(
                    "SELECT key_id, hour, method, route, outcome, count, last_seen FROM key_usage \
                     WHERE key_id = $1 AND hour >= $2 AND hour < $3 \
                     ORDER BY hour, method, route, outcome",
                )
                .bind(key_id)
                .bind(since)
                .bind(until)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map($crate::UsageRow::from_tuple).collect())
            }

            async fn prune_usage(&self, before: i64) -> $crate::Result<u64> {
                // Old hours only: no node flushes into them any more.
                let mut tx = self.write_tx().await?;
                let done = sqlx::query("DELETE FROM key_usage WHERE hour < $1")
                    .bind(before)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(done.rows_affected())
            }

            async fn touch_keys(&self, uses: &[(String, i64)]) -> $crate::Result<()> {
                if uses.is_empty() {
                    return Ok(());
                }
                self.touch_keys_now(uses).await
            }

            async fn append_audit(
                &self,
                entries: &[keyward_core::audit::AuditEntry],
            ) -> $crate::Result<Vec<i64>> {
                self.append_audit_now(entries).await
            }

            async fn audit_chain(
                &self,
                after: i64,
                limit: u32,
            ) -> $crate::Result<Vec<$crate::AuditRecord>> {
                let rows: Vec<$crate::rows::AuditRow> = sqlx::query_as(
                    $crate::keys::select_audit!("WHERE seq > $1 ORDER BY seq LIMIT $2"),
                )
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map($crate::rows::AuditRow::into_record)
                    .collect()
            }

            async fn audit_head(&self) -> $crate::Result<(i64, [u8; 32])> {
                let (seq, hash): (i64, Vec<u8>) =
                    sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                        .fetch_one(&self.pool)
                        .await?;
                Ok((seq, $crate::rows::hash32(&hash, "audit head hash")?))
            }

            async fn audit_for_key(
                &self,
                org_id: &str,
                key_id: &str,
                limit: u32,
            ) -> $crate::Result<Vec<$crate::AuditRecord>> {
                let rows: Vec<$crate::rows::AuditRow> = sqlx::query_as(
                    $crate::keys::select_audit!(
                        "WHERE org_id = $1 AND key_id = $2 AND action <> 'gateway.request' \
                         ORDER BY seq DESC LIMIT $3"
                    ),
                )
                .bind(org_id)
                .bind(key_id)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map($crate::rows::AuditRow::into_record)
                    .collect()
            }

            async fn change_notifier(&self) -> $crate::Result<Option<$crate::ChangeNotifier>> {
                self.notifier().await
            }

            async fn changes_since(
                &self,
                version: i64,
                limit: u32,
            ) -> $crate::Result<(Vec<$crate::Change>, i64)> {
                let mut conn = self.pool.acquire().await?;
                let (current,): (i64,) =
                    sqlx::query_as("SELECT version FROM change_head WHERE id = 1")
                        .fetch_one(&mut *conn)
                        .await?;
                let changes: Vec<$crate::Change> = sqlx::query_as(
                    "SELECT version, org_id, key_id, kind, at FROM changes \
                     WHERE version > $1 AND version <= $2 ORDER BY version LIMIT $3",
                )
                .bind(version)
                .bind(current)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?;
                Ok((changes, current))
            }
        }
    };
}
pub(crate) use keys_impl;
