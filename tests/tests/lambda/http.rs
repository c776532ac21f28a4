//! The HTTP functions' contract routes under `cargo lambda watch`, through the router
//! metadata and through their function URLs.

use flash_sale_test_support::watch::{bounded, skipped};
use flash_sale_test_support::{FunctionHarness, Isolation, Options, Watch};
use reqwest::StatusCode;
use serde_json::json;

use crate::{available, create_showtime, reserve, status_in_redis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_function_answers_the_contract_routes_under_watch() {
    if skipped() {
        return;
    }
    let (iso, opts) = (Isolation::new(), Options::default());
    let h = FunctionHarness::connect(iso.clone(), &opts).await;
    let w = Watch::start(&iso, &opts).await;
    bounded("the HTTP routes under watch", async {
        // showtimes: POST /showtimes, GET /showtimes/{id} (the router metadata).
        let showtime = create_showtime(&w, 2).await;
        let capacity: i32 = sqlx::query_scalar("SELECT capacity FROM showtimes WHERE id = $1")
            .bind(showtime)
            .fetch_one(h.adapters.db.pool())
            .await
            .unwrap();
        assert_eq!(capacity, 2, "the showtime is in PostgreSQL");
        assert_eq!(available(&w, showtime).await, 2);

        // reserve: POST /reserve, GET /reservations/{id}.
        let id = reserve(&w, 7, showtime).await;
        assert_eq!(status_in_redis(&h, &id).await.as_deref(), Some("RESERVED"));
        let (status, r) = w.get(&format!("/reservations/{id}")).await;
        assert_eq!(
            (status, r["status"].as_str()),
            (StatusCode::OK, Some("RESERVED")),
            "{r}"
        );
        let (status, r) = w
            .post("/reserve", json!({"user_id": 7, "showtime_id": showtime}))
            .await;
        assert_eq!(
            (status, r["error"].as_str()),
            (StatusCode::CONFLICT, Some("already_ordered")),
            "{r}"
        );
        let (status, r) = w.post("/reserve", json!({"user_id": "seven"})).await;
        assert_eq!(
            (status, r["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request")),
            "{r}"
        );
        assert_eq!(
            available(&w, showtime).await,
            1,
            "a refused request takes no seat"
        );

        // pay: POST /reservations/{id}/pay.
        let (status, p) = w
            .post(&format!("/reservations/{id}/pay"), json!({"user_id": 7}))
            .await;
        assert_eq!(
            (status, p["status"].as_str()),
            (StatusCode::OK, Some("PAID")),
            "{p}"
        );
        assert_eq!(status_in_redis(&h, &id).await.as_deref(), Some("PAID"));

        // The same functions through their function URLs.
        let (status, r) = w
            .get(&format!("/lambda-url/reserve/reservations/{id}"))
            .await;
        assert_eq!(
            (status, r["status"].as_str()),
            (StatusCode::OK, Some("PAID")),
            "{r}"
        );
        let (status, s) = w
            .get(&format!("/lambda-url/showtimes/showtimes/{showtime}"))
            .await;
        assert_eq!(
            (status, s["capacity"].as_i64()),
            (StatusCode::OK, Some(2)),
            "{s}"
        );
        // queue: a showtime behind a waiting room, joined and polled through the router
        // metadata, then reserved with the admission the queue function signed.
        let (status, room) = w
            .post(
                "/showtimes",
                json!({"capacity": 1, "waiting_room": {"overbook_pct": 0}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{room}");
        let room = room["id"].as_i64().unwrap();
        let (status, joined) = w
            .post(&format!("/showtimes/{room}/queue"), json!({"user_id": 8}))
            .await;
        assert_eq!(
            (status, joined["status"].as_str()),
            (StatusCode::OK, Some("admitted")),
            "{joined}"
        );
        let (status, me) = w
            .get(&format!("/showtimes/{room}/queue/me?user_id=8"))
            .await;
        assert_eq!(
            (status, me["status"].as_str()),
            (StatusCode::OK, Some("admitted")),
            "{me}"
        );
        let (status, refused) = w
            .post("/reserve", json!({"user_id": 8, "showtime_id": room}))
            .await;
        assert_eq!(
            (status, refused["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("not_admitted")),
            "{refused}"
        );
        // The admission is checked by the reserve function, another process: both sign
        // and check with WAITING_ROOM_SECRET.
        let admission = me["admission"].as_str().unwrap();
        let (status, held) = w
            .send_with(
                reqwest::Method::POST,
                "/reserve",
                Some(json!({"user_id": 8, "showtime_id": room})),
                &[("Admission-Token", admission)],
            )
            .await;
        assert_eq!(
            (status, held["status"].as_str()),
            (StatusCode::OK, Some("RESERVED")),
            "{held}"
        );

        // An unknown route inside a function answers the shared JSON shape.
        let (status, e) = w.get("/lambda-url/reserve/no/such/route").await;
        assert_eq!(
            (status, e["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{e}"
        );
    })
    .await;
    drop(w);
    h.cleanup().await;
}
