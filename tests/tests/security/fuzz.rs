//! The slow tier of fuzzing: with `FUZZ_SECONDS=<n>` (and nightly plus `cargo install
//! cargo-fuzz`), runs each cargo-fuzz target in `fuzz/` for `n` seconds. Without it this
//! test says so and passes: the same inputs run under proptest in every test run.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn each_fuzz_target_runs_clean_for_a_bounded_time() {
    let Some(seconds) = std::env::var("FUZZ_SECONDS").ok() else {
        eprintln!("skipped: set FUZZ_SECONDS=<n> to run each fuzz target for n seconds");
        return;
    };
    let seconds: u64 = seconds
        .parse()
        .expect("FUZZ_SECONDS is a number of seconds");
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for target in ["request_bodies", "tokens", "rabbitmq_events"] {
        let corpus = std::env::temp_dir().join(format!("flash-sale-fuzz-{target}"));
        std::fs::create_dir_all(&corpus).unwrap();
        let status = Command::new("cargo")
            .current_dir(&fuzz)
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .arg(fuzz.join("corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect(
                "cargo +nightly fuzz (rustup toolchain install nightly; cargo install cargo-fuzz)",
            );
        assert!(
            status.success(),
            "fuzz target {target} found a crash (see fuzz/artifacts/{target})"
        );
    }
}
