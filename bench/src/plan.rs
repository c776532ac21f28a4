//! Scenarios: which showtimes exist, who buys, how often, and what must come out.
//!
//! A plan is a pure function from an attempt index to a (showtime, user) pair, so every
//! target (the HTTP ceiling, the Redis ceiling, flash-sale) gets exactly the same
//! sequence of buyers, and the expected outcome can be computed without running anything.

use clap::ValueEnum;
use serde::Serialize;

/// The named scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Scenario {
    /// The reference's first test: 7,000 distinct users, one showtime, 100 seats.
    #[value(name = "seed-7000")]
    Seed7000,
    /// One user, 20 concurrent requests, 10 seats: 1 reserved, 19 already ordered.
    SeedIdempotent,
    /// 3 showtimes x 50 seats, 1,000 users each, all at once.
    SeedMulti,
    /// 20,000 users trying 5 times each for 1,000 seats.
    Repeat,
    /// 1,000,000 attempts by 200,000 users for 10,000 seats.
    Million,
    /// `million`'s crowd (200,000 buyers for 10,000 seats) through a waiting room, run
    /// beside `million` itself on the same server: each buyer joins the line, polls its
    /// place until it is admitted (then reserves) or told sold out. Long: not in the
    /// default suite.
    MillionQueued,
    /// As many seats as buyers (20,000): every request takes the slow path, and the
    /// bench pays every hold itself.
    AllWin,
    /// 8 showtimes, 2 of them hot (70% of the buyers for 1,000 of the 13,000 seats).
    Mixed,
    /// A cheap run (2 showtimes, 20 seats each, 500 users trying twice) that checks the
    /// invariants, not the speed.
    Smoke,
}

/// How payment happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum PayMode {
    /// The scenario's default: `bench` for all-win, `mock` otherwise.
    Auto,
    /// The bench pays each hold itself right after reserving it (server in manual mode).
    Bench,
    /// The server's mock payer pays every hold after MOCK_PAY_DELAY_MS (server in mock mode).
    Mock,
    /// Nobody pays: holds stay held, no order is written.
    None,
}

/// How users are spread over showtimes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) enum Assign {
    /// User u goes to showtime u mod S.
    RoundRobin,
    /// User u goes to showtime i with probability weights[i] / sum (by a fixed hash).
    Weighted(Vec<u32>),
}

/// What a scenario does, with its sizes resolved.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Plan {
    pub(crate) scenario: Scenario,
    /// Seats of each showtime.
    pub(crate) capacities: Vec<u32>,
    /// Distinct users, numbered 1..=users.
    pub(crate) users: u64,
    /// Attempts of each user.
    pub(crate) attempts: u32,
    pub(crate) assign: Assign,
    pub(crate) pay: PayMode,
}

/// Size overrides from the command line.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overrides {
    pub(crate) users: Option<u64>,
    pub(crate) attempts: Option<u32>,
    pub(crate) capacity: Option<u32>,
    pub(crate) showtimes: Option<usize>,
    pub(crate) hot: Option<usize>,
    pub(crate) hot_capacity: Option<u32>,
    pub(crate) pay: Option<PayMode>,
}

impl Scenario {
    /// The concurrency a scenario uses unless told otherwise.
    pub(crate) fn default_concurrency(self) -> usize {
        match self {
            Scenario::SeedIdempotent => 20,
            Scenario::Smoke => 16,
            _ => 64,
        }
    }
}

impl Plan {
    pub(crate) fn new(scenario: Scenario, o: &Overrides) -> Self {
        // (showtimes, capacity, users, attempts)
        let (showtimes, capacity, users, attempts) = match scenario {
            Scenario::Seed7000 => (1, 100, 7_000, 1),
            Scenario::SeedIdempotent => (1, 10, 1, 20),
            Scenario::SeedMulti => (3, 50, 3_000, 1),
            Scenario::Repeat => (1, 1_000, 20_000, 5),
            Scenario::Million | Scenario::MillionQueued => (1, 10_000, 200_000, 5),
            Scenario::AllWin => (1, 20_000, 20_000, 1),
            Scenario::Mixed => (8, 2_000, 50_000, 2),
            Scenario::Smoke => (2, 20, 500, 2),
        };
        let showtimes = o.showtimes.unwrap_or(showtimes).max(1);
        let capacity = o.capacity.unwrap_or(capacity).max(1);
        let users = o.users.unwrap_or(users).max(1);
        let attempts = o.attempts.unwrap_or(attempts).max(1);
        let pay = match o.pay.unwrap_or(PayMode::Auto) {
            PayMode::Auto if scenario == Scenario::AllWin => PayMode::Bench,
            PayMode::Auto => PayMode::Mock,
            p => p,
        };
        let (capacities, assign) = if scenario == Scenario::Mixed {
            let hot = o.hot.unwrap_or(2).min(showtimes);
            let hot_capacity = o.hot_capacity.unwrap_or(500).max(1);
            let capacities = (0..showtimes)
                .map(|i| if i < hot { hot_capacity } else { capacity })
                .collect();
            // The hot ones share 70% of the buyers, the others the rest (or all of it).
            let cold = showtimes - hot;
            let weights = (0..showtimes)
                .map(|i| match (i < hot, cold) {
                    (true, 0) => 100,
                    (true, _) => (70 * 1000 / hot as u32).max(1),
                    (false, _) => (30 * 1000 / cold as u32).max(1),
                })
                .collect();
            (capacities, Assign::Weighted(weights))
        } else {
            (vec![capacity; showtimes], Assign::RoundRobin)
        };
        Self {
            scenario,
            capacities,
            users,
            attempts,
            assign,
            pay,
        }
    }

    /// Every attempt, in the order they are sent.
    pub(crate) fn total(&self) -> u64 {
        self.users * u64::from(self.attempts)
    }

    /// Attempt i: (showtime index, user id). Users take turns, so the repeated attempts
    /// of one user are spread over the whole run.
    pub(crate) fn job(&self, i: u64) -> (usize, u64) {
        let u = i % self.users;
        (self.showtime_of(u), u + 1)
    }

    fn showtime_of(&self, u: u64) -> usize {
        let n = self.capacities.len();
        match &self.assign {
            Assign::RoundRobin => (u % n as u64) as usize,
            Assign::Weighted(w) => {
                let total: u64 = w.iter().map(|&x| u64::from(x)).sum();
                let mut pick = mix(u) % total;
                for (i, &x) in w.iter().enumerate() {
                    if pick < u64::from(x) {
                        return i;
                    }
                    pick -= u64::from(x);
                }
                n - 1
            }
        }
    }

    /// Distinct users per showtime.
    pub(crate) fn users_per_showtime(&self) -> Vec<u64> {
        let mut per = vec![0u64; self.capacities.len()];
        match &self.assign {
            Assign::RoundRobin => {
                let n = per.len() as u64;
                for (i, p) in per.iter_mut().enumerate() {
                    let i = i as u64;
                    *p = self.users / n + u64::from(i < self.users % n);
                }
            }
            Assign::Weighted(_) => {
                for u in 0..self.users {
                    per[self.showtime_of(u)] += 1;
                }
            }
        }
        per
    }

    /// The buyers with a head start, as bots have: the first `pct`% of the users (at
    /// least one). In the plan's order they press first (attempt i is user i mod users);
    /// through a waiting room they join first and poll fastest.
    pub(crate) fn head_start(&self, pct: f64) -> u64 {
        ((self.users as f64 * pct / 100.0).round() as u64).clamp(1, self.users)
    }

    /// What every showtime must end with: min(capacity, distinct users).
    pub(crate) fn expected_reserved(&self) -> Vec<u64> {
        self.users_per_showtime()
            .iter()
            .zip(&self.capacities)
            .map(|(&u, &c)| u.min(u64::from(c)))
            .collect()
    }

    pub(crate) fn describe(&self) -> String {
        let caps = if self.capacities.iter().all(|&c| c == self.capacities[0]) {
            format!("{} x {} seats", self.capacities.len(), self.capacities[0])
        } else {
            format!("seats {:?}", self.capacities)
        };
        format!(
            "{} showtime(s), {caps}; {} users x {} attempt(s) = {} requests; payment: {:?}",
            self.capacities.len(),
            self.users,
            self.attempts,
            self.total(),
            self.pay
        )
    }
}

/// A fixed 64-bit mix (splitmix64's finaliser): stable across runs and platforms.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn seed_7000_matches_the_reference() {
        let p = Plan::new(Scenario::Seed7000, &Overrides::default());
        assert_eq!(p.total(), 7_000);
        assert_eq!(p.expected_reserved(), vec![100]);
        let users: HashSet<u64> = (0..p.total()).map(|i| p.job(i).1).collect();
        assert_eq!(users.len(), 7_000);
    }

    #[test]
    fn idempotent_is_one_user_twenty_times() {
        let p = Plan::new(Scenario::SeedIdempotent, &Overrides::default());
        assert_eq!(p.total(), 20);
        assert!((0..20).all(|i| p.job(i) == (0, 1)));
        assert_eq!(p.expected_reserved(), vec![1]);
    }

    #[test]
    fn multi_spreads_users_evenly() {
        let p = Plan::new(Scenario::SeedMulti, &Overrides::default());
        assert_eq!(p.users_per_showtime(), vec![1_000, 1_000, 1_000]);
        assert_eq!(p.expected_reserved(), vec![50, 50, 50]);
    }

    #[test]
    fn million_has_the_issue_sizes() {
        let p = Plan::new(Scenario::Million, &Overrides::default());
        assert_eq!(p.total(), 1_000_000);
        assert_eq!(p.users, 200_000);
        assert_eq!(p.expected_reserved(), vec![10_000]);
        // A user's attempts are spread: attempt i and i + users are the same buyer.
        assert_eq!(p.job(5), p.job(5 + 200_000));
    }

    #[test]
    fn million_queued_is_the_million_crowd_and_its_head_start_is_the_first_percent() {
        let p = Plan::new(Scenario::MillionQueued, &Overrides::default());
        let m = Plan::new(Scenario::Million, &Overrides::default());
        assert_eq!(
            (p.users, p.capacities.clone(), p.attempts),
            (m.users, m.capacities.clone(), m.attempts)
        );
        assert_eq!(p.head_start(1.0), 2_000);
        // The head start presses first: the first 2,000 attempts are theirs.
        assert!((0..2_000).all(|i| p.job(i).1 <= 2_000));
        assert_eq!(p.job(2_000).1, 2_001);
        assert_eq!(
            Plan::new(Scenario::Smoke, &Overrides::default()).head_start(0.1),
            1
        );
    }

    #[test]
    fn mixed_has_hot_showtimes_and_a_counted_spread() {
        let p = Plan::new(Scenario::Mixed, &Overrides::default());
        let per = p.users_per_showtime();
        assert_eq!(per.iter().sum::<u64>(), p.users);
        assert!(per[0] > per[7] * 4, "{per:?}");
        // The counted spread agrees with the job function.
        let mut seen = vec![HashSet::new(); per.len()];
        for i in 0..p.total() {
            let (s, u) = p.job(i);
            seen[s].insert(u);
        }
        let counted: Vec<u64> = seen.iter().map(|s| s.len() as u64).collect();
        assert_eq!(counted, per);
    }

    #[test]
    fn overrides_shrink_a_scenario() {
        let o = Overrides {
            users: Some(500),
            capacity: Some(20),
            ..Overrides::default()
        };
        let p = Plan::new(Scenario::Seed7000, &o);
        assert_eq!(p.total(), 500);
        assert_eq!(p.expected_reserved(), vec![20]);
        assert_eq!(p.pay, PayMode::Mock);
        assert_eq!(Plan::new(Scenario::AllWin, &o).pay, PayMode::Bench);
    }
}
