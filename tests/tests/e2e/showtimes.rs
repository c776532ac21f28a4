//! `GET /showtimes`: showtimes with their seats now, filtered by where their sale
//! stands, a page at a time; buyers see those on sale, admins all.

use flash_sale_tests::{Options, TestApp, assert_error};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn created(app: &TestApp, token: Option<&str>, body: Value) -> i64 {
    let (status, created) = match token {
        Some(t) => app.post_as(t, "/showtimes", body).await,
        None => app.post("/showtimes", body).await,
    };
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["id"].as_i64().unwrap()
}

fn listed(page: &Value) -> Vec<(i64, String)> {
    page["showtimes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_i64().unwrap(),
                s["sale_state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn showtimes_are_listed_by_sale_state_with_live_counts_in_pages() {
    let app = TestApp::spawn(Options::default()).await;
    let on_sale: Vec<i64> = futures::future::join_all((0..3).map(|_| app.create_showtime(4))).await;
    let upcoming = created(
        &app,
        None,
        json!({"capacity": 2, "sale_opens_at": "2099-01-01T00:00:00Z"}),
    )
    .await;
    let ended = created(
        &app,
        None,
        json!({"capacity": 2, "sale_opens_at": "2020-01-01T00:00:00Z", "sale_closes_at": "2020-01-02T00:00:00Z"}),
    )
    .await;
    let mut on_sale = on_sale;
    on_sale.sort();
    app.reserve(7, on_sale[0]).await;

    let (status, page) = app.get("/showtimes").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        listed(&page),
        on_sale
            .iter()
            .map(|id| (*id, "on_sale".to_string()))
            .collect::<Vec<_>>()
    );
    let first = &page["showtimes"][0];
    assert_eq!(
        (
            first["available"].clone(),
            first["held"].clone(),
            first["sold"].clone()
        ),
        (json!(3), json!(1), json!(0)),
        "live counts: {first}"
    );
    assert_eq!(page["next_cursor"], Value::Null);

    let (_, page) = app.get("/showtimes?state=upcoming").await;
    assert_eq!(listed(&page), vec![(upcoming, "upcoming".to_string())]);
    let (_, page) = app.get("/showtimes?state=ended").await;
    assert_eq!(listed(&page), vec![(ended, "ended".to_string())]);

    // All five, two at a time.
    let mut seen = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/showtimes?state=all&limit=2&cursor={c}"),
            None => "/showtimes?state=all&limit=2".to_string(),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(listed(&page).into_iter().map(|(id, _)| id));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut all = on_sale.clone();
    all.extend([upcoming, ended]);
    all.sort();
    assert_eq!(seen, all);

    for query in ["state=soon", "limit=0", "limit=101", "cursor=x", "cursor=0"] {
        assert_error(
            &app.get(&format!("/showtimes?{query}")).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    app.finish().await;
}

#[tokio::test]
async fn buyers_list_the_showtimes_on_sale_and_only_admins_the_others() {
    let app = TestApp::spawn(Options {
        auth_mode: "jwt",
        ..Options::default()
    })
    .await;
    let admin = app.admin_token();
    let open = created(&app, Some(&admin), json!({"capacity": 2})).await;
    let upcoming = created(
        &app,
        Some(&admin),
        json!({"capacity": 2, "sale_opens_at": "2099-01-01T00:00:00Z"}),
    )
    .await;
    let buyer = app.token(7);

    let (status, page) = app.get_as(&buyer, "/showtimes").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(listed(&page), vec![(open, "on_sale".to_string())]);
    for state in ["upcoming", "ended", "all"] {
        assert_error(
            &app.get_as(&buyer, &format!("/showtimes?state={state}"))
                .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    let (_, page) = app.get_as(&admin, "/showtimes?state=upcoming").await;
    assert_eq!(listed(&page), vec![(upcoming, "upcoming".to_string())]);
    assert_error(
        &app.get("/showtimes").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    app.finish().await;
}
