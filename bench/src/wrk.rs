//! The wrk round: a second load generator, in C, for the scenarios that are mostly
//! rejections (`seed-7000`, `repeat`, `million`). The stub, the nginx ceiling and
//! flash-sale each get a fresh showtime of 100 seats and `wrk -t1 -c<concurrency>
//! --latency` sends `POST /reserve` with a fresh user per request: 100 holds, then
//! `sold_out` for the rest of the run. The three run twice, alternating (stub, nginx,
//! flash-sale, stub, nginx, flash-sale), and each keeps its better run: the machine is
//! shared and noisy, and a slow moment should not be pinned on one target.
//!
//! It runs after flash-sale's phases, on the server they used; the stub and nginx are
//! started again for it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::ceilings;
use crate::client::Endpoint;
use crate::plan::{Plan, Scenario};
use crate::procs::{self, Nginx, Server};
use crate::report::{WrkRound, WrkRow, WrkRun};
use crate::run::{RunSettings, create_showtimes};

/// The seats of each wrk run's showtime.
const SEATS: u32 = 100;
/// The first user of the wrk round: far above any plan's users.
const FIRST_USER: u64 = 2_000_000_000;
/// Users apart between two targets, and (half of it) between a target's two runs.
const USERS_PER_TARGET: u64 = 40_000_000;
/// Each target runs this many times, alternating.
const RUNS: usize = 2;

/// Whether a scenario gets the wrk round.
pub(crate) fn applies(scenario: Scenario) -> bool {
    matches!(
        scenario,
        Scenario::Seed7000 | Scenario::Repeat | Scenario::Million
    )
}

/// The wrk round against the stub, the nginx ceiling (when nginx is installed) and
/// flash-sale at `flash_sale` (nginx's output going to `nginx_log`). `Ok(None)` with a note in `notes` when wrk is not
/// installed.
pub(crate) async fn round(
    flash_sale: &Endpoint,
    plan: &Plan,
    concurrency: usize,
    settings: &RunSettings,
    nginx_log: PathBuf,
    notes: &mut Vec<String>,
) -> anyhow::Result<Option<WrkRound>> {
    let args = &settings.args;
    let Some(wrk) = procs::find_program("wrk") else {
        notes.push("wrk is not on PATH: no wrk round".into());
        return Ok(None);
    };
    let stub = Server::start_stub().await?;
    let dir = ceilings::nginx_dir();
    let nginx = match procs::nginx_bin(args.nginx.as_deref()) {
        Some(bin) => Some(Nginx::start_ceiling(&bin, &dir, nginx_log).await),
        None => {
            notes.push("nginx is not installed: the wrk round has no nginx row".into());
            None
        }
    }
    .transpose();
    let result = match nginx {
        Ok(nginx) => {
            let mut targets = vec![("stub", stub.endpoint.clone())];
            if let Some(n) = &nginx {
                targets.push(("nginx", n.endpoint.clone()));
            }
            targets.push(("flash-sale", flash_sale.clone()));
            let r = drive(&wrk, &targets, plan, concurrency, args.wrk_secs).await;
            if let Some(n) = nginx {
                n.stop().await;
            }
            r
        }
        Err(e) => Err(e),
    };
    stub.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    let rows = result?;
    Ok(Some(WrkRound::new(concurrency, args.wrk_secs, rows)))
}

/// Runs every target `RUNS` times, alternating; each target's better run.
async fn drive(
    wrk: &Path,
    targets: &[(&'static str, Endpoint)],
    plan: &Plan,
    concurrency: usize,
    secs: u64,
) -> anyhow::Result<Vec<WrkRow>> {
    let seats = Plan {
        capacities: vec![SEATS],
        ..plan.clone()
    };
    let mut runs: Vec<Vec<WrkRun>> = vec![Vec::new(); targets.len()];
    for n in 0..RUNS {
        for (i, (name, endpoint)) in targets.iter().enumerate() {
            let showtime = create_showtimes(endpoint, &seats, &format!("wrk {name} #{n}"))
                .await
                .with_context(|| format!("a showtime for wrk on {name}"))?[0];
            let first_user =
                FIRST_USER + i as u64 * USERS_PER_TARGET + n as u64 * USERS_PER_TARGET / 2;
            let r = run_wrk(wrk, endpoint, showtime, first_user, concurrency, secs)
                .await
                .with_context(|| format!("wrk on {name}"))?;
            eprintln!(
                "   wrk {name} ({}/{RUNS}): {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, {} of {} answers not 2xx",
                n + 1,
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.non_2xx,
                r.requests
            );
            runs[i].push(r);
        }
    }
    Ok(targets
        .iter()
        .zip(runs)
        .map(|((name, _), runs)| {
            let rps_of_runs = runs.iter().map(|r| r.rps).collect();
            let best = runs
                .into_iter()
                .max_by(|a, b| a.rps.total_cmp(&b.rps))
                .expect("RUNS > 0");
            WrkRow {
                target: name.to_string(),
                best,
                rps_of_runs,
            }
        })
        .collect())
}

/// The Lua script: `POST /reserve` on `showtime`, user `first_user + 1` onwards, one a
/// request (one thread: one Lua state, one counter).
fn script(showtime: i64, first_user: u64) -> String {
    format!(
        r#"local user = {first_user}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  user = user + 1
  return wrk.format(nil, "/reserve", nil, '{{"user_id":' .. string.format("%.0f", user) .. ',"showtime_id":{showtime}}}')
end
"#
    )
}

/// One wrk run of `secs` seconds.
async fn run_wrk(
    wrk: &Path,
    endpoint: &Endpoint,
    showtime: i64,
    first_user: u64,
    concurrency: usize,
    secs: u64,
) -> anyhow::Result<WrkRun> {
    let file = std::env::temp_dir().join(format!(
        "flash-sale-bench-wrk-{:08x}.lua",
        rand::random::<u32>()
    ));
    std::fs::write(&file, script(showtime, first_user))?;
    let out = tokio::time::timeout(
        Duration::from_secs(secs + 60),
        tokio::process::Command::new(wrk)
            .arg("-t1")
            .arg(format!("-c{concurrency}"))
            .arg(format!("-d{secs}s"))
            .args(["--timeout", "10s", "--latency", "-s"])
            .arg(&file)
            .arg(format!("http://{}/", endpoint.host))
            .kill_on_drop(true)
            .output(),
    )
    .await;
    let _ = std::fs::remove_file(&file);
    let out = out.map_err(|_| anyhow::anyhow!("wrk did not finish"))??;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk exited with {}: {}{}",
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

/// `480.00us`, `1.23ms`, `2.00s`, `1.00m` in milliseconds.
fn millis(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        _ => return None,
    })
}

/// wrk's report: requests/s, the 50% and 99% lines of `--latency`, the requests, the
/// answers that were not 2xx or 3xx, and the socket errors.
fn parse(text: &str) -> anyhow::Result<WrkRun> {
    let mut rps = None;
    let (mut p50, mut p99, mut requests) = (None, None, None);
    let (mut non_2xx, mut socket_errors) = (0, 0);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => rps = v.parse().ok(),
            ["50%", v] => p50 = millis(v),
            ["99%", v] => p99 = millis(v),
            [n, "requests", "in", ..] => requests = n.parse().ok(),
            _ => {}
        }
        if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = n.trim().parse()?;
        }
        if let Some(errors) = line.strip_prefix("Socket errors:") {
            socket_errors = errors
                .split(',')
                .filter_map(|e| e.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        }
    }
    match (rps, p50, p99, requests) {
        (Some(rps), Some(p50_ms), Some(p99_ms), Some(requests)) => Ok(WrkRun {
            rps,
            p50_ms,
            p99_ms,
            requests,
            non_2xx,
            socket_errors,
        }),
        _ => bail!("no Requests/sec, 50%, 99% or requests line"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "Running 3s test @ http://127.0.0.1:40001/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   501.23us  100.00us   5.00ms   90.00%
    Req/Sec    80.00k     2.00k   85.00k    70.00%
  Latency Distribution
     50%  480.00us
     75%  520.00us
     90%  600.00us
     99%    1.20ms
  240000 requests in 3.00s, 40.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 239900
Requests/sec:  80000.50
Transfer/sec:     13.33MB
";

    #[test]
    fn wrk_output_is_read() {
        assert_eq!(
            parse(OUTPUT).unwrap(),
            WrkRun {
                rps: 80000.5,
                p50_ms: 0.48,
                p99_ms: 1.2,
                requests: 240_000,
                non_2xx: 239_900,
                socket_errors: 5,
            }
        );
        assert!(parse("Running 3s test\n").is_err());
    }

    #[test]
    fn latencies_are_read_in_milliseconds() {
        assert_eq!(millis("250.00us"), Some(0.25));
        assert_eq!(millis("3.5ms"), Some(3.5));
        assert_eq!(millis("1.50s"), Some(1500.0));
        assert_eq!(millis("2.00m"), Some(120_000.0));
        assert_eq!(millis("12"), None);
    }

    #[test]
    fn the_script_sends_a_fresh_user_each_time() {
        let s = script(7, 2_000_000_000);
        assert!(s.contains("local user = 2000000000"), "{s}");
        assert!(s.contains(r#""/reserve""#), "{s}");
        assert!(s.contains(r#"',"showtime_id":7}'"#), "{s}");
        assert!(s.contains("application/json"), "{s}");
    }
}
