//! The idempotency keys on Redis: one record per key in its showtime's slot, claimed,
//! recorded and released atomically, each step only by the claim that holds it.

use std::time::Duration;

use flash_sale_adapters::{RedisIdempotency, RedisSeats};
use flash_sale_core::idempotency::{
    Claim, ClaimToken, Fingerprint, IdempotencyKey, IdempotencyStore, KeyScope, KeyedRoute,
    RecordedAnswer,
};
use flash_sale_core::{ShowtimeId, UserId};
use flash_sale_tests::{Isolation, eventually};

fn scope(showtime: i64, user: i64, route: KeyedRoute, key: &str) -> KeyScope {
    KeyScope {
        showtime: ShowtimeId::new(showtime).unwrap(),
        user: UserId::new(user).unwrap(),
        route,
        key: IdempotencyKey::parse(key.as_bytes()).unwrap(),
    }
}

fn fp(s: &str) -> Fingerprint {
    Fingerprint(s.into())
}

async fn claimed(
    store: &RedisIdempotency,
    scope: &KeyScope,
    f: &str,
    lease: Duration,
) -> ClaimToken {
    match store.claim(scope, &fp(f), lease).await.unwrap() {
        Claim::Claimed(token) => token,
        other => panic!("expected a claim, got {other:?}"),
    }
}

async fn pttl(seats: &RedisSeats, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut seats.connection())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_key_is_claimed_once_recorded_by_its_claim_and_replayed_then_expires() {
    let iso = Isolation::new();
    let seats = super::seats(&iso).await;
    let store = RedisIdempotency::new(seats.connection(), &iso.prefix);
    let mine = scope(42, 7, KeyedRoute::Reserve, "abc");
    let key = store.key(&mine);
    assert_eq!(key, format!("{}:{{42}}:idem:7:reserve:abc", iso.prefix));

    let token = claimed(&store, &mine, "f1", Duration::from_secs(30)).await;
    assert!(pttl(&seats, &key).await > 20_000);
    assert_eq!(
        store
            .claim(&mine, &fp("f1"), Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::InProgress
    );
    assert_eq!(
        store
            .claim(&mine, &fp("f2"), Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Reused
    );
    // Another user's, route's or showtime's identical key is another key.
    for other in [
        scope(42, 8, KeyedRoute::Reserve, "abc"),
        scope(42, 7, KeyedRoute::Pay, "abc"),
        scope(43, 7, KeyedRoute::Reserve, "abc"),
    ] {
        claimed(&store, &other, "f1", Duration::from_secs(30)).await;
    }

    // Only the claim's token records; the answer is kept, bytes as they were, for the
    // time asked.
    let answer = RecordedAnswer {
        status: 409,
        body: b"{\"error\":\"sold_out\"}\xff\x00".to_vec(),
    };
    let wrong = ClaimToken("someone else".into());
    assert!(
        !store
            .record(&mine, &wrong, &answer, Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(!store.release(&mine, &wrong).await.unwrap());
    assert!(
        store
            .record(&mine, &token, &answer, Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(pttl(&seats, &key).await > 30_000);
    assert_eq!(
        store
            .claim(&mine, &fp("f1"), Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Answered(answer.clone())
    );
    assert_eq!(
        store
            .claim(&mine, &fp("f2"), Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Reused
    );
    // A recorded answer is not released, nor recorded over.
    assert!(!store.release(&mine, &token).await.unwrap());
    assert!(
        !store
            .record(&mine, &token, &answer, Duration::from_millis(1))
            .await
            .unwrap()
    );

    // It expires after the time asked.
    let brief = scope(42, 7, KeyedRoute::Pay, "brief");
    let token = claimed(&store, &brief, "f", Duration::from_secs(30)).await;
    assert!(
        store
            .record(&brief, &token, &answer, Duration::from_millis(200))
            .await
            .unwrap()
    );
    eventually(Duration::from_secs(5), "the answer to expire", || async {
        matches!(
            store
                .claim(&brief, &fp("f"), Duration::from_secs(30))
                .await
                .unwrap(),
            Claim::Claimed(_)
        )
        .then_some(())
    })
    .await;
    super::drop_keys(&seats).await;
}

#[tokio::test]
async fn a_released_claim_or_one_whose_lease_ran_out_is_claimed_again() {
    let iso = Isolation::new();
    let seats = super::seats(&iso).await;
    let store = RedisIdempotency::new(seats.connection(), &iso.prefix);
    let mine = scope(5, 1, KeyedRoute::Pay, "k");

    let token = claimed(&store, &mine, "f", Duration::from_secs(30)).await;
    assert!(store.release(&mine, &token).await.unwrap());
    let token = claimed(&store, &mine, "f", Duration::from_millis(200)).await;

    // The lease runs out: the key is free, and a new claim takes it; the old claim can
    // neither record nor release any more.
    let taken = eventually(Duration::from_secs(5), "the lease to run out", || async {
        match store
            .claim(&mine, &fp("f"), Duration::from_secs(30))
            .await
            .unwrap()
        {
            Claim::Claimed(t) => Some(t),
            _ => None,
        }
    })
    .await;
    assert_ne!(taken, token);
    let answer = RecordedAnswer {
        status: 200,
        body: b"{}".to_vec(),
    };
    assert!(
        !store
            .record(&mine, &token, &answer, Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(!store.release(&mine, &token).await.unwrap());
    assert!(
        store
            .record(&mine, &taken, &answer, Duration::from_secs(60))
            .await
            .unwrap()
    );

    // Claims racing for one key: exactly one wins.
    let race = scope(5, 2, KeyedRoute::Reserve, "race");
    let f = fp("f");
    let claims =
        futures::future::join_all((0..50).map(|_| store.claim(&race, &f, Duration::from_secs(30))))
            .await;
    let won = claims
        .iter()
        .filter(|c| matches!(c, Ok(Claim::Claimed(_))))
        .count();
    assert_eq!(won, 1, "{claims:?}");
    assert!(
        claims
            .iter()
            .all(|c| matches!(c, Ok(Claim::Claimed(_) | Claim::InProgress)))
    );
    super::drop_keys(&seats).await;
}
