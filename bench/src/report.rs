//! The report: JSON for machines, Markdown for people.

use std::fmt::Write as _;

use serde::Serialize;

use crate::chart::Point;
use crate::load::{Latency, Outcomes, PhaseResult};
use crate::plan::Plan;
use crate::procs::Usage;
use crate::room::{HeadStart, RoomSummary};
use crate::verify::Verification;

/// The machine the run happened on.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub(crate) cores: usize,
    pub(crate) cpu_model: String,
    pub(crate) memory_gib: f64,
    pub(crate) kernel: String,
    /// 1-minute load average when the run started (others may be building).
    pub(crate) load_avg_at_start: f64,
}

impl Machine {
    pub(crate) fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Self {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            memory_gib: mem_kib / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            load_avg_at_start: load_avg(),
        }
    }
}

/// The commit the run was built from, `+dirty` when the work tree had changes.
pub(crate) fn revision() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{rev}+dirty") } else { rev }
        }
        None => "unknown".into(),
    }
}

pub(crate) fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// One phase: one target, one way of driving it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PhaseReport {
    /// `http-ceiling`, `nginx-ceiling`, `redis-ceiling`, `flash-sale`, `flash-sale @ 50%`.
    pub(crate) name: String,
    /// `closed loop, 64 connections` or `open loop, 5000/s, up to 64 connections`.
    pub(crate) mode: String,
    pub(crate) attempts: u64,
    pub(crate) duration_s: f64,
    /// Reserve attempts answered per second.
    pub(crate) attempts_per_s: f64,
    /// Every request (reserve and pay) per second.
    pub(crate) requests_per_s: f64,
    /// Reservations (holds) granted per second.
    pub(crate) reserved_per_s: f64,
    pub(crate) outcomes: Outcomes,
    pub(crate) reserve_latency: Latency,
    /// Seconds from the start until the last hold was granted (the seats lasted).
    pub(crate) selling_s: f64,
    /// Reserve latency of the answers until then (holds are the slow path) and after
    /// (sold out: rejections only).
    pub(crate) latency_while_selling: Option<Latency>,
    pub(crate) latency_after_sold_out: Option<Latency>,
    /// Reserve latency of the attempts sent (due, in open loop) in the second half of the
    /// run: the steady state, once an open-loop backlog from the selling phase is gone.
    pub(crate) latency_second_half: Option<Latency>,
    pub(crate) pay_latency: Option<Latency>,
    pub(crate) usage: Usage,
    pub(crate) verification: Option<Verification>,
    pub(crate) error_examples: Vec<String>,
    pub(crate) load_avg_after: f64,
    pub(crate) series: Vec<Point>,
    /// What the server's own counters say about the phase, where they were read.
    pub(crate) server_counted: Option<crate::server_view::ServerCounted>,
    /// The seats of the buyers with a head start (`million-queued`).
    pub(crate) head_start: Option<HeadStart>,
}

impl PhaseReport {
    pub(crate) fn new(
        name: &str,
        mode: String,
        r: &PhaseResult,
        usage: Usage,
        rate: Option<f64>,
    ) -> Self {
        let secs = r.duration.as_secs_f64().max(1e-6);
        let pays = r.pay_latency.len();
        let mut before = crate::load::histogram();
        let mut after = crate::load::histogram();
        let mut second = crate::load::histogram();
        // Half of the schedule: when the second half of the attempts was due (open loop)
        // or the middle of the run (closed loop).
        let half_us = match rate {
            Some(rate) => r.attempts as f64 / rate / 2.0 * 1e6,
            None => secs / 2.0 * 1e6,
        } as u64;
        for x in r.samples.iter().filter(|x| !x.pay) {
            let latency = u64::from(x.latency_us).max(1);
            let h = if x.end_us <= r.last_win_us {
                &mut before
            } else {
                &mut after
            };
            h.saturating_record(latency);
            if x.end_us.saturating_sub(latency) >= half_us {
                second.saturating_record(latency);
            }
        }
        Self {
            name: name.to_string(),
            mode,
            attempts: r.attempts,
            duration_s: secs,
            attempts_per_s: r.attempts as f64 / secs,
            requests_per_s: (r.attempts + pays) as f64 / secs,
            reserved_per_s: r.outcomes.reserved as f64 / secs,
            outcomes: r.outcomes.clone(),
            reserve_latency: Latency::of(&r.reserve_latency),
            selling_s: r.last_win_us as f64 / 1e6,
            latency_while_selling: (!before.is_empty()).then(|| Latency::of(&before)),
            latency_after_sold_out: (!after.is_empty()).then(|| Latency::of(&after)),
            latency_second_half: (!second.is_empty()).then(|| Latency::of(&second)),
            pay_latency: (pays > 0).then(|| Latency::of(&r.pay_latency)),
            usage,
            verification: None,
            error_examples: r.error_examples.clone(),
            load_avg_after: load_avg(),
            series: crate::chart::series(&r.samples, secs, None),
            server_counted: None,
            head_start: None,
        }
    }
}

/// flash-sale's throughput as a share of each ceiling.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct Ratios {
    pub(crate) vs_http_ceiling: Option<f64>,
    pub(crate) vs_nginx_ceiling: Option<f64>,
    pub(crate) vs_redis_ceiling: Option<f64>,
}

/// One wrk run's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct WrkRun {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) requests: u64,
    /// Answers that were not 2xx or 3xx (the sold-out 409s).
    pub(crate) non_2xx: u64,
    pub(crate) socket_errors: u64,
}

/// One target of the wrk round: its better run of the two.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WrkRow {
    /// `stub`, `nginx`, `flash-sale`.
    pub(crate) target: String,
    #[serde(flatten)]
    pub(crate) best: WrkRun,
    /// Requests/s of every run, in the order they ran.
    pub(crate) rps_of_runs: Vec<f64>,
}

/// The stub, the nginx ceiling and flash-sale driven by wrk (C load generator): a fresh
/// showtime of 100 seats each, a fresh user per request.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WrkRound {
    pub(crate) concurrency: usize,
    pub(crate) secs: u64,
    pub(crate) rows: Vec<WrkRow>,
    /// Requests/s of flash-sale over the stub's, over nginx's, and the stub's over nginx's.
    pub(crate) flash_sale_vs_stub: Option<f64>,
    pub(crate) flash_sale_vs_nginx: Option<f64>,
    pub(crate) stub_vs_nginx: Option<f64>,
}

/// The better run's requests/s of `target` among `rows`.
fn rps_in(rows: &[WrkRow], target: &str) -> Option<f64> {
    rows.iter().find(|r| r.target == target).map(|r| r.best.rps)
}

impl WrkRound {
    pub(crate) fn new(concurrency: usize, secs: u64, rows: Vec<WrkRow>) -> Self {
        let ratio = |a: &str, b: &str| {
            Some(rps_in(&rows, a)? / rps_in(&rows, b)?).filter(|r| r.is_finite())
        };
        Self {
            concurrency,
            secs,
            flash_sale_vs_stub: ratio("flash-sale", "stub"),
            flash_sale_vs_nginx: ratio("flash-sale", "nginx"),
            stub_vs_nginx: ratio("stub", "nginx"),
            rows,
        }
    }

    pub(crate) fn rps(&self, target: &str) -> Option<f64> {
        rps_in(&self.rows, target)
    }

    pub(crate) fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "### wrk (C load generator), 100 seats then sold out, fresh user per request
"
        );
        let _ = writeln!(
            s,
            "`wrk -t1 -c{} -d{}s --latency`, `POST /reserve` on a fresh showtime of 100 seats per run. Each target ran twice, alternating (stub, nginx, flash-sale, stub, ...); the table keeps each target's better run, since the machine is shared and noisy.\n",
            self.concurrency, self.secs
        );
        let _ = writeln!(
            s,
            "| target | requests/s | p50 ms | p99 ms | requests | not 2xx | socket errors | requests/s of each run |\n|---|--:|--:|--:|--:|--:|--:|---|"
        );
        for r in &self.rows {
            let runs: Vec<String> = r.rps_of_runs.iter().map(|x| format!("{x:.0}")).collect();
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} |",
                r.target,
                r.best.rps,
                r.best.p50_ms,
                r.best.p99_ms,
                r.best.requests,
                r.best.non_2xx,
                r.best.socket_errors,
                runs.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "\nflash-sale / stub: **{}**, flash-sale / nginx: **{}**, stub / nginx: **{}**.\n",
            pct(self.flash_sale_vs_stub),
            pct(self.flash_sale_vs_nginx),
            pct(self.stub_vs_nginx)
        );
        s
    }
}

/// A ratio in percent, or `n/a`.
fn pct(r: Option<f64>) -> String {
    r.map(|r| format!("{:.1}%", r * 100.0))
        .unwrap_or_else(|| "n/a".into())
}

/// The reserve script driven by `redis-benchmark` (C client): Redis alone, without the
/// Rust client's cost.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RedisBenchmark {
    pub(crate) requests: u64,
    pub(crate) concurrency: usize,
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

/// A whole run of one scenario.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) plan: Plan,
    pub(crate) plan_text: String,
    pub(crate) command: String,
    pub(crate) revision: String,
    pub(crate) started_at: String,
    pub(crate) machine: Machine,
    pub(crate) concurrency: usize,
    pub(crate) rate: Option<f64>,
    pub(crate) phases: Vec<PhaseReport>,
    pub(crate) ratios: Ratios,
    pub(crate) redis_benchmark: Option<RedisBenchmark>,
    /// The waiting room phase (`million-queued`).
    pub(crate) room: Option<RoomSummary>,
    /// The wrk round (`seed-7000`, `repeat`, `million`).
    pub(crate) wrk: Option<WrkRound>,
    pub(crate) ok: bool,
    pub(crate) notes: Vec<String>,
}

impl Report {
    pub(crate) fn phase(&self, name: &str) -> Option<&PhaseReport> {
        self.phases.iter().find(|p| p.name == name)
    }

    pub(crate) fn compute_ratios(&mut self) {
        let fs = self.phase("flash-sale").map(|p| p.attempts_per_s);
        let of = |name: &str| Some(fs? / self.phase(name)?.attempts_per_s);
        self.ratios = Ratios {
            vs_http_ceiling: of("http-ceiling"),
            vs_nginx_ceiling: of(crate::ceilings::NGINX_CEILING),
            vs_redis_ceiling: of("redis-ceiling"),
        };
        self.ok = self
            .phases
            .iter()
            .all(|p| p.verification.as_ref().is_none_or(|v| v.ok()))
            && self
                .room
                .as_ref()
                .is_none_or(|r| r.probes.iter().all(|c| c.ok));
    }

    pub(crate) fn markdown(&self, chart_file: Option<&str>) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# flash-sale-bench: `{}`\n", self.scenario);
        let _ = writeln!(s, "- plan: {}", self.plan_text);
        let _ = writeln!(s, "- command: `{}`", self.command);
        let _ = writeln!(
            s,
            "- started: {} (revision {})",
            self.started_at, self.revision
        );
        let m = &self.machine;
        let _ = writeln!(
            s,
            "- machine: {} cores ({}), {:.1} GiB, Linux {}, load average {:.2} at start",
            m.cores, m.cpu_model, m.memory_gib, m.kernel, m.load_avg_at_start
        );
        let _ = writeln!(
            s,
            "- verdict: **{}**\n",
            if self.ok {
                "all invariants hold"
            } else {
                "INVARIANT BREACHED"
            }
        );
        let _ = writeln!(
            s,
            "| target | mode | attempts | time s | attempts/s | reserved/s | reserved | sold out | already | rejected | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |"
        );
        let _ = writeln!(
            s,
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
        );
        for p in &self.phases {
            let o = &p.outcomes;
            let l = &p.reserve_latency;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.3} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                p.name,
                p.mode,
                p.attempts,
                p.duration_s,
                p.attempts_per_s,
                p.reserved_per_s,
                o.reserved,
                o.sold_out,
                o.already_ordered,
                o.rejected,
                o.errors,
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.p999_ms,
                l.max_ms
            );
        }
        let _ = writeln!(
            s,
            "\nflash-sale reserve throughput: **{}** of the HTTP ceiling, **{}** of the nginx ceiling, **{}** of the Redis ceiling.\n",
            pct(self.ratios.vs_http_ceiling),
            pct(self.ratios.vs_nginx_ceiling),
            pct(self.ratios.vs_redis_ceiling)
        );
        if let Some(rb) = &self.redis_benchmark {
            let _ = writeln!(
                s,
                "redis-benchmark (C client) running reserve.lua by EVALSHA, {} requests, {} connections: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms.\n",
                rb.requests, rb.concurrency, rb.rps, rb.p50_ms, rb.p99_ms
            );
        }
        if let Some(w) = &self.wrk {
            s.push_str(&w.markdown());
        }
        if let Some(room) = &self.room {
            s.push_str(&room_against_million(self, room));
        }
        for p in &self.phases {
            let _ = writeln!(s, "## {}\n", p.name);
            s.push_str(&phase_details(p));
        }
        for n in &self.notes {
            let _ = writeln!(s, "- note: {n}");
        }
        if let Some(c) = chart_file {
            let _ = writeln!(s, "\n![latency and throughput over time]({c})");
        }
        s
    }
}

/// A phase's details as Markdown lines: latency while seats lasted and after, payments,
/// the server's own counts, CPU and memory, the orders and every invariant checked.
pub(crate) fn phase_details(p: &PhaseReport) -> String {
    let mut s = String::new();
    let lat = |l: &Latency| {
        format!(
            "{} answers, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            l.count, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
        )
    };
    if let Some(l) = &p.latency_while_selling {
        let _ = writeln!(
            s,
            "- while seats lasted (first {:.2} s): {}",
            p.selling_s,
            lat(l)
        );
    }
    if let Some(l) = &p.latency_after_sold_out {
        let _ = writeln!(s, "- after the last hold: {}", lat(l));
    }
    if let Some(l) = &p.latency_second_half {
        let _ = writeln!(
            s,
            "- attempts due in the second half of the run: {}",
            lat(l)
        );
    }
    if let Some(l) = &p.pay_latency {
        let _ = writeln!(
            s,
            "- pay: {} paid, {} failed; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:.0} requests/s in all",
            p.outcomes.paid, p.outcomes.pay_failed, l.p50_ms, l.p99_ms, l.max_ms, p.requests_per_s
        );
    }
    if let Some(c) = &p.server_counted {
        let _ = writeln!(
            s,
            "- the server's own counters (`/metrics`, read {} times): {} reservation answers, {} holds; the client saw {} and {}",
            c.readings, c.answered, c.reserved, p.attempts, p.outcomes.reserved
        );
    }
    let cpu: Vec<String> = p
        .usage
        .cpu_pct
        .iter()
        .filter(|(_, v)| *v >= 0.5)
        .map(|(g, v)| format!("{g} {v:.0}%"))
        .collect();
    let _ = writeln!(
        s,
        "- CPU (100% = one core): {}; machine busy {:.0}%; load average after {:.2}",
        cpu.join(", "),
        p.usage.machine_busy_pct,
        p.load_avg_after
    );
    if let Some(peak) = p.usage.server_rss_peak_mib {
        let _ = writeln!(
            s,
            "- server resident memory: peak {peak:.1} MiB, at the end {:.1} MiB",
            p.usage.server_rss_end_mib.unwrap_or(0.0)
        );
    }
    if let Some(v) = &p.verification {
        match v.orders_landed_after_ms {
            Some(ms) => {
                let _ = writeln!(
                    s,
                    "- every order ({}) in PostgreSQL {ms:.0} ms after the last answer",
                    v.expected_orders
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "- orders: only {} of {} in PostgreSQL by the deadline",
                    v.orders_found, v.expected_orders
                );
            }
        }
        for c in &v.checks {
            let _ = writeln!(
                s,
                "- {} {}: {}",
                if c.ok { "ok" } else { "**BREACH**" },
                c.name,
                c.detail
            );
        }
    }
    for e in &p.error_examples {
        let _ = writeln!(s, "- example: `{e}`");
    }
    let _ = writeln!(s);
    s
}

/// The waiting room phase beside `million`'s open loop at the same rate: the figures of
/// issue 16 as ratios, then the room's own.
fn room_against_million(report: &Report, room: &RoomSummary) -> String {
    let mut s = String::new();
    let base = report.phase(crate::run::HALF_RATE_PHASE);
    let queued = report.phase(crate::run::ROOM_PHASE);
    let _ = writeln!(s, "## The waiting room against `million`\n");
    let _ = writeln!(s, "- {}", room.drive);
    let _ = writeln!(s, "- room settings: `{}`\n", room.settings);
    let _ = writeln!(
        s,
        "| | `million` @ 50% | through the room | room / million |\n|---|--:|--:|--:|"
    );
    let row = |s: &mut String, what: &str, b: Option<f64>, q: Option<f64>, digits: usize| {
        let f = |x: Option<f64>| x.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"));
        let ratio = match (b, q) {
            (Some(b), Some(q)) if b > 0.0 => format!("{:.2}", q / b),
            _ => "-".into(),
        };
        let _ = writeln!(s, "| {what} | {} | {} | {ratio} |", f(b), f(q));
    };
    row(
        &mut s,
        "p99 of every answer, whole run (ms)",
        base.map(|b| b.reserve_latency.p99_ms),
        Some(room.latency_all.p99_ms),
        2,
    );
    row(
        &mut s,
        "p99 while selling (ms)",
        base.and_then(|b| b.latency_while_selling.as_ref().map(|l| l.p99_ms)),
        room.latency_selling.as_ref().map(|l| l.p99_ms),
        2,
    );
    row(
        &mut s,
        "max of every answer (ms)",
        base.map(|b| b.reserve_latency.max_ms),
        Some(room.latency_all.max_ms),
        2,
    );
    row(
        &mut s,
        "opening to sold out (s)",
        base.map(|b| b.selling_s),
        room.sold_out_after_opening_s,
        3,
    );
    row(
        &mut s,
        "requests answered",
        base.map(|b| b.attempts as f64),
        queued.map(|q| q.attempts as f64),
        0,
    );
    let share = |h: Option<&HeadStart>| h.map(|h| h.share * 100.0);
    row(
        &mut s,
        "head start's share of the seats (%)",
        share(base.and_then(|b| b.head_start.as_ref())),
        Some(room.head_start.share * 100.0),
        1,
    );
    let h = &room.head_start;
    let _ = writeln!(
        s,
        "\nThe head start is users 1-{} ({:.1}% of {} buyers): in `million` they press first; through the room they join first and poll fastest. Through the room they held {} of {} seats.",
        h.buyers,
        h.buyers as f64 * 100.0 / room.buyers.max(1) as f64,
        room.buyers,
        h.seats,
        h.of_seats
    );
    for p in report
        .phases
        .iter()
        .filter(|p| p.name != crate::run::ROOM_PHASE)
    {
        if let Some(h) = &p.head_start {
            let _ = writeln!(
                s,
                "In `{}` ({}) they held {} of {} seats ({:.1}%).",
                p.name,
                p.mode,
                h.seats,
                h.of_seats,
                h.share * 100.0
            );
        }
    }
    let lat = |l: &Option<Latency>| {
        l.as_ref().map_or_else(
            || "-".into(),
            |l| {
                format!(
                    "p50 {:.2} / p99 {:.2} / max {:.2} ms",
                    l.p50_ms, l.p99_ms, l.max_ms
                )
            },
        )
    };
    let _ = writeln!(s, "\nThrough the room:\n");
    let _ = writeln!(
        s,
        "- requests: {} joins ({}), {} polls ({}), {} reserves ({}), {} pays ({})",
        room.joins,
        lat(&room.latency_join),
        room.polls,
        lat(&room.latency_poll),
        room.reserves,
        lat(&room.latency_reserve),
        room.pays,
        lat(&room.latency_pay)
    );
    let _ = writeln!(
        s,
        "- the room opened {:.2} s after the first join was due; the first admission was seen {}, the last hold {} after the opening",
        room.opens_after_s,
        room.first_admitted_after_opening_s
            .map_or_else(|| "never".into(), |t| format!("{t:.2} s")),
        room.sold_out_after_opening_s
            .map_or_else(|| "never".into(), |t| format!("{t:.2} s"))
    );
    let _ = writeln!(
        s,
        "- {} admitted (at most {}), {} held, {} told sold_out at /reserve, {} told sold_out by the room, {} other ends; {} answers 429 (rate limited)",
        room.admitted,
        room.admitted_bound,
        room.held,
        room.sold_out_at_reserve,
        room.told_sold_out,
        room.other_ends,
        room.rate_limited
    );
    if let Some(t) = &room.told_sold_out_after_last_hold {
        let _ = writeln!(
            s,
            "- the room told {} buyers sold_out after the last hold: p50 {:.2} s, p99 {:.2} s, last {:.2} s after it",
            t.count, t.p50_s, t.p99_s, t.max_s
        );
    }
    for e in &room.other_examples {
        let _ = writeln!(s, "- other end, e.g. `{e}`");
    }
    for c in &room.probes {
        let _ = writeln!(
            s,
            "- {} {}: {}",
            if c.ok { "ok" } else { "**BREACH**" },
            c.name,
            c.detail
        );
    }
    let _ = writeln!(s);
    s
}
