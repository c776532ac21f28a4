//! The load generator's smoke run, in the default test suite: it starts the real
//! `flash-sale` server, drives a small sale (2 showtimes x 20 seats, 500 buyers x 2
//! attempts, mock payments) through the HTTP API, waits for every order in PostgreSQL
//! and checks every invariant; a breach exits non-zero. Correctness, not speed.

use std::path::PathBuf;
use std::process::Command;

/// The server binary of this build, next to the bench's own: `flash-sale`, or
/// `flash-sale-server`, the same process (`process::run_from_env`) that the tests package
/// builds for its crash tests, which `cargo test --workspace` has just built with the
/// workspace's features. The newer of the two; built if neither is there (when only this
/// package is being tested), which costs a build of the server with this package's
/// features.
fn server_binary() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_flash-sale-bench"));
    let built = ["flash-sale", "flash-sale-server"]
        .into_iter()
        .map(|name| bench.with_file_name(name))
        .filter_map(|path| Some((path.metadata().ok()?.modified().ok()?, path)))
        .max();
    if let Some((_, server)) = built {
        return server;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "flash-sale-local", "--bin", "flash-sale"])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the flash-sale server");
    bench.with_file_name("flash-sale")
}

#[test]
fn the_smoke_sale_keeps_every_invariant() {
    let out = std::env::temp_dir().join(format!("flash-sale-bench-smoke-{}", std::process::id()));
    let result = Command::new(env!("CARGO_BIN_EXE_flash-sale-bench"))
        .arg("smoke")
        .arg("--server-bin")
        .arg(server_binary())
        .arg("--out")
        .arg(&out)
        .output()
        .expect("the bench runs");
    let report = std::fs::read_to_string(out.join("smoke.md")).unwrap_or_default();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("smoke.json")).unwrap_or_default())
            .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        result.status.success(),
        "smoke run failed ({}):\n{}\n{}\n{report}",
        result.status,
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        report.contains("invariants"),
        "the report names its invariant checks:\n{report}"
    );
    // The server's own counters, read while the sale ran, agree with what the client
    // was answered, to the unit.
    let phase = json["phases"]
        .as_array()
        .and_then(|phases| phases.iter().find(|p| p["name"] == "flash-sale"))
        .expect("a flash-sale phase in the report");
    assert_eq!(
        (
            phase["server_counted"]["answered"].as_u64(),
            phase["server_counted"]["reserved"].as_u64()
        ),
        (
            phase["attempts"].as_u64(),
            phase["outcomes"]["reserved"].as_u64()
        ),
        "{report}"
    );
    assert!(
        phase["series"].as_array().is_some_and(|s| s
            .iter()
            .any(|p| p["server_reserved_per_s"].as_f64() > Some(0.0))),
        "the chart's series carry the server's holds over time"
    );
}
