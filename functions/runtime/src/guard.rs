//! The abuse controls in front of every route, built once per cold start and shared:
//! the bound on requests in flight, per-user and per-address rate limits
//! ([`RateLimits`]) and the client address they key on, the body limit, and the
//! [`Guard`] that holds them (with the [`Authenticator`]) and puts them in front of a
//! router.

use std::cell::Cell;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request};
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota as GovernorQuota};
use lambda_http::RequestExt as _;
use lambda_http::request::RequestContext;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::extract::BODY_LIMIT_BYTES;
use crate::identity::Authenticator;
use crate::{App, Config};

/// The authenticator, the rate limits and the in-flight bound of one process (or one
/// Lambda instance). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Guard(Arc<GuardInner>);

#[derive(Debug)]
struct GuardInner {
    auth: Authenticator,
    limits: RateLimits,
    in_flight: Semaphore,
    max_in_flight: usize,
    in_flight_wait: std::time::Duration,
}

impl Guard {
    /// Builds the guard from a configuration that [`Config::from_lookup`] validated.
    pub fn new(config: &Config) -> Self {
        let auth = Authenticator::new(&config.auth)
            .expect("the configuration was validated when it was read");
        Self(Arc::new(GuardInner {
            auth,
            limits: RateLimits::new(&config.limits),
            in_flight: Semaphore::new(config.limits.max_in_flight),
            max_in_flight: config.limits.max_in_flight,
            in_flight_wait: config.limits.in_flight_wait,
        }))
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.0.auth
    }

    /// Requests handled right now (read when the metrics are scraped, never counted per
    /// request: the bound's own permits already say it).
    pub fn in_flight(&self) -> usize {
        self.0.max_in_flight - self.0.in_flight.available_permits()
    }

    pub fn limits(&self) -> &RateLimits {
        &self.0.limits
    }

    /// Puts in front of `router`, outermost first: the bound on requests in flight (503
    /// `overloaded` after waiting `IN_FLIGHT_WAIT_MS` for a slot), the per-address rate
    /// limit (429) and the body limit (413): what each Lambda function puts in front of
    /// its own router. The first two are one middleware ([`Guard::admit`]): axum clones
    /// every layer of a route for every request. The local process calls
    /// [`Guard::admit`] from its front service instead, around the whole router, with no
    /// layer per route. Handlers get the guard from their router's state ([`HasGuard`]),
    /// not from a layer.
    pub fn protect(&self, router: Router) -> Router {
        router
            .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
            .layer(middleware::from_fn_with_state(self.clone(), admit))
    }
}

/// The guard as a middleware, for [`Guard::protect`].
async fn admit(
    axum::extract::State(guard): axum::extract::State<Guard>,
    request: Request,
    next: Next,
) -> Response {
    guard.admit(request, |request| next.run(request)).await
}

impl Guard {
    /// The bound on requests in flight (503 `overloaded` after waiting
    /// `IN_FLIGHT_WAIT_MS` for a slot), then the per-address rate limit (429); a request
    /// that passes both is answered by `run`, holding its slot until it is.
    pub async fn admit<F>(&self, request: Request, run: impl FnOnce(Request) -> F) -> Response
    where
        F: Future<Output = Response>,
    {
        let inner = &self.0;
        let permit = match inner.in_flight.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                match tokio::time::timeout(inner.in_flight_wait, inner.in_flight.acquire()).await {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        crate::metrics::shed();
                        return ApiError::Overloaded(
                            "too many requests in flight; nothing was done, retry shortly".into(),
                        )
                        .into_response();
                    }
                }
            }
        };
        let (parts, body) = request.into_parts();
        if let Err(refused) = inner.limits.check_address(&parts) {
            crate::metrics::rate_limited("address");
            return refused.into_response();
        }
        let response = run(Request::from_parts(parts, body)).await;
        drop(permit);
        response
    }
}

/// A router state that holds the [`Guard`], so its handlers can take a [`Caller`]. The
/// guard comes from the state rather than from a request extension: no layer on every
/// route, nothing cloned per request.
pub trait HasGuard {
    fn guard(&self) -> &Guard;
}

/// The state of a function's routes: the wired application and the guard, behind one
/// reference count (axum clones the state for every request, and `POST /reserve` is the
/// route a crowd hammers).
#[derive(Clone, Debug)]
pub struct AppState(Arc<(App, Guard)>);

impl AppState {
    pub fn new(app: App, guard: Guard) -> Self {
        Self(Arc::new((app, guard)))
    }

    pub fn app(&self) -> &App {
        &self.0.0
    }
}

impl HasGuard for AppState {
    fn guard(&self) -> &Guard {
        &self.0.1
    }
}

/// The client's address: the TCP peer (when the host serves with `ConnectInfo`), the
/// source IP API Gateway saw (on Lambda), or, only when `trust_forwarded_for` is set
/// because a proxy of ours appends it, the last `X-Forwarded-For` entry.
pub fn client_address(parts: &Parts, trust_forwarded_for: bool) -> Option<IpAddr> {
    if trust_forwarded_for
        && let Some(ip) = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
    {
        return Some(ip);
    }
    if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        return Some(peer.ip());
    }
    let source = match parts.extensions.request_context_ref()? {
        RequestContext::ApiGatewayV2(ctx) => ctx.http.source_ip.as_deref(),
        RequestContext::ApiGatewayV1(ctx) => ctx.identity.source_ip.as_deref(),
        #[allow(unreachable_patterns)]
        _ => None,
    };
    source.and_then(|ip| ip.parse().ok())
}

/// The bucket a client address draws from: an IPv4 address on its own; an IPv6 address
/// by its /64, the smallest block a site is normally given, so a client rotating
/// through the addresses of its own network still meets one limit.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(network.into())
        }
    }
}

/// Token buckets per user and per client address (`governor`, in this process only: on
/// Lambda each instance keeps its own, so API Gateway's throttling is the real bound
/// there; see docs/security.md). A check is a hash lookup and an atomic update.
pub struct RateLimits {
    per_user: Option<DefaultKeyedRateLimiter<i64>>,
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    limit_loopback: bool,
    trust_forwarded_for: bool,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("per_user", &self.per_user.is_some())
            .field("per_address", &self.per_address.is_some())
            .finish_non_exhaustive()
    }
}

/// Every this many checks on a thread, buckets that are full again are dropped, so the
/// maps hold only recently active keys.
const FORGET_EVERY: u64 = 1 << 16;

thread_local! {
    /// Checks made on this thread. Counted per thread, not in the limits: one counter for
    /// the process would be a cache line every core writes on every request. Over all
    /// threads, the maps are still pruned about once every [`FORGET_EVERY`] checks.
    static CHECKS: Cell<u64> = const { Cell::new(0) };
}

fn governor_quota(q: crate::config::Quota) -> Option<GovernorQuota> {
    let rate = NonZeroU32::new(q.per_sec)?;
    let burst = NonZeroU32::new(q.burst)?;
    Some(GovernorQuota::per_second(rate).allow_burst(burst))
}

impl RateLimits {
    pub fn new(config: &crate::config::LimitsConfig) -> Self {
        Self {
            per_user: config
                .per_user
                .and_then(governor_quota)
                .map(governor::RateLimiter::dashmap),
            per_address: config
                .per_address
                .and_then(governor_quota)
                .map(governor::RateLimiter::dashmap),
            limit_loopback: config.limit_loopback,
            trust_forwarded_for: config.trust_forwarded_for,
            clock: DefaultClock::default(),
        }
    }

    fn refused(&self, wait: Duration, who: &str) -> ApiError {
        let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError::TooManyRequests {
            message: format!("too many requests from this {who}; retry after {retry_after} s"),
            retry_after: retry_after.max(1),
        }
    }

    fn tick(&self) {
        let checks = CHECKS.with(|c| {
            let n = c.get().wrapping_add(1);
            c.set(n);
            n
        });
        if checks.is_multiple_of(FORGET_EVERY) {
            if let Some(l) = &self.per_user {
                l.retain_recent();
            }
            if let Some(l) = &self.per_address {
                l.retain_recent();
            }
        }
    }

    /// Takes one request from `user`'s bucket, or answers 429.
    pub fn check_user(&self, user: flash_sale_core::UserId) -> Result<(), ApiError> {
        let Some(limiter) = &self.per_user else {
            return Ok(());
        };
        self.tick();
        limiter.check_key(&user.get()).map_err(|not_until| {
            crate::metrics::rate_limited("user");
            self.refused(not_until.wait_time_from(self.clock.now()), "user")
        })
    }

    /// Takes one request from the client address's bucket, or answers 429. Requests
    /// whose address is unknown, or loopback (unless `RATE_LIMIT_LOOPBACK`), pass.
    pub fn check_address(&self, parts: &Parts) -> Result<(), ApiError> {
        let Some(limiter) = &self.per_address else {
            return Ok(());
        };
        let Some(ip) = client_address(parts, self.trust_forwarded_for) else {
            return Ok(());
        };
        // A listener on `[::]` sees IPv4 clients as IPv4-mapped IPv6 addresses
        // (`::ffff:203.0.113.9`): each is its IPv4 address, not one /64 shared by all.
        let ip = ip.to_canonical();
        if ip.is_loopback() && !self.limit_loopback {
            return Ok(());
        }
        self.tick();
        limiter.check_key(&address_key(ip)).map_err(|not_until| {
            self.refused(not_until.wait_time_from(self.clock.now()), "address")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LimitsConfig, Quota};
    use axum::http::{StatusCode, header};
    use flash_sale_core::UserId;

    fn limits(user: Option<Quota>, address: Option<Quota>) -> RateLimits {
        RateLimits::new(&LimitsConfig {
            per_user: user,
            per_address: address,
            limit_loopback: false,
            trust_forwarded_for: true,
            max_in_flight: 10,
            in_flight_wait: Duration::from_millis(10),
        })
    }

    fn parts(forwarded: &str) -> Parts {
        let req = axum::http::Request::builder()
            .header("x-forwarded-for", forwarded)
            .body(())
            .unwrap();
        req.into_parts().0
    }

    #[test]
    fn ipv4_clients_of_a_listener_on_all_ipv6_addresses_keep_a_bucket_each() {
        let l = limits(
            None,
            Some(Quota {
                per_sec: 1,
                burst: 1,
            }),
        );
        let peer = |addr: &str| {
            let mut parts = axum::http::Request::builder()
                .body(())
                .unwrap()
                .into_parts()
                .0;
            let addr: SocketAddr = addr.parse().unwrap();
            parts.extensions.insert(ConnectInfo(addr));
            parts
        };
        l.check_address(&peer("[::ffff:203.0.113.9]:40000"))
            .unwrap();
        assert!(
            l.check_address(&peer("[::ffff:203.0.113.9]:40001"))
                .is_err(),
            "the same client, over its burst"
        );
        l.check_address(&peer("[::ffff:203.0.113.10]:40000"))
            .expect("another IPv4 client has its own bucket");
        l.check_address(&peer("203.0.113.11:40000"))
            .expect("and so has one on an IPv4 listener");
        for _ in 0..3 {
            l.check_address(&peer("[::ffff:127.0.0.1]:40000"))
                .expect("loopback, mapped or not, is exempt by default");
        }
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64_not_by_each_address() {
        let l = limits(
            None,
            Some(Quota {
                per_sec: 1,
                burst: 2,
            }),
        );
        l.check_address(&parts("2001:db8:1:2::1")).unwrap();
        l.check_address(&parts("2001:db8:1:2:ffff:ffff:ffff:fffe"))
            .unwrap();
        assert!(
            l.check_address(&parts("2001:db8:1:2:dead:beef::7"))
                .is_err(),
            "a third address of the same /64 meets the same bucket"
        );
        l.check_address(&parts("2001:db8:1:3::1"))
            .expect("the next /64 is another client");
        // IPv4 clients keep a bucket per address.
        l.check_address(&parts("198.51.100.1")).unwrap();
        l.check_address(&parts("198.51.100.2")).unwrap();
    }

    #[test]
    fn a_user_over_the_burst_gets_a_429_with_retry_after() {
        let l = limits(
            Some(Quota {
                per_sec: 1,
                burst: 3,
            }),
            None,
        );
        let u = UserId::new(7).unwrap();
        for _ in 0..3 {
            l.check_user(u).unwrap();
        }
        let refused = l.check_user(u).unwrap_err();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let response = refused.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        // Another user has a bucket of their own.
        l.check_user(UserId::new(8).unwrap()).unwrap();
    }

    #[test]
    fn addresses_are_limited_but_loopback_is_exempt_by_default() {
        let l = limits(
            None,
            Some(Quota {
                per_sec: 1,
                burst: 1,
            }),
        );
        l.check_address(&parts("203.0.113.9")).unwrap();
        assert!(l.check_address(&parts("203.0.113.9")).is_err());
        assert!(l.check_address(&parts("10.0.0.1, 203.0.113.10")).is_ok());
        for _ in 0..10 {
            l.check_address(&parts("127.0.0.1")).unwrap();
        }
    }

    #[tokio::test]
    async fn requests_over_the_in_flight_bound_get_a_503_after_waiting() {
        use tower::ServiceExt as _;
        let config = Config::from_lookup(|k| match k {
            "MAX_IN_FLIGHT" => Some("1".into()),
            "IN_FLIGHT_WAIT_MS" => Some("20".into()),
            _ => None,
        })
        .unwrap();
        let guard = Guard::new(&config);
        let gate = Arc::new(tokio::sync::Notify::new());
        let held = gate.clone();
        let router = guard.protect(Router::new().route(
            "/",
            axum::routing::get(move || {
                let held = held.clone();
                async move { held.notified().await }
            }),
        ));
        let request = || {
            axum::http::Request::get("/")
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let first = tokio::spawn(router.clone().oneshot(request()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = router.clone().oneshot(request()).await.unwrap();
        assert_eq!(second.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(second.headers()[header::RETRY_AFTER], "1");
        gate.notify_one();
        assert_eq!(
            first.await.unwrap().unwrap().status(),
            axum::http::StatusCode::OK
        );
        // The slot is free again.
        let third = tokio::spawn(router.oneshot(request()));
        tokio::time::sleep(Duration::from_millis(5)).await;
        gate.notify_one();
        assert_eq!(
            third.await.unwrap().unwrap().status(),
            axum::http::StatusCode::OK
        );
    }
}
