//! `openapi.yaml` kept in sync with the server.
//!
//! Fast, in every run: the spec's operations are exactly the Lambda routing table in
//! the root `Cargo.toml` (`[workspace.metadata.lambda.watch.router]`, the list every
//! deployment routes by); every operation in the spec is served (not the unknown-route
//! 404, not a 405); every other method on a spec path is a 405; every error code the
//! server can answer is in the spec.
//!
//! And schemathesis from PyPI (installed into `target/schemathesis` with pip when it is
//! not on PATH; about a minute, once) generates requests from the spec against a running
//! server in `AUTH_MODE=jwt` and checks every answer's status, headers and body against
//! it: examples, coverage, fuzzing and stateful phases, a fixed seed and 25 examples per
//! operation (a few seconds), bounded to 4 minutes. `SCHEMATHESIS=0` skips it (a machine
//! without Python); `SCHEMATHESIS_EXAMPLES=500 SCHEMATHESIS_SEED=random` for a long run
//! by hand.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use flash_sale_runtime::error::ERROR_CODES;
use flash_sale_tests::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{jwt, showtime};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn spec() -> String {
    std::fs::read_to_string(root().join("openapi.yaml")).expect("openapi.yaml at the root")
}

/// `(METHOD, path)` of every operation under `paths:`.
fn spec_operations(spec: &str) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    let mut in_paths = false;
    let mut path = None;
    for line in spec.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = Some(format!("/{}", p.trim_end_matches(':')));
        } else if let Some(m) = line.strip_prefix("    ")
            && !m.starts_with(' ')
            && let Some(m) = m.strip_suffix(':')
            && ["get", "post", "put", "patch", "delete"].contains(&m)
        {
            ops.insert((
                m.to_uppercase(),
                path.clone().expect("a method under a path"),
            ));
        }
    }
    ops
}

/// `(METHOD, path)` of every route in `[workspace.metadata.lambda.watch.router]`.
fn lambda_routes() -> BTreeSet<(String, String)> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let table = manifest
        .split("[workspace.metadata.lambda.watch.router]")
        .nth(1)
        .expect("the Lambda routing table in Cargo.toml");
    let mut routes = BTreeSet::new();
    for line in table.lines().take_while(|l| !l.starts_with('[')) {
        let Some((path, rest)) = line.split_once(" = ") else {
            continue;
        };
        for method in rest.split("method = \"").skip(1) {
            let method = method.split('"').next().unwrap();
            routes.insert((method.to_string(), path.trim_matches('"').to_string()));
        }
    }
    routes
}

/// The local process's operational routes: on Lambda the platform checks health and
/// metrics leave as log lines, so no function serves them.
const LOCAL_PROCESS_ONLY: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

#[test]
fn the_spec_describes_exactly_the_routes_lambda_routes() {
    let spec = spec_operations(&spec());
    assert!(spec.len() >= 5, "{spec:?}");
    for path in LOCAL_PROCESS_ONLY {
        assert!(
            spec.contains(&("GET".into(), path.into())),
            "{path} in the spec"
        );
    }
    let served_by_functions: BTreeSet<_> = spec
        .into_iter()
        .filter(|(_, path)| !LOCAL_PROCESS_ONLY.contains(&path.as_str()))
        .collect();
    assert_eq!(served_by_functions, lambda_routes());
}

#[test]
fn every_error_code_the_server_answers_is_in_the_spec() {
    let spec = spec();
    for code in ERROR_CODES {
        assert!(
            spec.contains(&format!("- {code}\n")),
            "{code} is not in the Error schema"
        );
    }
}

#[tokio::test]
async fn every_operation_in_the_spec_is_served_and_no_other_method_is() {
    let app = TestApp::spawn(jwt()).await;
    let st = showtime(&app, json!({"capacity": 2})).await;
    let admin = app.admin_token();
    let ops = spec_operations(&spec());
    let paths: BTreeSet<&String> = ops.iter().map(|(_, p)| p).collect();
    for path in paths {
        let id = if path.starts_with("/showtimes/") {
            st.to_string()
        } else {
            format!("{st}-1")
        };
        let concrete = path.replace("{id}", &id);
        for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
            let documented = ops.contains(&(method.to_string(), path.clone()));
            let res = app
                .http
                .request(method.clone(), app.url(&concrete))
                .bearer_auth(&admin)
                .json(&json!({"capacity": 1, "showtime_id": st}))
                .send()
                .await
                .unwrap();
            let status = res.status();
            let body = res.text().await.unwrap();
            if documented {
                assert_ne!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {concrete}"
                );
                assert!(
                    !(status == StatusCode::NOT_FOUND && body.contains("no such route")),
                    "{method} {concrete} is in the spec but not served"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {concrete} is served but not in the spec: {body}"
                );
            }
        }
    }
    // And a path outside the spec is the unknown-route 404.
    let (status, body) = app.get_as(&admin, "/admin").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    app.finish().await;
}

/// The schemathesis CLI, installed into `target/schemathesis` when it is not on PATH.
fn schemathesis() -> Option<PathBuf> {
    if let Ok(found) = which("st") {
        return Some(found);
    }
    let target = root().join("target");
    std::fs::create_dir_all(&target).ok()?;
    // Entered through its python with `-m schemathesis.cli`: a venv's scripts name
    // their interpreter by absolute path, and this one is built aside and renamed into
    // place, so two test runs never share a half-made environment.
    let python = target.join("schemathesis").join("bin").join("python");
    let ready = |python: &PathBuf| {
        std::process::Command::new(python)
            .args(["-c", "import schemathesis.cli"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready(&python) {
        return Some(python);
    }
    let scratch = target.join(format!("schemathesis.{}", std::process::id()));
    let ok = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&scratch)
        .status()
        .is_ok_and(|s| s.success())
        && std::process::Command::new(scratch.join("bin").join("python"))
            .args(["-m", "pip", "install", "--quiet", "schemathesis>=4,<5"])
            .status()
            .is_ok_and(|s| s.success());
    if ok && std::fs::rename(&scratch, target.join("schemathesis")).is_ok() {
        return Some(python);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    // Another run may have got there first.
    ready(&python).then_some(python)
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_answer_that_breaks_the_spec() {
    if std::env::var("SCHEMATHESIS").is_ok_and(|v| v == "0") {
        eprintln!("skipped: SCHEMATHESIS=0");
        return;
    }
    let st = schemathesis().expect(
        "schemathesis could not be installed with pip (python3 -m venv; PyPI); \
         SCHEMATHESIS=0 skips this test",
    );
    let app = TestApp::spawn(jwt()).await;
    showtime(&app, json!({"capacity": 50})).await;
    let examples = std::env::var("SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".into());
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261201".into());
    std::fs::create_dir_all(root().join("target")).unwrap();
    let mut command = tokio::process::Command::new(&st);
    if st.ends_with("python") {
        command.args(["-m", "schemathesis.cli"]);
    }
    command
        .arg("--config-file")
        .arg(root().join("tests/tests/security/schemathesis.toml"))
        .arg("run")
        .arg(root().join("openapi.yaml"))
        .args(["--url", &format!("http://{}", app.addr)])
        .args(["--checks", "all"])
        // Two of them ask what this API does not promise, by design:
        // - use_after_free (ST301): the API's one DELETE, `DELETE /reservations/{id}`,
        //   cancels a hold and keeps it readable as CANCELLED;
        // - ensure_resource_availability (ST302): a showtime created without a
        //   `waiting_room` has no line, so its queue routes answer 404, and the stateful
        //   phase follows the link it infers from POST /showtimes to them.
        // The e2e tests read every created showtime and reservation back.
        .args([
            "--exclude-checks",
            "use_after_free,ensure_resource_availability",
        ])
        .args(["--max-examples", &examples])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", app.admin_token()),
        ])
        .env("NO_COLOR", "1")
        // Its hypothesis database and reports go to target/, not into the source tree.
        .current_dir(root().join("target"))
        .kill_on_drop(true);
    if seed != "random" {
        command.args(["--seed", &seed]);
    }
    let output = tokio::time::timeout(Duration::from_secs(240), command.output())
        .await
        .expect("schemathesis finished within its time bound")
        .expect("schemathesis ran");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    app.finish().await;
}
