//! Console sessions and sign-in rules with a clock the test moves: idle and
//! absolute expiry, throttling per user and per client address, password
//! changes, one-use form nonces. A real SQLite file.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]

use keyward_app::env::{ManualClock, OsRng};
use keyward_app::sessions::{
    MAX_FAILURES_PER_USER, SESSION_IDLE_MS, SESSION_MAX_MS, THROTTLE_WINDOW_MS,
};
use keyward_app::{Actor, App, AppError};
use keyward_core::{Catalog, Digester};
use keyward_store::{AuditQuery, SqliteStore};
use std::sync::Arc;

#[tokio::test]
async fn sessions_expire_throttle_and_change_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let catalog = Arc::new(Catalog::fleet().unwrap());
    let clock = Arc::new(ManualClock::new(1_000_000));
    let app = App::new(
        SqliteStore::connect(&url).await.unwrap(),
        catalog.clone(),
        Digester::sha256(),
        clock.clone(),
        Arc::new(OsRng),
    );
    let operator = Actor::operator("cli:test", &catalog);
    let (org, owner) = app.bootstrap(&operator).await.unwrap();
    let owner = owner.unwrap();

    // The one-time password signs in, and says it must be changed.
    let signed = app
        .sign_in(None, "OWNER", &owner.password, "10.0.0.1", None)
        .await
        .unwrap();
    assert!(signed.session.user.must_change_password);
    let session = app.session(&signed.token).await.unwrap().unwrap();
    assert_eq!(session.user.email, "owner");
    assert!(app.session("not-a-token").await.unwrap().is_none());
    // A new password: long enough, different, current one right.
    let actor = app.user_actor(&session.user, None, None);
    for (current, new, field) in [
        (owner.password.as_str(), "short", "new_password"),
        (
            owner.password.as_str(),
            owner.password.as_str(),
            "new_password",
        ),
        (
            "wrong-current-password",
            "a long new password",
            "current_password",
        ),
    ] {
        match app.change_password(&session, &actor, current, new).await {
            Err(AppError::Validation { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{other:?}"),
        }
    }
    let elsewhere = app
        .sign_in(None, "owner", &owner.password, "10.0.0.7", None)
        .await
        .unwrap();
    app.change_password(&session, &actor, &owner.password, "a long new password")
        .await
        .unwrap();
    // The session that changed it stays; every other one ends.
    assert!(app.session(&signed.token).await.unwrap().is_some());
    assert!(app.session(&elsewhere.token).await.unwrap().is_none());
    assert!(matches!(
        app.sign_in(None, "owner", &owner.password, "10.0.0.1", None)
            .await,
        Err(AppError::SignInFailed)
    ));
    let again = app
        .sign_in(None, "owner", "a long new password", "10.0.0.1", None)
        .await
        .unwrap();
    assert!(!again.session.user.must_change_password);

    // Idle expiry: activity keeps a session alive, silence ends it.
    clock.advance(SESSION_IDLE_MS - 1_000);
    assert!(app.session(&again.token).await.unwrap().is_some());
    clock.advance(SESSION_IDLE_MS - 1_000);
    assert!(
        app.session(&again.token).await.unwrap().is_some(),
        "touched"
    );
    clock.advance(SESSION_IDLE_MS + 1);
    assert!(app.session(&again.token).await.unwrap().is_none(), "idle");
    // Absolute expiry, however active.
    let long = app
        .sign_in(None, "owner", "a long new password", "10.0.0.1", None)
        .await
        .unwrap();
    let mut lived = 0;
    while lived <= SESSION_MAX_MS {
        clock.advance(SESSION_IDLE_MS / 2);
        lived += SESSION_IDLE_MS / 2;
        let alive = app.session(&long.token).await.unwrap().is_some();
        assert_eq!(alive, lived <= SESSION_MAX_MS, "after {lived} ms");
    }
    // Signing out ends the session at once.
    let short = app
        .sign_in(None, "owner", "a long new password", "10.0.0.1", None)
        .await
        .unwrap();
    let s = app.session(&short.token).await.unwrap().unwrap();
    app.sign_out(&s, &actor).await.unwrap();
    assert!(app.session(&short.token).await.unwrap().is_none());

    // Throttling: five failures for a user refuse even the right password,
    // until the window passes; unknown users and other addresses count too.
    for _ in 0..MAX_FAILURES_PER_USER {
        assert!(matches!(
            app.sign_in(None, "owner", "guess", "10.0.0.2", None).await,
            Err(AppError::SignInFailed)
        ));
    }
    assert!(matches!(
        app.sign_in(None, "owner", "a long new password", "10.0.0.3", None)
            .await,
        Err(AppError::Throttled { .. })
    ));
    clock.advance(THROTTLE_WINDOW_MS + 1);
    app.sign_in(None, "owner", "a long new password", "10.0.0.3", None)
        .await
        .unwrap();
    for i in 0..20 {
        let _ = app
            .sign_in(None, &format!("nobody{i}"), "guess", "10.0.0.9", None)
            .await;
    }
    assert!(matches!(
        app.sign_in(None, "owner", "a long new password", "10.0.0.9", None)
            .await,
        Err(AppError::Throttled { .. })
    ));
    // Parallel guesses cannot outrun the limit: of ten at once, five are
    // checked and the rest refused unchecked.
    clock.advance(THROTTLE_WINDOW_MS + 1);
    let guesses = (0..10).map(|_| app.sign_in(None, "owner", "guess", "10.0.1.1", None));
    let outcomes = futures_join_all(guesses).await;
    let checked = outcomes
        .iter()
        .filter(|r| matches!(r, Err(AppError::SignInFailed)))
        .count();
    let throttled = outcomes
        .iter()
        .filter(|r| matches!(r, Err(AppError::Throttled { .. })))
        .count();
    assert_eq!((checked, throttled), (5, 5));
    clock.advance(THROTTLE_WINDOW_MS + 1);
    // Another organization's slug, or an unknown one, is just a failure.
    assert!(matches!(
        app.sign_in(Some("nope"), "owner", "x", "10.0.0.4", None)
            .await,
        Err(AppError::SignInFailed)
    ));

    // Nonces: once each.
    let s = app
        .session(
            &app.sign_in(None, "owner", "a long new password", "10.0.0.5", None)
                .await
                .unwrap()
                .token,
        )
        .await
        .unwrap()
        .unwrap();
    let nonce = app.form_nonce(&s).await.unwrap();
    assert!(app.use_form_nonce(&s, &nonce).await.unwrap());
    assert!(!app.use_form_nonce(&s, &nonce).await.unwrap());

    // Every success, failure and sign-out is in the audit log.
    let count = |action: &'static str| {
        let app = &app;
        let org = &org;
        async move {
            let q = AuditQuery {
                action: Some(action.into()),
                limit: 500,
                ..AuditQuery::default()
            };
            app.query_audit(org, &q).await.unwrap().0.len()
        }
    };
    assert_eq!(count("console.signed_in").await, 7);
    assert_eq!(count("console.signed_out").await, 1);
    assert_eq!(count("user.password_changed").await, 1);
    // The stale password, 5 guesses, 20 unknown users, 5 of 10 parallel
    // guesses: throttled attempts hand their record to the caller to count
    // instead, and an unknown organization has no log to write to.
    assert_eq!(count("console.sign_in_failed").await, 31);
    let report = app.verify_audit(&mut |_| {}).await.unwrap();
    assert!(report.first_broken.is_none());
}

/// Polls every future to completion, concurrently, on the current task.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
