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

#[tokio::test]
async fn an_operator_pages_through_a_showtimes_orders_as_json_and_as_csv() {
    let app = TestApp::spawn(Options::mock_payments()).await;
    let showtime = app.create_showtime(5).await;
    for user in 1..=3 {
        app.reserve(user, showtime).await;
    }
    flash_sale_tests::eventually(
        std::time::Duration::from_secs(30),
        "three orders",
        || async { (app.orders(showtime).await == 3).then_some(()) },
    )
    .await;

    let (status, page) = app
        .get(&format!("/showtimes/{showtime}/orders?limit=2"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let orders = page["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 2);
    assert_eq!(orders[0]["showtime_id"], showtime);
    let cursor = page["next_cursor"].as_str().expect("a second page");
    let (_, rest) = app
        .get(&format!(
            "/showtimes/{showtime}/orders?limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(rest["orders"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next_cursor"], Value::Null);
    let mut users: Vec<i64> = orders
        .iter()
        .chain(rest["orders"].as_array().unwrap())
        .map(|o| o["user_id"].as_i64().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, vec![1, 2, 3]);

    let res = app
        .http
        .get(app.url(&format!("/showtimes/{showtime}/orders?limit=2")))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let link = res.headers()["link"].to_str().unwrap().to_string();
    assert!(
        link.contains(&format!("cursor={cursor}")) && link.ends_with("rel=\"next\""),
        "{link}"
    );
    let csv = res.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "number,reservation_id,showtime_id,user_id,paid_at,recorded_at,quantity"
    );
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[1].contains(orders[0]["reservation_id"].as_str().unwrap()));

    assert_error(
        &app.get("/showtimes/999999/orders").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &app.get(&format!("/showtimes/{showtime}/orders?limit=0"))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    app.finish().await;
}

#[tokio::test]
async fn only_admins_read_a_showtimes_orders() {
    let app = TestApp::spawn(Options {
        auth_mode: "jwt",
        ..Options::default()
    })
    .await;
    let showtime = app.create_showtime_as_admin(2).await;
    let path = format!("/showtimes/{showtime}/orders");
    assert_error(
        &app.get_as(&app.token(7), &path).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (status, page) = app.get_as(&app.admin_token(), &path).await;
    assert_eq!(
        (status, page),
        (StatusCode::OK, json!({"orders": [], "next_cursor": null}))
    );
    app.finish().await;
}
