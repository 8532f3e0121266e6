//! Users, authorization groups and audit queries.
//!
//! Groups come from the catalog: every permission set is a group of every
//! organization, plus the built-in `administrators` group holding every
//! scope. Only memberships are stored. A user's access is the closure of the
//! union of their groups' scopes, so a user and a key are the same kind of
//! principal ([`Actor`]) to every use case, and the no-escalation rule reads
//! the same for both: nobody hands out scopes they do not hold, whether by
//! creating a key or by adding someone to a group.

use crate::views::{KeyView, human_time, names, ser_time};
use crate::{Actor, App, AppError, Refusal};
use keyward_core::ScopeSet;
use keyward_core::check_no_escalation;
use keyward_store::{ADMINISTRATORS, AuditQuery, KeyFilter, Org, Store, StoreError, UserRecord};
use serde::Serialize;
use serde_json::json;

pub use keyward_store::ADMINISTRATORS as ADMINISTRATORS_GROUP;

/// Longest sign-in name.
pub const MAX_EMAIL_CHARS: usize = 254;
/// Length of generated one-time passwords (base62: about 119 bits).
pub const ONE_TIME_PASSWORD_CHARS: usize = 20;
/// Most records one audit query returns.
pub const MAX_AUDIT_PAGE: u32 = 500;

/// A user as administrators see them. Never carries the password hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UserView {
    /// `usr_…`
    pub id: String,
    /// Owning organization.
    pub org_id: String,
    /// Sign-in name.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Group ids.
    pub groups: Vec<String>,
    /// The next sign-in must choose a new password.
    pub must_change_password: bool,
    /// Creation time.
    #[serde(serialize_with = "ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Option<i64>,
    /// Set when the user can no longer sign in.
    #[serde(serialize_with = "ser_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub disabled_at: Option<i64>,
}

impl From<UserRecord> for UserView {
    fn from(u: UserRecord) -> Self {
        UserView {
            id: u.id,
            org_id: u.org_id,
            email: u.email,
            name: u.name,
            groups: u.groups,
            must_change_password: u.must_change_password,
            created_at: Some(u.created_at),
            disabled_at: u.disabled_at,
        }
    }
}

/// An authorization group: a permission set of the catalog, or
/// `administrators`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct GroupView {
    /// The permission set id (`administrators` for the built-in group).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Product area (empty for `administrators`).
    pub area: String,
    /// What membership allows.
    pub description: String,
    /// Built in (`administrators`), not from the catalog.
    pub builtin: bool,
    /// Whether membership allows writes.
    pub write: bool,
    /// Scopes the group grants, as listed.
    pub scopes: Vec<String>,
    /// Closure of those scopes: what members can do.
    pub effective_scopes: Vec<String>,
    /// Number of members.
    pub members: usize,
}

/// A user just created or whose password was reset, with the one-time
/// password: shown once, never stored in clear.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct UserWithPassword {
    /// The user.
    #[serde(flatten)]
    pub user: UserView,
    /// Must be changed at first sign-in.
    pub one_time_password: String,
}

impl std::fmt::Debug for UserWithPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserWithPassword")
            .field("user", &self.user)
            .field("one_time_password", &"<redacted>")
            .finish()
    }
}

/// One audit record as `GET /v1/audit` and the console show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditView {
    /// Position in the hash chain.
    pub seq: i64,
    /// When.
    #[serde(serialize_with = "ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Option<i64>,
    /// Organization.
    pub org_id: String,
    /// `key:…`, `user:…`, `cli:…`.
    pub actor: String,
    /// `request`, `key.created`, `group.member_added`, …
    pub action: String,
    /// Key concerned.
    pub key_id: Option<String>,
    /// HTTP method, for requests.
    pub method: Option<String>,
    /// Path, for requests.
    pub path: Option<String>,
    /// Status answered.
    pub status: Option<u16>,
    /// Scopes that were required and missing.
    pub required: Vec<String>,
    /// Client address.
    pub client: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// Action-specific details.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// Hex of this record's chain hash.
    pub hash: String,
}

impl From<keyward_store::AuditRecord> for AuditView {
    fn from(r: keyward_store::AuditRecord) -> Self {
        let e = r.entry;
        AuditView {
            seq: r.seq,
            at: Some(e.at_ms),
            org_id: e.org_id,
            actor: e.actor,
            action: e.action,
            key_id: e.key_id,
            method: e.method,
            path: e.path,
            status: e.status,
            required: e.required,
            client: e.client,
            request_id: e.request_id,
            details: serde_json::from_str(&e.details)
                .ok()
                .filter(serde_json::Value::is_object)
                .unwrap_or_else(|| serde_json::json!({})),
            hash: r.hash.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// What a first start or a new organization hands its operator, once.
#[derive(Clone, PartialEq, Eq)]
pub struct OwnerCredentials {
    /// Sign-in name of the owner.
    pub email: String,
    /// One-time password; must be changed at first sign-in.
    pub password: String,
}

impl std::fmt::Debug for OwnerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnerCredentials")
            .field("email", &self.email)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Sign-in name of the owner every organization starts with.
pub const OWNER_EMAIL: &str = "owner";

/// Trims, lowercases and checks a sign-in name.
pub(crate) fn validate_email(raw: &str) -> Result<String, AppError> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err(AppError::validation("email", "must not be empty"));
    }
    let n = email.chars().count();
    if n > MAX_EMAIL_CHARS {
        return Err(AppError::validation(
            "email",
            format!("must be at most {MAX_EMAIL_CHARS} characters, got {n}"),
        ));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(AppError::validation(
            "email",
            "must not contain spaces or control characters",
        ));
    }
    Ok(email)
}

impl<S: Store> App<S> {
    /// Scopes a group grants (not expanded); `None` for an unknown group.
    pub fn group_scopes(&self, group_id: &str) -> Option<ScopeSet> {
        if group_id == ADMINISTRATORS {
            return Some(self.catalog.available_scopes());
        }
        self.catalog.permission_set(group_id).map(|s| s.scope_set())
    }

    /// What a user may do: the closure of their groups' scopes. Disabled
    /// users hold nothing; groups the catalog no longer has grant nothing.
    pub fn user_access(&self, user: &UserRecord) -> ScopeSet {
        if user.disabled_at.is_some() {
            return ScopeSet::EMPTY;
        }
        let granted = user
            .groups
            .iter()
            .filter_map(|g| self.group_scopes(g))
            .fold(ScopeSet::EMPTY, |acc, s| acc.union(&s));
        self.catalog.closure(granted)
    }

    /// The principal a signed-in user acts as.
    pub fn user_actor(
        &self,
        user: &UserRecord,
        client: Option<String>,
        request_id: Option<String>,
    ) -> Actor {
        Actor {
            id: keyward_core::audit::actor::user(&user.id),
            effective: self.user_access(user),
            client,
            request_id,
        }
    }

    fn one_time_password(&self) -> Result<(String, String), AppError> {
        let password = loop {
            let mut bytes = [0u8; 48];
            self.rng.fill(&mut bytes)?;
            if let Some(s) = keyward_core::key::base62_from_random(&bytes, ONE_TIME_PASSWORD_CHARS)
            {
                break s;
            }
        };
        let hash = password_auth::generate_hash(&password);
        Ok((password, hash))
    }

    /// The owner row an organization starts with, and its password in clear.
    pub(crate) fn new_owner(
        &self,
        org_id: &str,
    ) -> Result<(UserRecord, OwnerCredentials), AppError> {
        let (password, hash) = self.one_time_password()?;
        let user = UserRecord {
            id: self.random_id("usr", 16)?,
            org_id: org_id.to_owned(),
            email: OWNER_EMAIL.to_owned(),
            name: "Owner".to_owned(),
            password_hash: Some(hash),
            must_change_password: true,
            created_at: self.now(),
            disabled_at: None,
            groups: vec![ADMINISTRATORS.to_owned()],
        };
        let creds = OwnerCredentials {
            email: user.email.clone(),
            password,
        };
        Ok((user, creds))
    }

    /// Checks that every group exists and that `actor` holds what they grant;
    /// returns the union of their scopes.
    fn check_groups(&self, groups: &[String]) -> Result<ScopeSet, AppError> {
        let mut unknown = Vec::new();
        let mut scopes = ScopeSet::EMPTY;
        for g in groups {
            match self.group_scopes(g) {
                Some(s) => scopes = scopes.union(&s),
                None => unknown.push(format!("`{g}`")),
            }
        }
        if unknown.is_empty() {
            Ok(self.catalog.closure(scopes))
        } else {
            Err(AppError::validation(
                "groups",
                format!("unknown group {}", unknown.join(", ")),
            ))
        }
    }

    /// Audits and returns the refusal of an escalation.
    async fn refuse_escalation(
        &self,
        actor: &Actor,
        org: &Org,
        action: &str,
        lacking: ScopeSet,
        details: serde_json::Value,
    ) -> AppError {
        let lacking = names(&self.catalog, lacking);
        let refusal = Refusal {
            action,
            key_id: None,
            status: 403,
            required: lacking.clone(),
            details,
            ..Refusal::default()
        };
        self.refuse(actor, org, refusal, AppError::Escalation { lacking })
            .await
    }

    /// Creates a user with a one-time password. Adding someone to a group
    /// grants its scopes, so the actor must hold them (refusal audited).
    ///
    /// # Errors
    /// Validation, [`AppError::Conflict`] for a taken email,
    /// [`AppError::Escalation`].
    pub async fn create_user(
        &self,
        actor: &Actor,
        org: &Org,
        email: &str,
        name: &str,
        groups: &[String],
    ) -> Result<UserWithPassword, AppError> {
        let email = validate_email(email)?;
        let name = if name.trim().is_empty() {
            email.clone()
        } else {
            crate::validate_name(name)?
        };
        let mut groups = groups.to_vec();
        groups.sort();
        groups.dedup();
        let scopes = self.check_groups(&groups)?;
        if let Err(lacking) = check_no_escalation(actor.effective, scopes) {
            let details = json!({"email": email, "groups": groups});
            return Err(self
                .refuse_escalation(actor, org, "user.create_refused", lacking, details)
                .await);
        }
        let (password, hash) = self.one_time_password()?;
        let user = UserRecord {
            id: self.random_id("usr", 16)?,
            org_id: org.id.clone(),
            email,
            name,
            password_hash: Some(hash),
            must_change_password: true,
            created_at: self.now(),
            disabled_at: None,
            groups,
        };
        let details = json!({"email": user.email, "name": user.name, "groups": user.groups});
        let mut entry = self.audit(actor, org, "user.created", None, details);
        entry.key_id = None;
        match self.store.create_user(&user, &entry).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(AppError::Conflict(format!(
                    "a user `{}` already exists in this organization",
                    user.email
                )));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(UserWithPassword {
            user: user.into(),
            one_time_password: password,
        })
    }

    /// A user by id, or by sign-in name when `id_or_email` is not a user id.
    ///
    /// # Errors
    /// [`AppError::NotFound`], also for another organization's user.
    pub async fn find_user(&self, org: &Org, id_or_email: &str) -> Result<UserRecord, AppError> {
        let found = if id_or_email.starts_with("usr_") {
            self.store.get_user(&org.id, id_or_email).await?
        } else {
            self.store
                .user_by_email(&org.id, &id_or_email.trim().to_lowercase())
                .await?
        };
        found.ok_or_else(|| AppError::NotFound {
            what: "user",
            id: id_or_email.to_owned(),
        })
    }

    /// Users of the organization, by email; only one group's members when
    /// `group` is given.
    ///
    /// # Errors
    /// [`AppError::NotFound`] for an unknown group.
    pub async fn list_users(
        &self,
        org: &Org,
        group: Option<&str>,
    ) -> Result<Vec<UserView>, AppError> {
        if let Some(g) = group {
            self.group(g)?;
        }
        let users = self.store.list_users(&org.id, group).await?;
        Ok(users.into_iter().map(UserView::from).collect())
    }

    /// Adds a user to a group or removes them. Adding grants the group's
    /// scopes, so the actor must hold them (refusal audited). Changes are
    /// audited; repeating one changes nothing. Returns the user as now.
    ///
    /// # Errors
    /// [`AppError::NotFound`] for an unknown group or user,
    /// [`AppError::Escalation`].
    pub async fn set_membership(
        &self,
        actor: &Actor,
        org: &Org,
        group_id: &str,
        user: &str,
        member: bool,
    ) -> Result<(UserView, bool), AppError> {
        let scopes = self.group(group_id)?;
        let target = self.find_user(org, user).await?;
        let details = json!({"group": group_id, "user_id": target.id, "email": target.email});
        // Adding hands out the group's scopes; removing takes them away. Both
        // are only for someone who holds them: a holder of
        // `keyward-groups:write` alone cannot empty `administrators`.
        if let Err(lacking) = check_no_escalation(actor.effective, self.catalog.closure(scopes)) {
            let action = if member {
                "group.member_add_refused"
            } else {
                "group.member_remove_refused"
            };
            return Err(self
                .refuse_escalation(actor, org, action, lacking, details)
                .await);
        }
        if !member
            && group_id == ADMINISTRATORS
            && target.groups.iter().any(|g| g == ADMINISTRATORS)
        {
            let admins = self.store.list_users(&org.id, Some(ADMINISTRATORS)).await?;
            if admins.len() <= 1 {
                return Err(AppError::Conflict(format!(
                    "`{}` is the last member of administrators: add another administrator first",
                    target.email
                )));
            }
        }
        let action = if member {
            "group.member_added"
        } else {
            "group.member_removed"
        };
        let entry = self.audit(actor, org, action, None, details);
        let changed = match self
            .store
            .set_membership(&org.id, group_id, &target.id, member, &entry)
            .await
        {
            Ok(c) => c,
            Err(StoreError::NotFound) => {
                return Err(AppError::NotFound {
                    what: "user",
                    id: user.to_owned(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let now = self.find_user(org, &target.id).await?;
        Ok((now.into(), changed))
    }

    /// Gives a user a new one-time password (audited).
    ///
    /// # Errors
    /// [`AppError::NotFound`]; [`AppError::Escalation`] when the user holds
    /// scopes the actor does not (resetting is taking over their access).
    pub async fn reset_password(
        &self,
        actor: &Actor,
        org: &Org,
        user: &str,
    ) -> Result<UserWithPassword, AppError> {
        let target = self.find_user(org, user).await?;
        let details = json!({"user_id": target.id, "email": target.email});
        if let Err(lacking) = check_no_escalation(actor.effective, self.user_access(&target)) {
            return Err(self
                .refuse_escalation(actor, org, "user.password_reset_refused", lacking, details)
                .await);
        }
        let (password, hash) = self.one_time_password()?;
        let entry = self.audit(actor, org, "user.password_reset", None, details);
        self.store
            .set_password(&org.id, &target.id, &hash, true, Some(&entry), None)
            .await?;
        let mut view = UserView::from(target);
        view.must_change_password = true;
        Ok(UserWithPassword {
            user: view,
            one_time_password: password,
        })
    }

    /// The scopes of a group, or `NotFound`.
    fn group(&self, group_id: &str) -> Result<ScopeSet, AppError> {
        self.group_scopes(group_id)
            .ok_or_else(|| AppError::NotFound {
                what: "group",
                id: group_id.to_owned(),
            })
    }

    /// Every group of the organization: `administrators`, then the
    /// catalog's permission sets in catalog order, with member counts.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn list_groups(&self, org: &Org) -> Result<Vec<GroupView>, AppError> {
        let users = self.store.list_users(&org.id, None).await?;
        let count = |id: &str| {
            users
                .iter()
                .filter(|u| u.groups.iter().any(|g| g == id))
                .count()
        };
        let all = self.catalog.available_scopes();
        let mut out = vec![GroupView {
            id: ADMINISTRATORS.to_owned(),
            name: "Administrators".to_owned(),
            area: String::new(),
            description: "Everything keyward and the catalog offer, including scopes added later"
                .to_owned(),
            builtin: true,
            write: true,
            scopes: names(&self.catalog, all),
            effective_scopes: names(&self.catalog, all),
            members: count(ADMINISTRATORS),
        }];
        for set in self.catalog.permission_sets() {
            out.push(GroupView {
                id: set.id().to_owned(),
                name: set.name().to_owned(),
                area: set.area().to_owned(),
                description: set.description().to_owned(),
                builtin: false,
                write: set.is_write(),
                scopes: names(&self.catalog, set.scope_set()),
                effective_scopes: names(&self.catalog, self.catalog.closure(set.scope_set())),
                members: count(set.id()),
            });
        }
        Ok(out)
    }

    /// One group.
    ///
    /// # Errors
    /// [`AppError::NotFound`].
    pub async fn show_group(&self, org: &Org, group_id: &str) -> Result<GroupView, AppError> {
        self.group(group_id)?;
        self.list_groups(org)
            .await?
            .into_iter()
            .find(|g| g.id == group_id)
            .ok_or_else(|| AppError::NotFound {
                what: "group",
                id: group_id.to_owned(),
            })
    }

    /// The keys holding a group's permission set (fixed at creation). For
    /// `administrators`, the legacy keys: they hold everything.
    ///
    /// # Errors
    /// [`AppError::NotFound`] for an unknown group.
    pub async fn group_keys(
        &self,
        org: &Org,
        group_id: &str,
        mut filter: KeyFilter,
    ) -> Result<Vec<KeyView>, AppError> {
        self.group(group_id)?;
        if group_id == ADMINISTRATORS {
            filter.legacy = Some(true);
        } else {
            filter.permission_set = Some(group_id.to_owned());
        }
        self.list_keys(org, &filter).await
    }

    /// One page of the organization's audit records, newest first, and the
    /// sequence number to pass as `before_seq` for the next page (`None` on
    /// the last page). `query.limit` is the page size.
    ///
    /// # Errors
    /// Validation of the page size; storage failures.
    pub async fn query_audit(
        &self,
        org: &Org,
        query: &AuditQuery,
    ) -> Result<(Vec<AuditView>, Option<i64>), AppError> {
        if query.limit == 0 || query.limit > MAX_AUDIT_PAGE {
            return Err(AppError::validation(
                "limit",
                format!("must be between 1 and {MAX_AUDIT_PAGE}"),
            ));
        }
        // One more than asked tells whether another page follows.
        let probe = AuditQuery {
            limit: query.limit + 1,
            ..query.clone()
        };
        let mut records = self.store.query_audit(&org.id, &probe).await?;
        let next = if records.len() > query.limit as usize {
            records.truncate(query.limit as usize);
            records.last().map(|r| r.seq)
        } else {
            None
        };
        Ok((records.into_iter().map(AuditView::from).collect(), next))
    }
}

/// For people: `2026-11-23T12:00:00Z by key:key_… — key.created`.
pub fn audit_line(a: &AuditView) -> String {
    let mut line = format!("{}  {:<24} {}", human_time(a.at), a.action, a.actor);
    if let (Some(m), Some(p)) = (&a.method, &a.path) {
        line.push_str(&format!("  {m} {p}"));
    }
    if let Some(s) = a.status {
        line.push_str(&format!("  {s}"));
    }
    line
}
