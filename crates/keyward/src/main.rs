//! The `keyward` binary: flags and environment in, use cases called, text or
//! JSON out. Holds no rules of its own; see `ARCHITECTURE.md`.

mod cli;
mod output;
mod scan;

use clap::Parser;
use cli::{AuditCmd, CatalogCmd, Cli, Command, KeysCmd, OrgsCmd, PolicyCmd, UsersCmd, WebhooksCmd};
use keyward_app::env::{OsRng, SystemClock};
use keyward_app::{Actor, App, AppError, CreateKey, ExplainSubject, parse_legacy_file};
use keyward_core::{Catalog, Digester, Environment, GrantRequest, parse_duration_ms};
use keyward_store::{AnyStore, KeyFilter};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// Exit codes, stable for scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    /// Done.
    Ok = 0,
    /// Refused: invalid input, not found, broken audit chain, invalid catalog.
    Refused = 1,
    /// Storage or system failure.
    Failure = 3,
}

/// An error on its way to the terminal.
struct CliError {
    exit: Exit,
    message: String,
}

impl CliError {
    fn refused(message: impl Into<String>) -> Self {
        CliError {
            exit: Exit::Refused,
            message: message.into(),
        }
    }
}

impl From<AppError> for CliError {
    fn from(e: AppError) -> Self {
        let exit = match e {
            AppError::Store(_) | AppError::Rng(_) => Exit::Failure,
            _ => Exit::Refused,
        };
        CliError {
            exit,
            message: e.to_string(),
        }
    }
}

type Result<T = Exit> = std::result::Result<T, CliError>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYWARD_LOG").unwrap_or_else(|_| {
                // A server's operator wants to see refusals; a CLI user does not.
                let level = if matches!(cli.command, Command::Serve(_)) {
                    "info,sqlx=warn"
                } else {
                    "warn"
                };
                tracing_subscriber::EnvFilter::new(level)
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // On one core the work-stealing scheduler only adds bookkeeping to every
    // wake-up: bench/gateway.sh measured the single-threaded runtime ~4%
    // faster there. With more cores, serve needs them all.
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_core {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(Exit::Failure as u8);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(e) => {
            for line in e.message.lines() {
                eprintln!("error: {line}");
            }
            ExitCode::from(e.exit as u8)
        }
    }
}

fn load_catalog(path: Option<&Path>) -> Result<Catalog> {
    let parsed = match path {
        None => Catalog::fleet(),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                CliError::refused(format!("cannot read catalog `{}`: {e}", p.display()))
            })?;
            Catalog::parse(&p.display().to_string(), &text)
        }
    };
    parsed.map_err(|e| CliError::refused(e.to_string()))
}

fn operator_id() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "operator".into());
    keyward_core::audit::actor::cli(&user)
}

fn digester() -> Digester {
    keyward_app::env::digester_from_env()
}

fn duration(flag: &str, value: &str) -> Result<i64> {
    parse_duration_ms(value).map_err(|e| CliError::refused(format!("--{flag}: {e}")))
}

fn std_duration(flag: &str, value: &str) -> Result<std::time::Duration> {
    let ms = duration(flag, value)?;
    Ok(std::time::Duration::from_millis(ms.unsigned_abs()))
}

/// A short random id for this process: request ids are `<node>-<counter>`.
fn node_id() -> Result<String> {
    keyward_app::env::node_id(&OsRng).map_err(|e| CliError {
        exit: Exit::Failure,
        message: e.to_string(),
    })
}

async fn serve(app: App<AnyStore>, args: cli::ServeArgs, node: String) -> Result {
    let nonzero = |flag: &str, v: &str| -> Result<std::time::Duration> {
        let d = std_duration(flag, v)?;
        if d.is_zero() {
            return Err(CliError::refused(format!(
                "--{flag}: must be greater than zero"
            )));
        }
        Ok(d)
    };
    let upstream = match &args.upstream {
        Some(u) => Some(u.parse::<http::Uri>().map_err(|e| {
            CliError::refused(format!("--upstream `{u}`: {e}; expected http://host:port"))
        })?),
        None => None,
    };
    let config = keyward_server::Config {
        upstream,
        max_body_bytes: args.max_body_bytes,
        max_header_bytes: args.max_header_bytes,
        connect_timeout: nonzero("connect-timeout", &args.connect_timeout)?,
        upstream_timeout: nonzero("upstream-timeout", &args.upstream_timeout)?,
        sync_interval: nonzero("sync-interval", &args.sync_interval)?,
        flush_interval: nonzero("flush-interval", &args.flush_interval)?,
        max_staleness: nonzero("max-staleness", &args.max_staleness)?,
        drain_timeout: std_duration("drain-timeout", &args.drain_timeout)?,
        allow_underscore_headers: args.allow_underscore_headers,
        trusted_proxies: args
            .trusted_proxies
            .iter()
            .map(|n| keyward_core::limits::Network::parse("--trusted-proxy", n))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| CliError::refused(e.to_string()))?,
        limit_exchange_interval: nonzero("limit-exchange-interval", &args.limit_exchange_interval)?,
        usage_retention: nonzero("usage-retention", &args.usage_retention)?,
        policy_interval: nonzero("policy-interval", &args.policy_interval)?,
        webhook_timeout: nonzero("webhook-timeout", &args.webhook_timeout)?,
        allow_private_webhooks: args.allow_private_webhooks,
        github_scanning_keys: args.github_scanning_keys.clone(),
    };
    if config.sync_interval >= config.max_staleness {
        return Err(CliError::refused(format!(
            "--sync-interval ({}) must be shorter than --max-staleness ({}): the node would refuse every request between syncs",
            args.sync_interval, args.max_staleness
        )));
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| CliError::refused(format!("--listen `{}`: {e}", args.listen)))?;
    let addr = listener.local_addr().map_err(|e| CliError {
        exit: Exit::Failure,
        message: e.to_string(),
    })?;
    let catalog_name = app.catalog().name().to_owned();
    let prefix = app.catalog().gateway_prefix().to_owned();
    let upstream = config
        .upstream
        .as_ref()
        .map_or_else(|| "none".to_owned(), ToString::to_string);
    let started = keyward_app::env::Clock::now_ms(&SystemClock);
    let server = keyward_server::Server::start(app, config, node, &mut |n| {
        if n % 100_000 == 0 {
            tracing::info!(keys = n, "loading keys");
        }
    })
    .await
    .map_err(|e| match e {
        keyward_server::ServerError::App(e) => CliError::from(e),
        other => CliError::refused(other.to_string()),
    })?;
    println!(
        "keyward listening on http://{addr} (catalog `{catalog_name}`, gateway prefix `{prefix}`, upstream {upstream}, {} keys loaded in {} ms)",
        server.keys(),
        keyward_app::env::Clock::now_ms(&SystemClock) - started
    );
    use std::io::Write as _;
    std::io::stdout().flush().ok();
    server
        .run(listener, shutdown_signal())
        .await
        .map_err(|e| CliError {
            exit: Exit::Failure,
            message: e.to_string(),
        })?;
    Ok(Exit::Ok)
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

async fn run(cli: Cli) -> Result {
    if let Command::Catalog(CatalogCmd::Check { file }) = &cli.command {
        let catalog = load_catalog(Some(file))?;
        // What `serve` would refuse is not a valid catalog either.
        keyward_server::check_gateway_prefix(catalog.gateway_prefix())
            .map_err(|e| CliError::refused(format!("{}: {e}", file.display())))?;
        let own = catalog.scopes().iter().filter(|s| !s.is_reserved()).count();
        println!(
            "{}: valid catalog `{}`: {own} scopes, {} permission sets, {} presets, {} routes",
            file.display(),
            catalog.name(),
            catalog
                .permission_sets()
                .iter()
                .filter(|s| !s.is_single_scope())
                .count(),
            catalog.presets().len(),
            catalog.routes().len()
        );
        return Ok(Exit::Ok);
    }
    let catalog = Arc::new(load_catalog(cli.catalog.as_deref())?);
    if let Command::Catalog(CatalogCmd::Show { json }) = &cli.command {
        output::catalog(&catalog, *json);
        return Ok(Exit::Ok);
    }
    // A server names itself to the database (`pg_stat_activity` shows which
    // node holds what) and gives every call a deadline; the CLI waits.
    let node = match &cli.command {
        Command::Serve(_) => Some(node_id()?),
        _ => None,
    };
    let opened = match &node {
        Some(n) => keyward_store::open_as(&cli.database, &format!("keyward serve {n}"))
            .await
            .map(|s| s.with_deadline(keyward_server::STORE_DEADLINE)),
        None => keyward_store::open_as(&cli.database, "keyward cli").await,
    };
    let store = opened.map_err(|e| CliError {
        exit: Exit::Failure,
        message: format!(
            "cannot open database `{}`: {e}",
            keyward_store::redact_url(&cli.database)
        ),
    })?;
    let app = App::new(
        store,
        catalog.clone(),
        digester(),
        Arc::new(SystemClock),
        Arc::new(OsRng),
    );
    let actor = Actor::operator(operator_id(), &catalog);
    let (default_org, owner) = app.bootstrap(&actor).await?;
    if let Some(owner) = owner {
        output::first_start(&default_org, &owner);
    }
    if let Command::Migrate = cli.command {
        println!(
            "database is up to date; default organization `{}` ({})",
            default_org.slug, default_org.id
        );
        return Ok(Exit::Ok);
    }
    if let Command::Orgs(cmd) = &cli.command {
        return orgs(&app, &actor, cmd).await;
    }
    if let Command::Scan(args) = &cli.command {
        return scan_paths(&app, &actor, args).await;
    }
    if let Command::Serve(args) = cli.command {
        let node = match node {
            Some(n) => n,
            None => node_id()?,
        };
        return serve(app, args, node).await;
    }
    let org = app.resolve_org(cli.org.as_deref()).await?;
    match cli.command {
        Command::Keys(cmd) => keys(&app, &actor, &org, cmd).await,
        Command::Users(cmd) => users(&app, &actor, &org, cmd).await,
        Command::Policy(cmd) => policy(&app, &actor, &org, cmd).await,
        Command::Webhooks(cmd) => webhooks(&app, &actor, &org, cmd).await,
        Command::Explain(args) => {
            let subject = match args.key_id {
                Some(id) => ExplainSubject::KeyId(id),
                None => ExplainSubject::Scopes(args.scopes),
            };
            let e = app
                .explain(&org, &subject, &args.method, &args.path)
                .await?;
            output::explain(&e, args.json);
            Ok(if e.decision.allowed {
                Exit::Ok
            } else {
                Exit::Refused
            })
        }
        Command::Audit(AuditCmd::Verify { json }) => {
            let progress = output::counter("verifying audit chain");
            let bar = progress.clone();
            let report = app.verify_audit(&mut move |n| bar.set_position(n)).await?;
            progress.finish_and_clear();
            output::chain(&report, json);
            Ok(if report.first_broken.is_none() {
                Exit::Ok
            } else {
                Exit::Refused
            })
        }
        Command::Catalog(_)
        | Command::Migrate
        | Command::Orgs(_)
        | Command::Serve(_)
        | Command::Scan(_) => Ok(Exit::Ok),
    }
}

/// `keyward scan`: walks, looks up, reports; exit 1 when a key was live.
async fn scan_paths(app: &App<AnyStore>, actor: &Actor, args: &cli::ScanArgs) -> Result {
    use keyward_app::leaks::{LeakStatus, OnSighting};
    let progress = output::scan_progress();
    let bar = progress.clone();
    let started = app.now();
    let (sightings, stats) = scan::scan(&args.paths, app.catalog().key_prefix(), &mut |s| {
        bar.set_position(s.files);
        bar.set_message(format!("{:.1} MB", s.bytes as f64 / 1e6));
    });
    let on = if args.revoke {
        OnSighting::Revoke
    } else {
        OnSighting::Report
    };
    let findings = app.handle_sightings(actor, &sightings, on, "scan").await?;
    progress.finish_and_clear();
    let took = u64::try_from(app.now().saturating_sub(started)).unwrap_or(0);
    output::scan(
        &findings,
        &stats,
        std::time::Duration::from_millis(took),
        args.json,
    );
    if findings.iter().any(|f| f.was == LeakStatus::Live) {
        return Ok(Exit::Refused);
    }
    // Not a clean bill: a path that could not be read may hold a key.
    if stats.unreadable > 0 {
        return Err(CliError {
            exit: Exit::Failure,
            message: format!(
                "{} path(s) could not be read (named above): no live key in what was read, but not everything was",
                stats.unreadable
            ),
        });
    }
    Ok(Exit::Ok)
}

async fn orgs(app: &App<AnyStore>, actor: &Actor, cmd: &OrgsCmd) -> Result {
    match cmd {
        OrgsCmd::Create { name, json } => {
            let (org, owner) = app.create_org(actor, name).await?;
            output::org_created(&org, &owner, *json);
        }
        OrgsCmd::List { json } => output::orgs(&app.list_orgs().await?, *json, false),
    }
    Ok(Exit::Ok)
}

async fn policy(
    app: &App<AnyStore>,
    actor: &Actor,
    org: &keyward_store::Org,
    cmd: PolicyCmd,
) -> Result {
    match cmd {
        PolicyCmd::Show { json } => output::policy(&app.show_policy(org).await?, json),
        PolicyCmd::Run { dry_run, json } => {
            output::policy_run(&app.run_policy(org, dry_run).await?, json);
        }
        PolicyCmd::Set {
            max_key_lifetime,
            flag_unused_after,
            revoke_unused_after,
            expiry_warning,
            on_leak,
            json,
        } => {
            // The fields given replace the current ones; `none` clears.
            let now = app.show_policy(org).await?;
            let pick = |given: Option<String>, current: Option<String>| match given.as_deref() {
                None => current,
                Some("none") => None,
                Some(_) => given,
            };
            let on_leak = match on_leak.as_deref() {
                None => now.on_leak,
                Some("revoke") => keyward_core::policy::OnLeak::Revoke,
                Some("flag") => keyward_core::policy::OnLeak::Flag,
                Some(other) => {
                    return Err(CliError::refused(format!(
                        "on_leak: `{other}` is not `revoke` or `flag`"
                    )));
                }
            };
            let text = keyward_core::policy::PolicyText {
                max_key_lifetime: pick(max_key_lifetime, now.max_key_lifetime),
                flag_unused_after: pick(flag_unused_after, now.flag_unused_after),
                revoke_unused_after: pick(revoke_unused_after, now.revoke_unused_after),
                expiry_warning: match expiry_warning.as_slice() {
                    [] => now.expiry_warning,
                    [none] if none == "none" => Vec::new(),
                    _ => expiry_warning,
                },
                on_leak,
            };
            output::policy(&app.set_policy(actor, org, text).await?, json);
        }
    }
    Ok(Exit::Ok)
}

async fn webhooks(
    app: &App<AnyStore>,
    actor: &Actor,
    org: &keyward_store::Org,
    cmd: WebhooksCmd,
) -> Result {
    match cmd {
        WebhooksCmd::Create {
            url,
            events,
            description,
            allow_private,
            json,
        } => {
            let req = keyward_app::webhooks::NewWebhook {
                url,
                events,
                description,
            };
            let created = app.create_webhook(actor, org, req, allow_private).await?;
            output::webhook_created(&created, json);
        }
        WebhooksCmd::List { json } => output::webhooks(&app.list_webhooks(org).await?, json),
        WebhooksCmd::Delete { id, json } => {
            app.delete_webhook(actor, org, &id).await?;
            output::webhook_deleted(&id, json);
        }
        WebhooksCmd::Deliveries {
            id,
            limit,
            before,
            json,
        } => {
            if !(1..=200).contains(&limit) {
                return Err(CliError::refused("--limit: must be 1 to 200"));
            }
            let page = app.webhook_deliveries(org, &id, before, limit).await?;
            output::deliveries(&page, json);
        }
    }
    Ok(Exit::Ok)
}

async fn users(
    app: &App<AnyStore>,
    actor: &Actor,
    org: &keyward_store::Org,
    cmd: UsersCmd,
) -> Result {
    match cmd {
        UsersCmd::Create {
            email,
            name,
            groups,
            json,
        } => {
            let created = app.create_user(actor, org, &email, &name, &groups).await?;
            output::user_with_password(&created, json, "Created user");
        }
        UsersCmd::List { group, json } => {
            output::users(&app.list_users(org, group.as_deref()).await?, json);
        }
        UsersCmd::AddToGroup { user, group, json } => {
            let (user, changed) = app.set_membership(actor, org, &group, &user, true).await?;
            output::membership(&user, &group, true, changed, json);
        }
        UsersCmd::RemoveFromGroup { user, group, json } => {
            let (user, changed) = app.set_membership(actor, org, &group, &user, false).await?;
            output::membership(&user, &group, false, changed, json);
        }
        UsersCmd::ResetPassword { user, json } => {
            let reset = app.reset_password(actor, org, &user).await?;
            output::user_with_password(&reset, json, "New one-time password for");
        }
    }
    Ok(Exit::Ok)
}

async fn keys(
    app: &App<AnyStore>,
    actor: &Actor,
    org: &keyward_store::Org,
    cmd: KeysCmd,
) -> Result {
    match cmd {
        KeysCmd::Create(a) => {
            let environment = Environment::parse(&a.environment)
                .map_err(|e| CliError::refused(format!("--environment: {e}")))?;
            let expires_at = match &a.expires_in {
                Some(d) => Some(app.now().saturating_add(duration("expires-in", d)?)),
                None => None,
            };
            let limits = a
                .limits
                .iter()
                .map(|l| keyward_core::limits::Limit::parse_flag("--limit", l))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| CliError::refused(e.to_string()))?;
            let allowed_cidrs = a
                .allowed_cidrs
                .iter()
                .map(|n| keyward_core::limits::Network::parse("--allow-cidr", n))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| CliError::refused(e.to_string()))?;
            let req = CreateKey {
                name: a.name,
                description: a.description,
                environment: Some(environment),
                grants: GrantRequest {
                    scopes: a.scopes,
                    permission_sets: a.permission_sets,
                    presets: a.presets,
                },
                expires_at,
                acknowledge_broad_access: a.acknowledge_broad_access,
                limits,
                allowed_cidrs,
            };
            let created = app.create_key(actor, org, req).await?;
            output::created(&created, a.json, "Created");
        }
        KeysCmd::List(a) => {
            let now = app.now();
            let mut filter = KeyFilter {
                legacy: a.legacy.then_some(true),
                permission_set: a.permission_set,
                ..KeyFilter::default()
            };
            if let Some(d) = &a.unused_for {
                filter.unused_since = Some(now.saturating_sub(duration("unused-for", d)?));
            }
            if let Some(status) = &a.status {
                keyward_app::filter_status(&mut filter, status, now)
                    .map_err(|e| CliError::refused(format!("--{e}")))?;
            }
            output::key_list(&app.list_keys(org, &filter).await?, a.json);
        }
        KeysCmd::Show { id, json } => {
            let key = app.show_key(org, &id).await?;
            let trail = app.key_audit(org, &id, 20).await?;
            output::key_detail(app.catalog(), &key, &trail, json);
        }
        KeysCmd::Revoke { id, json } => {
            let (key, outcome) = app.revoke_key(actor, org, &id).await?;
            output::revoked(&key, outcome, json);
        }
        KeysCmd::Roll {
            id,
            grace,
            scopes,
            permission_sets,
            json,
        } => {
            let grace_ms = duration("grace", &grace)?;
            let narrower = (!scopes.is_empty() || !permission_sets.is_empty()).then(|| {
                keyward_core::GrantRequest {
                    scopes,
                    permission_sets,
                    presets: Vec::new(),
                }
            });
            let created = app
                .roll_key_narrowing(actor, org, &id, grace_ms, narrower.as_ref())
                .await?;
            output::created(&created, json, "Rolled");
            if !json {
                println!("The old key `{id}` keeps working for {grace}, then expires.");
            }
        }
        KeysCmd::Usage {
            id,
            since,
            granularity,
            json,
        } => {
            let now = app.now();
            let since_ms = keyward_app::usage::point_in_time(&since, now).ok_or_else(|| {
                CliError::refused(format!(
                    "--since `{since}`: neither a duration such as `30d` nor an RFC 3339 time"
                ))
            })?;
            let day = match granularity.as_str() {
                "day" => true,
                "hour" => false,
                other => {
                    return Err(CliError::refused(format!(
                        "--granularity `{other}`: `day` or `hour`"
                    )));
                }
            };
            if since_ms >= now {
                return Err(CliError::refused(format!(
                    "--since `{since}`: must be in the past"
                )));
            }
            let report = app.key_usage(org, &id, since_ms, now, day).await?;
            output::usage(&report, json);
        }
        KeysCmd::Suggest { id, window, json } => {
            let window_ms = duration("window", &window)?;
            let view = app.key_suggestion(org, &id, &window, window_ms).await?;
            output::suggestion(&view, json);
        }
        KeysCmd::ImportLegacy { file, json } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::refused(format!("cannot read `{}`: {e}", file.display())))?;
            let entries = parse_legacy_file(&text).map_err(|errors| {
                let lines: Vec<String> = errors
                    .iter()
                    .map(|e| format!("{}: {e}", file.display()))
                    .collect();
                CliError::refused(format!("{}\nnothing was imported", lines.join("\n")))
            })?;
            let bar = output::bar(entries.len() as u64, "importing legacy keys");
            let b = bar.clone();
            let report = app
                .import_legacy(actor, org, &entries, &mut move |n| b.set_position(n as u64))
                .await?;
            bar.finish_and_clear();
            output::import(&report, json);
        }
    }
    Ok(Exit::Ok)
}
