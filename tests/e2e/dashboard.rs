//! The dashboard in a real browser: headless Chromium (Debian's `chromium`) loads
//! `/dashboard` from a running gateway with a registered service, a config route and
//! a plugin, runs its scripts, and the rendered DOM must show their names and states;
//! a screenshot is taken too. The data endpoint's access rules are checked directly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http::Request;
use http_body_util::Full;

use crate::support::upstream::Upstream;
use crate::support::wasm::plugin;
use crate::support::{TestGateway, client, get, send};

fn chromium() -> PathBuf {
    let path = Path::new("/usr/bin/chromium");
    assert!(
        path.exists(),
        "chromium is not installed (scripts/test.sh installs Debian's chromium)"
    );
    path.to_owned()
}

/// Runs headless Chromium on `url` with `extra` arguments (bounded in time), in a
/// fresh profile, without any background network use (this machine has none).
fn run_chromium(url: &str, profile: &Path, extra: &[&str]) -> std::process::Output {
    let mut command = Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--window-size=1400,1900",
            // Scripts run and their fetches complete inside this virtual time.
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url);
    // Bounded: a wedged browser is killed (it is ours) after a minute.
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start chromium");
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    });
    let output = child.wait_with_output().expect("chromium output");
    drop(watchdog);
    output
}

#[tokio::test]
async fn the_dashboard_renders_services_routes_and_plugins_in_a_browser() {
    let up = Upstream::start("users-v1").await;
    let config = format!(
        "[plugins]\ntimeout_ms = 1000\n\
         [upstreams.catalog]\ntargets = [{{ url = \"http://{}\" }}]\nhealth_check = {{ path = \"/health\", interval_ms = 200, timeout_ms = 100 }}\n\
         circuit_breaker = {{ failure_threshold = 5 }}\n\
         [[routes]]\nname = \"catalog-api\"\npath = \"/catalog/*\"\nmethods = [\"GET\"]\nupstream = \"catalog\"\n\
         rate_limit = {{ capacity = 1000, refill_per_s = 1000 }}\n\
         plugins = [{{ name = \"header-rewrite\", config = {{ request = {{ set = {{ x-env = \"prod\" }} }} }} }}]\n",
        up.addr
    );
    let wasm = plugin("header_rewrite");
    let gw = TestGateway::start_with_plugins(&config, &[("header-rewrite", &wasm)]).await;
    let c = client();
    let registration = format!(
        r#"{{"id":"inventory-1","service":"inventory","address":"127.0.0.1","port":{}}}"#,
        up.addr.port()
    );
    let reply = send(
        &c,
        Request::post(gw.url("/api/v1/services/register"))
            .header("content-type", "application/json")
            .body(Full::new(registration.into()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    // Traffic for the charts: a few seconds of requests on both routes.
    for _ in 0..30 {
        assert_eq!(get(&c, &gw.url("/catalog/items"), &[]).await.status, 200);
        assert_eq!(get(&c, &gw.url("/inventory/stock"), &[]).await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The data the page polls.
    let data = get(&c, &gw.url("/api/v1/dashboard"), &[]).await;
    assert_eq!(data.status, 200, "{}", data.text());
    let data = data.json();
    assert!(
        data["history"]["catalog-api"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "{data}"
    );
    assert_eq!(data["plugins"][0]["name"], "header-rewrite");
    assert!(
        data["plugins"][0]["calls"].as_u64().unwrap() >= 30,
        "{data}"
    );
    assert_eq!(data["services"]["inventory"][0]["id"], "inventory-1");
    let route = &data["routes"][0];
    assert_eq!(route["path"], "/catalog/*");
    assert_eq!(route["plugins"][0], "header-rewrite");

    let dir = tempfile::tempdir().unwrap();
    let url = gw.url("/dashboard");
    let dump = {
        let (url, profile) = (url.clone(), dir.path().join("profile-dom"));
        tokio::task::spawn_blocking(move || run_chromium(&url, &profile, &["--dump-dom"]))
            .await
            .unwrap()
    };
    let dom = String::from_utf8_lossy(&dump.stdout).into_owned();
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page's script did not load its data:\n{dom}\n{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    for expected in [
        gw.gateway.node_name.as_str(),
        "catalog-api",
        "/catalog/*",
        "header-rewrite",
        "inventory",
        "inventory-1",
        "/inventory/*",
        "service/inventory",
        "rate_limit 1000/node",
        "state-healthy",
        "state-closed",
    ] {
        assert!(
            dom.contains(expected),
            "{expected:?} is not in the page:\n{dom}"
        );
    }
    assert!(dom.contains("<polyline"), "no chart was drawn:\n{dom}");

    let screenshot = dir.path().join("dashboard.png");
    let shot = {
        let (url, profile, arg) = (
            url.clone(),
            dir.path().join("profile-shot"),
            format!("--screenshot={}", screenshot.display()),
        );
        tokio::task::spawn_blocking(move || run_chromium(&url, &profile, &[&arg]))
            .await
            .unwrap()
    };
    let png = std::fs::read(&screenshot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&shot.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 10_000,
        "an empty-looking screenshot: {} bytes",
        png.len()
    );
    // `FLUXGATE_DASHBOARD_SCREENSHOT=docs/dashboard.png` keeps it (README shows it).
    if let Ok(keep) = std::env::var("FLUXGATE_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&screenshot, keep).unwrap();
    }
}

#[tokio::test]
async fn the_dashboard_page_is_embedded_and_its_data_needs_admin_access() {
    let gw = TestGateway::start("[server]\nadmin_token = \"s3cret\"\n").await;
    let c = client();
    let page = get(&c, &gw.url("/dashboard"), &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    let html = page.text();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from outside"
    );
    for asset in ["/dashboard/app.js", "/dashboard/app.css"] {
        let reply = get(&c, &gw.url(asset), &[]).await;
        assert_eq!(reply.status, 200, "{asset}");
        let text = reply.text();
        assert!(
            !text.contains("//cdn") && !text.contains("https://"),
            "{asset} loads nothing from outside"
        );
    }
    // Loopback needs no token, but a wrong one is refused anywhere.
    assert_eq!(get(&c, &gw.url("/api/v1/dashboard"), &[]).await.status, 200);
    let wrong = get(
        &c,
        &gw.url("/api/v1/dashboard"),
        &[("authorization", "Bearer nope")],
    )
    .await;
    assert_eq!(wrong.status, 403);
    let right = get(
        &c,
        &gw.url("/api/v1/dashboard"),
        &[("authorization", "Bearer s3cret")],
    )
    .await;
    assert_eq!(right.status, 200);
    assert_eq!(right.headers["cache-control"], "no-store");
    // The page's script sends the token as a header and never in a URL.
    let script = get(&c, &gw.url("/dashboard/app.js"), &[]).await.text();
    assert!(script.contains("Authorization") && script.contains("sessionStorage"));
    assert!(!script.contains("?token") && !script.contains("&token"));
    let post = send(
        &c,
        Request::post(gw.url("/api/v1/dashboard"))
            .body(Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(post.status, 405);
}
