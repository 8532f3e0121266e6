//! schemathesis (pinned by `.ci/run`) against the served `/openapi.json`,
//! with an administrator key: no server errors, no response that breaks the
//! document, no request the document forbids accepted. Skips loudly when
//! `KEYWARD_SCHEMATHESIS` does not name the schemathesis executable.

use crate::harness::Kw;
use std::process::Command;

/// Checks run. `positive_data_acceptance` is left out on purpose: some
/// requests the schema cannot rule out are refused by design (every edit of
/// an immutable key is 405 `KEY_IMMUTABLE`; an `expires_at` in the past is
/// 422), and the check would report each as a failure.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,negative_data_rejection,\
missing_required_header,unsupported_method,ignored_auth";

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let Some(st) = std::env::var_os("KEYWARD_SCHEMATHESIS").filter(|p| !p.is_empty()) else {
        crate::harness::loud_skip(
            "schemathesis",
            "KEYWARD_SCHEMATHESIS is not set (.ci/run installs schemathesis and sets it)",
        );
        return;
    };
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let (_, admin) = crate::admin::admin_key(&kw, None, &["--preset", "full-fleet-management"]);
    let server = kw.serve(&[]);
    let out = Command::new(&st)
        .args([
            "run",
            &format!("http://{}/openapi.json", server.addr),
            "--header",
            &format!("Authorization: Bearer {admin}"),
            "--checks",
            CHECKS,
            "--max-examples",
            "40",
            "--seed",
            "20261123",
            "--workers",
            "2",
            "--no-color",
            "--generation-database",
            "none",
        ])
        .current_dir(kw.dir.path())
        .output()
        .expect("run schemathesis");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{text}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    assert!(text.contains("passed"), "{text}");
}
