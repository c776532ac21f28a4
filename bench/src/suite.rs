//! The suite: several scenarios one after the other, and a summary table of them all
//! (`<out>/summary.md`).

use crate::cli::SuiteArgs;
use crate::report::Report;
use crate::run;

/// Runs every scenario of the suite, writes and prints the summary; whether every
/// invariant held.
pub(crate) async fn suite(s: SuiteArgs) -> anyhow::Result<bool> {
    let mut reports = Vec::new();
    for &scenario in &s.scenarios {
        reports.push(run::run(scenario, &s.run).await?);
    }
    let mut md = String::from(
        "| scenario | requests | HTTP ceiling /s | nginx ceiling /s | Redis ceiling /s | flash-sale /s | vs HTTP | vs nginx | vs Redis | wrk /s: stub, nginx, flash-sale | p50 ms | p99 ms | p99.9 ms | max ms | p99 @ 50% (2nd half) ms | errors | orders in PG after | peak RSS MiB | other load, % of a core | invariants |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n",
    );
    for r in &reports {
        md.push_str(&summary_row(r));
    }
    std::fs::write(s.run.out.join("summary.md"), &md)?;
    println!("\n{md}");
    Ok(reports.iter().all(|r| r.ok))
}

/// One row of the summary: a scenario's flash-sale phase next to its ceilings.
fn summary_row(r: &Report) -> String {
    let rate = |n: &str| {
        r.phase(n)
            .map(|p| format!("{:.0}", p.attempts_per_s))
            .unwrap_or_else(|| "-".into())
    };
    let pct = |x: Option<f64>| {
        x.map(|x| format!("{:.0}%", x * 100.0))
            .unwrap_or_else(|| "-".into())
    };
    let Some(fs) = r.phase("flash-sale") else {
        return format!("| {} | - |\n", r.scenario);
    };
    let l = &fs.reserve_latency;
    let landed = fs
        .verification
        .as_ref()
        .and_then(|v| v.orders_landed_after_ms)
        .map(|ms| format!("{ms:.0} ms"))
        .unwrap_or_else(|| "not all".into());
    let half = r
        .phase("flash-sale @ 50%")
        .map(|h| {
            let after = h
                .latency_second_half
                .as_ref()
                .map(|l| l.p99_ms)
                .unwrap_or(0.0);
            format!("{:.2} ({after:.2})", h.reserve_latency.p99_ms)
        })
        .unwrap_or_else(|| "-".into());
    // CPU taken by processes outside the run, least and most over the phases: a wide
    // spread means the phases were not measured under the same conditions.
    let others: Vec<f64> = r
        .phases
        .iter()
        .map(|p| {
            p.usage
                .cpu_pct
                .iter()
                .find(|(g, _)| g == "everything else")
                .map(|(_, v)| *v)
                .unwrap_or(0.0)
        })
        .collect();
    let other = format!(
        "{:.0}-{:.0}",
        others.iter().copied().fold(f64::INFINITY, f64::min),
        others.iter().copied().fold(0.0, f64::max)
    );
    // The wrk round (C load generator): requests/s of each target's better run.
    let wrk = r
        .wrk
        .as_ref()
        .map(|w| {
            ["stub", "nginx", "flash-sale"]
                .map(|t| {
                    w.rps(t)
                        .map(|x| format!("{x:.0}"))
                        .unwrap_or_else(|| "-".into())
                })
                .join(", ")
        })
        .unwrap_or_else(|| "-".into());
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {wrk} | {:.2} | {:.2} | {:.2} | {:.2} | {half} | {} | {} | {} | {other} | {} |\n",
        r.scenario,
        fs.attempts,
        rate("http-ceiling"),
        rate(crate::ceilings::NGINX_CEILING),
        rate("redis-ceiling"),
        rate("flash-sale"),
        pct(r.ratios.vs_http_ceiling),
        pct(r.ratios.vs_nginx_ceiling),
        pct(r.ratios.vs_redis_ceiling),
        l.p50_ms,
        l.p99_ms,
        l.p999_ms,
        l.max_ms,
        fs.outcomes.errors + fs.outcomes.pay_failed,
        landed,
        fs.usage
            .server_rss_peak_mib
            .map(|m| format!("{m:.0}"))
            .unwrap_or_else(|| "-".into()),
        if r.ok { "hold" } else { "BREACHED" }
    )
}
