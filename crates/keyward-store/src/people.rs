//! Users, group memberships and audit queries, written once for both
//! backends.
//!
//! The SQL here is portable: `$N` placeholders (which sqlx's SQLite driver
//! binds by number too), `ON CONFLICT … DO NOTHING`, plain types. The
//! [`people_impl!`] macro expands the same method bodies inside each backend
//! module, where `write_tx` and `append_audit_tx` resolve to that backend's
//! own (SQLite's `BEGIN IMMEDIATE`, PostgreSQL's row-locked chain head), so
//! the two cannot drift and neither needs generic trait bounds over sqlx.

/// Columns of a user row, in [`crate::rows::UserRow`] order.
macro_rules! select_users {
    ($rest:literal) => {
        concat!(
            "SELECT u.id, u.org_id, u.email, u.name, u.password_hash, u.must_change_password, ",
            "u.created_at, u.disabled_at FROM users u ",
            $rest
        )
    };
}
pub(crate) use select_users;

/// Implements [`crate::Directory`] for one backend: `$store` is the store
/// type, `$db` its sqlx database.
macro_rules! people_impl {
    ($store:ty, $db:ty) => {
        impl $store {
            /// Inserts a user and its memberships (group rows created on
            /// first use), plus its audit records, in one transaction.
            async fn insert_user_tx(
                conn: &mut <$db as sqlx::Database>::Connection,
                user: &$crate::UserRecord,
            ) -> $crate::Result<()> {
                sqlx::query(
                    "INSERT INTO users (id, org_id, email, name, password_hash, \
                     must_change_password, created_at, disabled_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&user.id)
                .bind(&user.org_id)
                .bind(&user.email)
                .bind(&user.name)
                .bind(&user.password_hash)
                .bind(user.must_change_password)
                .bind(user.created_at)
                .bind(user.disabled_at)
                .execute(&mut *conn)
                .await
                .map_err($crate::rows::conflict_or)?;
                for group in &user.groups {
                    Self::add_member_tx(conn, &user.org_id, group, &user.id, user.created_at)
                        .await?;
                }
                Ok(())
            }

            /// Adds a membership; `false` when it already existed.
            async fn add_member_tx(
                conn: &mut <$db as sqlx::Database>::Connection,
                org_id: &str,
                group_id: &str,
                user_id: &str,
                at: i64,
            ) -> $crate::Result<bool> {
                sqlx::query(
                    "INSERT INTO groups (org_id, id, name, builtin) VALUES ($1, $2, $2, $3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(org_id)
                .bind(group_id)
                .bind(group_id == $crate::ADMINISTRATORS)
                .execute(&mut *conn)
                .await?;
                let done = sqlx::query(
                    "INSERT INTO group_members (org_id, group_id, user_id, added_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(org_id)
                .bind(group_id)
                .bind(user_id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            /// Attaches group ids to user rows.
            async fn users_with_groups(
                &self,
                org_id: &str,
                rows: Vec<$crate::rows::UserRow>,
            ) -> $crate::Result<Vec<$crate::UserRecord>> {
                let mut users: Vec<$crate::UserRecord> = rows
                    .into_iter()
                    .map($crate::rows::UserRow::into_record)
                    .collect();
                if users.is_empty() {
                    return Ok(users);
                }
                let members: Vec<(String, String)> = sqlx::query_as(
                    "SELECT user_id, group_id FROM group_members WHERE org_id = $1 \
                     ORDER BY group_id",
                )
                .bind(org_id)
                .fetch_all(&self.pool)
                .await?;
                let index: std::collections::HashMap<String, usize> = users
                    .iter()
                    .enumerate()
                    .map(|(i, u)| (u.id.clone(), i))
                    .collect();
                for (user_id, group_id) in members {
                    if let Some(&i) = index.get(&user_id) {
                        users[i].groups.push(group_id);
                    }
                }
                Ok(users)
            }
        }

        impl $crate::Directory for $store {
            async fn create_user(
                &self,
                user: &$crate::UserRecord,
                audit: &keyward_core::audit::AuditEntry,
            ) -> $crate::Result<()> {
                let mut tx = self.write_tx().await?;
                Self::insert_user_tx(&mut tx, user).await?;
                Self::append_audited_tx(&mut tx, &[audit]).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_user(
                &self,
                org_id: &str,
                user_id: &str,
            ) -> $crate::Result<Option<$crate::UserRecord>> {
                let rows: Vec<$crate::rows::UserRow> = sqlx::query_as(
                    $crate::people::select_users!("WHERE u.org_id = $1 AND u.id = $2"),
                )
                .bind(org_id)
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?;
                Ok(self.users_with_groups(org_id, rows).await?.pop())
            }

            async fn user_by_email(
                &self,
                org_id: &str,
                email: &str,
            ) -> $crate::Result<Option<$crate::UserRecord>> {
                let rows: Vec<$crate::rows::UserRow> = sqlx::query_as(
                    $crate::people::select_users!("WHERE u.org_id = $1 AND u.email = $2"),
                )
                .bind(org_id)
                .bind(email)
                .fetch_all(&self.pool)
                .await?;
                Ok(self.users_with_groups(org_id, rows).await?.pop())
            }

            async fn list_users(
                &self,
                org_id: &str,
                group_id: Option<&str>,
            ) -> $crate::Result<Vec<$crate::UserRecord>> {
                let rows: Vec<$crate::rows::UserRow> = match group_id {
                    None => {
                        sqlx::query_as($crate::people::select_users!(
                            "WHERE u.org_id = $1 ORDER BY u.email, u.id"
                        ))
                        .bind(org_id)
                        .fetch_all(&self.pool)
                        .await?
                    }
                    Some(g) => {
                        sqlx::query_as($crate::people::select_users!(
                            "JOIN group_members m ON m.org_id = u.org_id AND m.user_id = u.id \
                             WHERE u.org_id = $1 AND m.group_id = $2 ORDER BY u.email, u.id"
                        ))
                        .bind(org_id)
                        .bind(g)
                        .fetch_all(&self.pool)
                        .await?
                    }
                };
                self.users_with_groups(org_id, rows).await
            }

            async fn set_membership(
                &self,
                org_id: &str,
                group_id: &str,
                user_id: &str,
                member: bool,
                audit: &keyward_core::audit::AuditEntry,
            ) -> $crate::Result<bool> {
                let mut tx = self.write_tx().await?;
                let exists: Option<(String,)> =
                    sqlx::query_as("SELECT id FROM users WHERE org_id = $1 AND id = $2")
                        .bind(org_id)
                        .bind(user_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if exists.is_none() {
                    return Err($crate::StoreError::NotFound);
                }
                let changed = if member {
                    Self::add_member_tx(&mut tx, org_id, group_id, user_id, audit.at_ms).await?
                } else {
                    sqlx::query(
                        "DELETE FROM group_members WHERE org_id = $1 AND group_id = $2 \
                         AND user_id = $3",
                    )
                    .bind(org_id)
                    .bind(group_id)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        > 0
                };
                if changed {
                    Self::append_audited_tx(&mut tx, &[audit]).await?;
                }
                tx.commit().await?;
                Ok(changed)
            }

            async fn set_password(
                &self,
                org_id: &str,
                user_id: &str,
                password_hash: &str,
                must_change: bool,
                audit: Option<&keyward_core::audit::AuditEntry>,
                keep_session: Option<&[u8; 32]>,
            ) -> $crate::Result<()> {
                let mut tx = self.write_tx().await?;
                let done = sqlx::query(
                    "UPDATE users SET password_hash = $1, must_change_password = $2 \
                     WHERE org_id = $3 AND id = $4",
                )
                .bind(password_hash)
                .bind(must_change)
                .bind(org_id)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Err($crate::StoreError::NotFound);
                }
                // A new password ends every other session of the user: one
                // stolen before the change must not outlive it.
                sqlx::query(
                    "DELETE FROM sessions WHERE org_id = $1 AND user_id = $2 AND token_hash <> $3",
                )
                .bind(org_id)
                .bind(user_id)
                .bind(keep_session.map_or(&[0u8; 32][..], |h| &h[..]))
                .execute(&mut *tx)
                .await?;
                if let Some(audit) = audit {
                    Self::append_audited_tx(&mut tx, &[audit]).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn create_session(
                &self,
                session: &$crate::SessionRecord,
                idle_cutoff: i64,
                nonce_cutoff: i64,
                audit: &keyward_core::audit::AuditEntry,
            ) -> $crate::Result<()> {
                let mut tx = self.write_tx().await?;
                // Sessions idle past the cutoff can never be used again, nor
                // can nonces older than any session.
                sqlx::query("DELETE FROM sessions WHERE last_seen_at < $1")
                    .bind(idle_cutoff)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM form_nonces WHERE created_at < $1")
                    .bind(nonce_cutoff)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO sessions (token_hash, org_id, user_id, csrf, created_at, \
                     last_seen_at) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(session.token_hash.as_slice())
                .bind(&session.org_id)
                .bind(&session.user_id)
                .bind(&session.csrf)
                .bind(session.created_at)
                .bind(session.last_seen_at)
                .execute(&mut *tx)
                .await
                .map_err($crate::rows::conflict_or)?;
                Self::append_audited_tx(&mut tx, &[audit]).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn session(
                &self,
                token_hash: &[u8; 32],
            ) -> $crate::Result<Option<$crate::SessionRecord>> {
                let row: Option<$crate::rows::SessionRow> = sqlx::query_as(
                    "SELECT token_hash, org_id, user_id, csrf, created_at, last_seen_at \
                     FROM sessions WHERE token_hash = $1",
                )
                .bind(token_hash.as_slice())
                .fetch_optional(&self.pool)
                .await?;
                row.map($crate::rows::SessionRow::into_record).transpose()
            }

            async fn touch_session(&self, token_hash: &[u8; 32], at: i64) -> $crate::Result<()> {
                sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE token_hash = $2")
                    .bind(at)
                    .bind(token_hash.as_slice())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn end_session(
                &self,
                token_hash: &[u8; 32],
                audit: Option<&keyward_core::audit::AuditEntry>,
            ) -> $crate::Result<()> {
                let mut tx = self.write_tx().await?;
                let done = sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
                    .bind(token_hash.as_slice())
                    .execute(&mut *tx)
                    .await?;
                if let Some(audit) = audit.filter(|_| done.rows_affected() > 0) {
                    Self::append_audited_tx(&mut tx, &[audit]).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn begin_sign_in(
                &self,
                attempt: &str,
                org_id: &str,
                email: &str,
                client: &str,
                at: i64,
                since: i64,
            ) -> $crate::Result<(u32, u32)> {
                let mut tx = self.write_tx().await?;
                // One sign-in attempt at a time everywhere: the change-log
                // head is a row every backend can lock, and attempts are rare.
                // Without it, parallel guesses would all read a count under
                // the limit before any of them recorded itself.
                sqlx::query("UPDATE change_head SET version = version WHERE id = 1")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM sign_in_failures WHERE at < $1")
                    .bind(since)
                    .execute(&mut *tx)
                    .await?;
                let (by_email,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM sign_in_failures WHERE org_id = $1 AND email = $2",
                )
                .bind(org_id)
                .bind(email)
                .fetch_one(&mut *tx)
                .await?;
                let (by_client,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM sign_in_failures WHERE client = $1")
                        .bind(client)
                        .fetch_one(&mut *tx)
                        .await?;
                sqlx::query(
                    "INSERT INTO sign_in_failures (at, org_id, email, client, attempt) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(at)
                .bind(org_id)
                .bind(email)
                .bind(client)
                .bind(attempt)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                let clamp = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
                Ok((clamp(by_email), clamp(by_client)))
            }

            async fn clear_sign_in_attempt(&self, attempt: &str) -> $crate::Result<()> {
                // Through the writers' turn: on SQLite a write on the read
                // pool can meet a snapshot another writer has just moved
                // (SQLITE_BUSY_SNAPSHOT, which no busy timeout waits out),
                // and a burst of parallel sign-ins then saw an odd 500.
                let mut tx = self.write_tx().await?;
                sqlx::query("DELETE FROM sign_in_failures WHERE attempt = $1")
                    .bind(attempt)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn create_nonce(
                &self,
                nonce: &str,
                token_hash: &[u8; 32],
                at: i64,
            ) -> $crate::Result<()> {
                sqlx::query(
                    "INSERT INTO form_nonces (nonce, token_hash, created_at) VALUES ($1, $2, $3)",
                )
                .bind(nonce)
                .bind(token_hash.as_slice())
                .bind(at)
                .execute(&self.pool)
                .await
                .map_err($crate::rows::conflict_or)?;
                Ok(())
            }

            async fn use_nonce(
                &self,
                nonce: &str,
                token_hash: &[u8; 32],
                at: i64,
            ) -> $crate::Result<bool> {
                let done = sqlx::query(
                    "UPDATE form_nonces SET used_at = $1 \
                     WHERE nonce = $2 AND token_hash = $3 AND used_at IS NULL",
                )
                .bind(at)
                .bind(nonce)
                .bind(token_hash.as_slice())
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn query_audit(
                &self,
                org_id: &str,
                q: &$crate::AuditQuery,
            ) -> $crate::Result<Vec<$crate::AuditRecord>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT seq, at, org_id, actor, action, key_id, method, path, status, \
                     required, client, request_id, details, prev_hash, hash FROM audit_log \
                     WHERE org_id = ",
                );
                qb.push_bind(org_id);
                if let Some(k) = &q.key_id {
                    qb.push(" AND key_id = ").push_bind(k.as_str());
                }
                if let Some(a) = &q.actor {
                    qb.push(" AND actor = ").push_bind(a.as_str());
                }
                if let Some(a) = &q.action {
                    qb.push(" AND action = ").push_bind(a.as_str());
                }
                if let Some(s) = q.status {
                    qb.push(" AND status = ").push_bind(i64::from(s));
                }
                if let Some(t) = q.since {
                    qb.push(" AND at >= ").push_bind(t);
                }
                if let Some(t) = q.until {
                    qb.push(" AND at < ").push_bind(t);
                }
                if let Some(s) = q.before_seq {
                    qb.push(" AND seq < ").push_bind(s);
                }
                qb.push(" ORDER BY seq DESC LIMIT ")
                    .push_bind(i64::from(q.limit));
                let rows: Vec<$crate::rows::AuditRow> =
                    qb.build_query_as().fetch_all(&self.pool).await?;
                rows.into_iter()
                    .map($crate::rows::AuditRow::into_record)
                    .collect()
            }
        }
    };
}
pub(crate) use people_impl;
