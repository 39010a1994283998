//! Routes: methods, patterns, specificity, per-user route sets, JSON 404.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::upstream::Upstream;
use crate::support::{TestGateway, client, config_with, get, send};

#[tokio::test]
async fn most_specific_route_wins_and_methods_filter() {
    let exact = Upstream::start("exact").await;
    let param = Upstream::start("param").await;
    let wild = Upstream::start("wild").await;
    let post = Upstream::start("post").await;
    let config = config_with(
        &[
            ("exact", &[exact.addr], ""),
            ("param", &[param.addr], ""),
            ("wild", &[wild.addr], ""),
            ("post", &[post.addr], ""),
        ],
        r#"
[[routes]]
path = "/users/*"
upstream = "wild"
[[routes]]
path = "/users/{id}"
upstream = "param"
methods = ["GET"]
[[routes]]
path = "/users/:id"
upstream = "post"
methods = ["POST"]
[[routes]]
path = "/users/me"
upstream = "exact"
"#,
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    let who = |r: &crate::support::Reply| r.json()["upstream"].as_str().unwrap_or("").to_owned();
    assert_eq!(who(&get(&c, &gw.url("/users/me"), &[]).await), "exact");
    assert_eq!(who(&get(&c, &gw.url("/users/42"), &[]).await), "param");
    assert_eq!(who(&get(&c, &gw.url("/users/42/posts"), &[]).await), "wild");
    assert_eq!(who(&get(&c, &gw.url("/users"), &[]).await), "wild");
    let posted = send(
        &c,
        Request::post(gw.url("/users/42"))
            .body(Full::new(Bytes::from("x")))
            .unwrap(),
    )
    .await;
    assert_eq!(who(&posted), "post");
    // DELETE matches neither method-limited route and falls to the wildcard.
    let deleted = send(
        &c,
        Request::delete(gw.url("/users/42"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(who(&deleted), "wild");
}

#[tokio::test]
async fn no_match_is_a_json_404() {
    let up = Upstream::start("u").await;
    let config = config_with(
        &[("u", &[up.addr], "")],
        "[[routes]]\npath = \"/only\"\nupstream = \"u\"\nmethods = [\"GET\"]\n",
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    let reply = get(&c, &gw.url("/missing?x=1"), &[]).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.headers["content-type"], "application/json");
    let json = reply.json();
    assert_eq!(json["error"], "no_route");
    assert_eq!(json["message"], "no route matches GET /missing");
    let wrong_method = send(
        &c,
        Request::put(gw.url("/only"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(wrong_method.status, 404);
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn per_user_routes_identify_users_from_every_source() {
    let vip = Upstream::start("vip").await;
    let general = Upstream::start("general").await;
    let config = config_with(
        &[("vip", &[vip.addr], ""), ("general", &[general.addr], "")],
        r#"
[[routes]]
path = "/fast"
upstream = "general"
[[routes]]
path = "/fast"
upstream = "vip"
users = ["demo", "127.0.0.1"]
user_id_key = ["header:X-User-ID", "query:uid", "cookie:uid", "form:uid", "jwt:sub", "basic:username"]
[[routes]]
path = "/by-ip"
upstream = "vip"
users = ["127.0.0.1"]
user_id_key = ["ip"]
[[routes]]
path = "/default-key"
upstream = "vip"
users = ["demo"]
"#,
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    let who = |r: crate::support::Reply| r.json()["upstream"].as_str().unwrap_or("").to_owned();
    let jwt = format!(
        "Bearer h.{}.s",
        URL_SAFE_NO_PAD.encode(br#"{"sub":"demo"}"#)
    );
    let basic = format!("Basic {}", STANDARD.encode("demo:secret"));
    for headers in [
        vec![("x-user-id", "demo")],
        vec![("cookie", "a=b; uid=demo")],
        vec![("authorization", jwt.as_str())],
        vec![("authorization", basic.as_str())],
    ] {
        assert_eq!(
            who(get(&c, &gw.url("/fast"), &headers).await),
            "vip",
            "{headers:?}"
        );
    }
    assert_eq!(who(get(&c, &gw.url("/fast?uid=demo"), &[]).await), "vip");
    assert_eq!(
        who(get(&c, &gw.url("/fast"), &[("x-user-id", "mallory")]).await),
        "general"
    );
    assert_eq!(who(get(&c, &gw.url("/fast"), &[]).await), "general");

    // A form post: the user id comes from the body, which still reaches the upstream.
    let form = send(
        &c,
        Request::post(gw.url("/fast"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from("a=1&uid=demo")))
            .unwrap(),
    )
    .await;
    let json = form.json();
    assert_eq!(json["upstream"], "vip");
    assert_eq!(json["body"], "a=1&uid=demo");

    assert_eq!(who(get(&c, &gw.url("/by-ip"), &[]).await), "vip");
    assert_eq!(
        who(get(&c, &gw.url("/default-key"), &[("x-user-id", "demo")]).await),
        "vip"
    );
    assert_eq!(get(&c, &gw.url("/default-key"), &[]).await.status, 404);
}

#[tokio::test]
async fn large_form_posts_pass_every_route_and_are_forwarded_whole() {
    let vip = Upstream::start("vip").await;
    let general = Upstream::start("general").await;
    let config = config_with(
        &[("vip", &[vip.addr], ""), ("general", &[general.addr], "")],
        r#"
[[routes]]
path = "/fast"
upstream = "general"
[[routes]]
path = "/fast"
upstream = "vip"
users = ["demo"]
user_id_key = ["form:uid"]
[[routes]]
path = "/upload/*"
upstream = "general"
"#,
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    let post = |path: &str, body: String| {
        Request::post(gw.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    // About 1 MB, the user id first.
    let big = format!("uid=demo&data={}", "a".repeat(1 << 20));

    // A route that does not key users on the form: the body is not read, whatever its size.
    let reply = send(&c, post("/upload/x", big.clone())).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["upstream"], "general");
    assert_eq!(json["body"].as_str().map(str::len), Some(big.len()));

    // A route that does: the id is found in the first bytes, and the whole body still
    // reaches the upstream (what was read, then the rest).
    let reply = send(&c, post("/fast", big.clone())).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["upstream"], "vip");
    assert_eq!(json["body"].as_str(), Some(big.as_str()));

    // Only the first 64 KiB are looked at: an id after them is not seen.
    let late = format!("data={}&uid=demo", "a".repeat(100 * 1024));
    let reply = send(&c, post("/fast", late.clone())).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["upstream"], "general");
    assert_eq!(json["body"].as_str().map(str::len), Some(late.len()));
}
