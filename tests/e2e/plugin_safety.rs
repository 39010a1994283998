//! No plugin can hurt the gateway: each misbehaviour a hostile or broken plugin can try
//! (spinning, flooding headers, logs or the key-value store, forbidden statuses and
//! headers, bad paths, oversized stashes, files that are not plugins) fails only its own
//! request, and other routes keep being served. Purpose-built test plugins
//! (plugins/testing/) do the misbehaving.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util_lite::join_all;

use crate::cli::Process;
use crate::support::upstream::Upstream;
use crate::support::wasm::plugin;
use crate::support::{PATIENCE, Reply, TestClient, TestGateway, client, get};

/// Minimal join_all over tokio tasks (no futures crate in the tests).
mod futures_util_lite {
    pub async fn join_all<T: Send + 'static>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            out.push(task.await.expect("task"));
        }
        out
    }
}

/// A gateway with `routes` (each `(path, chain)`, chain = TOML array body, "" for
/// none) over one upstream, `[plugins]` settings and the named plugin files.
async fn gateway(
    up: &Upstream,
    settings: &str,
    routes: &[(&str, &str)],
    files: &[(&str, &str)],
) -> TestGateway {
    let mut config = format!(
        "[plugins]\n{settings}\n[upstreams.u]\ntargets = [{{ url = \"http://{}\" }}]\n",
        up.addr
    );
    for (path, chain) in routes {
        config.push_str(&format!(
            "[[routes]]\npath = \"{path}\"\nupstream = \"u\"\nplugins = [{chain}]\n"
        ));
    }
    let wasm: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(name, krate)| ((*name).to_owned(), plugin(krate)))
        .collect();
    let refs: Vec<(&str, &[u8])> = wasm
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    TestGateway::start_with_plugins(&config, &refs).await
}

fn metric(gw: &TestGateway, line_start: &str) -> u64 {
    // What /metrics shows (the per-plugin breaker gauge is brought up to date there).
    let text = fluxgate_host::admin::render_metrics(&gw.gateway, &gw.gateway.snapshot());
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn plugin_errors(gw: &TestGateway, plugin: &str, kind: &str) -> u64 {
    metric(
        gw,
        &format!("fluxgate_plugin_errors_total{{kind=\"{kind}\",plugin=\"{plugin}\"}}"),
    )
}

fn is_plugin_failure(reply: &Reply) -> bool {
    reply.status == 500 && reply.json()["error"] == "plugin_failed"
}

async fn health(c: &TestClient, gw: &TestGateway) -> serde_json::Value {
    get(c, &gw.url("/api/v1/health"), &[]).await.json()
}

#[tokio::test]
async fn a_spinning_plugin_is_cut_off_and_short_circuited_while_other_routes_are_served() {
    let up = Upstream::start("u").await;
    let gw = gateway(
        &up,
        "timeout_ms = 50\nmax_concurrent_calls = 2\nbreaker = { failures = 3, window_ms = 10000, open_ms = 60000 }",
        &[
            ("/spin/*", "\"spin\""),
            ("/benign/*", "\"tagger\""),
            ("/plain/*", ""),
        ],
        &[("spin", "spin"), ("tagger", "tagger_a")],
    )
    .await;
    let c = client();
    // The other routes are used on the same worker all along.
    let others = tokio::spawn({
        let (c, plain, benign) = (c.clone(), gw.url("/plain/x"), gw.url("/benign/x"));
        async move {
            for _ in 0..40 {
                let reply = get(&c, &plain, &[]).await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                let reply = get(&c, &benign, &[]).await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                assert_eq!(reply.headers["x-tagger"], "a");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let started = Instant::now();
    // Waves at the spinning plugin: ten at once (two may run, the rest fail fast),
    // then pairs. After three timeouts its breaker opens and it is not called again.
    for wave in [10, 2, 2, 2, 2, 2] {
        let calls: Vec<_> = (0..wave)
            .map(|i| {
                let (c, url) = (c.clone(), gw.url(&format!("/spin/{i}")));
                tokio::spawn(async move { get(&c, &url, &[]).await.status })
            })
            .collect();
        let statuses = join_all(calls).await;
        assert!(statuses.iter().all(|s| *s == 500), "{statuses:?}");
    }
    others.await.unwrap();
    assert!(started.elapsed() < PATIENCE, "{:?}", started.elapsed());
    // Every spinning call was cut at its budget; at most two ran at once (the others
    // waited for a slot, then gave up); after three failures the breaker stopped
    // calling it at all.
    let timeouts = plugin_errors(&gw, "spin", "timeout");
    let waited = plugin_errors(&gw, "spin", "busy");
    let short_circuited = plugin_errors(&gw, "spin", "circuit_open");
    assert!((3..=10).contains(&timeouts), "{timeouts} timeouts");
    assert_eq!(timeouts + waited + short_circuited, 20);
    assert!(short_circuited >= 4, "{short_circuited} short-circuited");
    let spin = health(&c, &gw).await["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "spin")
        .cloned()
        .unwrap();
    assert_eq!(spin["breaker"], "open", "{spin}");
    assert_eq!(
        metric(&gw, "fluxgate_plugin_breaker_state{plugin=\"spin\"}"),
        2
    );
    // The benign plugin never timed out because of it.
    assert_eq!(plugin_errors(&gw, "tagger", "timeout"), 0);
}

#[tokio::test]
async fn plugin_output_that_breaks_a_rule_fails_only_that_request() {
    let up = Upstream::start("u").await;
    let cases: &[(&str, &str)] = &[
        (
            "/flood-request",
            r#"{ name = "header-flood", config = { n = 100000 } }"#,
        ),
        (
            "/flood-direct",
            r#"{ name = "header-flood", config = { n = 30000, respond = true } }"#,
        ),
        (
            "/flood-response",
            r#"{ name = "header-flood", config = { n = 100000, on = "response" } }"#,
        ),
        ("/s101", r#"{ name = "status", config = { status = 101 } }"#),
        ("/s100", r#"{ name = "status", config = { status = 100 } }"#),
        ("/s103", r#"{ name = "status", config = { status = 103 } }"#),
        ("/s600", r#"{ name = "status", config = { status = 600 } }"#),
        ("/s999", r#"{ name = "status", config = { status = 999 } }"#),
        (
            "/r101",
            r#"{ name = "status", config = { status = 101, on = "response" } }"#,
        ),
        (
            "/cl",
            r#"{ name = "forbidden-header", config = { name = "content-length", value = "5" } }"#,
        ),
        (
            "/te",
            r#"{ name = "forbidden-header", config = { name = "transfer-encoding", value = "chunked" } }"#,
        ),
        (
            "/conn",
            r#"{ name = "forbidden-header", config = { name = "connection", value = "close" } }"#,
        ),
        (
            "/upgrade",
            r#"{ name = "forbidden-header", config = { name = "upgrade", value = "h2c" } }"#,
        ),
        (
            "/crlf",
            "{ name = \"forbidden-header\", config = { name = \"x-a\", value = \"a\\r\\nx-b: smuggled\" } }",
        ),
        (
            "/nul",
            "{ name = \"forbidden-header\", config = { name = \"x-a\", value = \"a\\u0000b\" } }",
        ),
        (
            "/badname",
            r#"{ name = "forbidden-header", config = { name = "x a", value = "1" } }"#,
        ),
        (
            "/resp-cl",
            r#"{ name = "forbidden-header", config = { name = "content-length", value = "1", on = "response" } }"#,
        ),
        (
            "/climb",
            r#"{ name = "path-edit", config = { path = "/../etc/passwd" } }"#,
        ),
        (
            "/relative",
            r#"{ name = "path-edit", config = { path = "no-slash" } }"#,
        ),
        (
            "/fragment",
            r#"{ name = "path-edit", config = { query = "a#b" } }"#,
        ),
        (
            "/big-stash",
            r#"{ name = "stash", config = { bytes = 5000 } }"#,
        ),
    ];
    let mut routes: Vec<(&str, &str)> = cases.to_vec();
    routes.push(("/ok/*", ""));
    routes.push((
        "/host",
        r#"{ name = "forbidden-header", config = { name = "host", value = "other.example" } }"#,
    ));
    routes.push((
        "/moved",
        r#"{ name = "path-edit", config = { path = "/a/./b/../c", query = "q=1" } }"#,
    ));
    routes.push(("/stash", r#""stash""#));
    // A breaker that stays closed: every case below must reach the plugin.
    let gw = gateway(
        &up,
        "breaker = { failures = 1000 }",
        &routes,
        &[
            ("header-flood", "header_flood"),
            ("status", "status"),
            ("forbidden-header", "forbidden_header"),
            ("path-edit", "path_edit"),
            ("stash", "stash"),
        ],
    )
    .await;
    let c = client();
    for (path, _) in cases {
        let started = Instant::now();
        let reply = get(&c, &gw.url(path), &[]).await;
        assert!(
            is_plugin_failure(&reply),
            "{path}: {} {}",
            reply.status,
            reply.text()
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path} took {:?}",
            started.elapsed()
        );
        // Nothing else is hurt: the next request is served.
        assert_eq!(
            get(&c, &gw.url("/ok/x"), &[]).await.status,
            200,
            "after {path}"
        );
    }
    let invalid: u64 = [
        "header-flood",
        "status",
        "forbidden-header",
        "path-edit",
        "stash",
    ]
    .iter()
    .map(|p| plugin_errors(&gw, p, "invalid_output"))
    .sum();
    assert_eq!(
        invalid,
        cases.len() as u64,
        "{}",
        gw.gateway
            .metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("fluxgate_plugin_errors_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // What the rules allow still works.
    let host = get(&c, &gw.url("/host"), &[]).await;
    assert_eq!(host.status, 200, "{}", host.text());
    let moved = get(&c, &gw.url("/moved"), &[]).await;
    assert_eq!(moved.json()["path"], "/a/c");
    assert_eq!(moved.json()["query"], "q=1");
    let stashed = get(&c, &gw.url("/stash"), &[("x-stash", "carried")]).await;
    assert_eq!(stashed.status, 200, "{}", stashed.text());
    assert_eq!(stashed.headers["x-stashed"], "carried");
}

#[tokio::test]
async fn with_on_error_allow_a_plugin_that_breaks_a_rule_leaves_the_request_untouched() {
    let up = Upstream::start("u").await;
    let gw = gateway(
        &up,
        "on_error = \"allow\"",
        &[("/*", r#"{ name = "header-flood", config = { n = 300 } }"#)],
        &[("header-flood", "header_flood")],
    )
    .await;
    let reply = get(&client(), &gw.url("/x"), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // The plugin set 256 headers before the one that broke the bound: none of its
    // edits reached the upstream.
    let headers = reply.json()["headers"].as_object().unwrap().clone();
    assert!(
        !headers.keys().any(|k| k.starts_with("x-flood")),
        "{:?}",
        headers.keys().collect::<Vec<_>>()
    );
    assert_eq!(plugin_errors(&gw, "header-flood", "invalid_output"), 1);
}

#[tokio::test]
async fn key_value_writes_are_bounded_per_call_and_the_store_in_bytes() {
    let up = Upstream::start("u").await;
    let gw = gateway(
        &up,
        "kv_max_mb = 1",
        &[(
            "/*",
            r#"{ name = "kv-flood", config = { writes = 100, value_bytes = 1000 } }"#,
        )],
        &[("kv-flood", "kv_flood")],
    )
    .await;
    let c = client();
    for _ in 0..40 {
        let reply = get(&c, &gw.url("/x"), &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let json = reply.json();
        assert_eq!(json["ok"], 64, "{json}");
        assert_eq!(json["refused"], 36, "{json}");
    }
    // 40 × 64 KB were written into a 1 MiB store: it evicted, it did not grow.
    let plugins = health(&c, &gw).await["plugins"].clone();
    let bytes = plugins[0]["kv_bytes"].as_u64().unwrap();
    assert!(bytes <= 1 << 20, "{bytes} bytes held");
    assert!(bytes > 100_000, "{bytes} bytes held: the store still works");
}

#[tokio::test]
async fn files_that_are_not_plugins_are_skipped_without_blocking_anything() {
    let up = Upstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let plugin_dir = dir.path().join("plugins.d");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    // A FIFO nobody writes to: reading it would block startup for ever.
    let fifo = plugin_dir.join("fifo.wasm");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::create_dir(plugin_dir.join("folder.wasm")).unwrap();
    // A file over plugins.max_file_mb.
    std::fs::write(plugin_dir.join("huge.wasm"), vec![0u8; 2 << 20]).unwrap();
    std::fs::write(plugin_dir.join("tagger.wasm"), plugin("tagger_a")).unwrap();
    let config = format!(
        "[plugins]\ndir = \"{}\"\nmax_file_mb = 1\n[upstreams.u]\ntargets = [{{ url = \"http://{}\" }}]\n\
         [[routes]]\npath = \"/tagged/*\"\nupstream = \"u\"\nplugins = [\"tagger\"]\n\
         [[routes]]\npath = \"/huge/*\"\nupstream = \"u\"\nplugins = [\"huge\"]\n",
        plugin_dir.display(),
        up.addr
    );
    let started = Instant::now();
    let gw = tokio::time::timeout(PATIENCE, TestGateway::start(&config))
        .await
        .expect("startup is not blocked by the FIFO");
    assert!(started.elapsed() < Duration::from_secs(5));
    let c = client();
    let tagged = get(&c, &gw.url("/tagged/x"), &[]).await;
    assert_eq!(tagged.headers["x-tagger"], "a");
    let huge = get(&c, &gw.url("/huge/x"), &[]).await;
    assert_eq!(huge.status, 503, "{}", huge.text());
    // The watcher is not blocked either: a plugin dropped in now loads.
    std::fs::write(plugin_dir.join("huge.wasm"), plugin("tagger_b")).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = get(&c, &gw.url("/huge/x"), &[]).await;
        if reply.status == 200 {
            assert_eq!(reply.headers["x-tagger"], "b");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watcher never loaded huge.wasm"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gateway process (the real binary, text logs) with plugin files (name, crate) in
/// its folder from the start.
fn gateway_process(
    up: &Upstream,
    settings: &str,
    routes: &[(&str, &str)],
    files: &[(&str, &str)],
) -> (Process, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plugins.d")).unwrap();
    for (name, krate) in files {
        std::fs::write(
            dir.path().join(format!("plugins.d/{name}.wasm")),
            plugin(krate),
        )
        .unwrap();
    }
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[plugins]\n{settings}\n\
         [upstreams.u]\ntargets = [{{ url = \"http://{}\" }}]\n",
        up.addr
    );
    for (path, chain) in routes {
        config.push_str(&format!(
            "[[routes]]\npath = \"{path}\"\nupstream = \"u\"\nplugins = [{chain}]\n"
        ));
    }
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let process = Process::start(&["--config", path.to_str().unwrap()]);
    (process, dir)
}

#[tokio::test]
async fn plugin_logs_are_bounded_escaped_and_counted() {
    let up = Upstream::start("u").await;
    let (mut gw, _dir) = gateway_process(
        &up,
        "",
        &[(
            "/*",
            r#"{ name = "log-flood", config = { lines = 20, bytes = 6000, newline = true } }"#,
        )],
        &[("log-flood", "log_flood")],
    );
    let addr = gw.listening_addr();
    gw.seen_or_wait_for("plugin loaded");
    let reply = get(&client(), &format!("http://{addr}/x"), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // Twenty lines asked for: sixteen written, the rest dropped and counted.
    let mut lines = Vec::new();
    while lines.len() < 16 {
        lines.push(gw.wait_for("log-flood"));
    }
    for line in &lines {
        assert!(line.len() <= 4096 + 300, "a line of {} bytes", line.len());
        assert!(line.contains("\\n"), "the newline is escaped: {line}");
    }
    let metrics = get(&client(), &format!("http://{addr}/metrics"), &[])
        .await
        .text();
    assert!(
        metrics.contains("fluxgate_plugin_log_lines_dropped_total{plugin=\"log-flood\"} 4"),
        "{metrics}"
    );
    let status = tokio::task::spawn_blocking(move || {
        let seen = gw.seen_lines();
        // No message started a line of its own: every line is one of the gateway's,
        // beginning with its timestamp.
        for line in &seen {
            assert!(line.starts_with("20"), "a forged line: {line:?}");
        }
        let extra = seen.iter().filter(|l| l.contains("log-flood")).count();
        assert_eq!(extra, 16 + 1, "16 plugin lines and the load line");
        gw.terminate()
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_v0_1_component_is_refused_by_name_and_the_loaded_version_keeps_serving() {
    let up = Upstream::start("u").await;
    let (mut gw, dir) = gateway_process(&up, "", &[("/*", "\"tag\"")], &[("tag", "tagger_a")]);
    let file = dir.path().join("plugins.d/tag.wasm");
    let addr = gw.listening_addr();
    gw.seen_or_wait_for("plugin loaded");
    let c = client();
    assert_eq!(
        get(&c, &format!("http://{addr}/x"), &[]).await.headers["x-tagger"],
        "a"
    );
    let old = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/e2e/fixtures/tagger-a-v0.1.wasm"
    ))
    .unwrap();
    let tmp = dir.path().join("plugins.d/tag.tmp");
    std::fs::write(&tmp, old).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let line = gw.wait_for("plugin rejected");
    assert!(
        line.contains(
            "built for fluxgate:plugin@0.1.0; this gateway loads 0.2.x: rebuild with fluxgate-sdk 0.2"
        ),
        "{line}"
    );
    assert!(
        line.contains("the previous version keeps serving"),
        "{line}"
    );
    assert_eq!(
        get(&c, &format!("http://{addr}/x"), &[]).await.headers["x-tagger"],
        "a"
    );
    let status = tokio::task::spawn_blocking(move || gw.terminate())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_trap_is_logged_on_one_line_naming_the_plugin_and_the_wasm_error() {
    let up = Upstream::start("u").await;
    let (mut gw, _dir) = gateway_process(&up, "", &[("/*", "\"trap\"")], &[("trap", "trap")]);
    let addr = gw.listening_addr();
    gw.seen_or_wait_for("plugin loaded");
    let reply = get(&client(), &format!("http://{addr}/x"), &[]).await;
    assert_eq!(reply.status, 500);
    let line = gw.wait_for("plugin trapped");
    assert!(
        line.contains("plugin=\"trap\"") || line.contains("plugin=trap"),
        "{line}"
    );
    assert!(line.contains("wasm"), "names the wasm error: {line}");
    let status = tokio::task::spawn_blocking(move || gw.terminate())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_swap_rejected_for_want_of_an_instance_is_retried() {
    let up = Upstream::start("u").await;
    // One instance in all for the plugin: while a spinning call holds it, a new
    // version cannot initialise.
    let gw = gateway(
        &up,
        "timeout_ms = 300\nmax_instances = 1",
        &[("/*", "\"p\"")],
        &[("p", "spin")],
    )
    .await;
    let c = client();
    let url = gw.url("/x");
    let spinning = tokio::spawn({
        let c = c.clone();
        async move { get(&c, &url, &[]).await.status }
    });
    let deadline = Instant::now() + PATIENCE;
    while gw.gateway.metrics.in_flight.get() == 0 {
        assert!(Instant::now() < deadline, "the spinning call never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::write(gw.plugin_dir.join("p.wasm"), plugin("tagger_a")).unwrap();
    assert_eq!(spinning.await.unwrap(), 500, "the spinning call timed out");
    // The swap was refused for want of an instance, then retried once the instance
    // was free, and the new version serves. (The retries back off from 0.5 s; a loaded
    // machine stretches the spin's 300 ms of running time, hence the wait.)
    let deadline = Instant::now() + 3 * PATIENCE;
    loop {
        let reply = get(&c, &gw.url("/x"), &[]).await;
        if reply.headers.get("x-tagger").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the new version never loaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metric(
            &gw,
            "fluxgate_plugin_loads_total{plugin=\"p\",result=\"error\"}"
        ) >= 1
    );
    assert!(up.requests.load(Ordering::SeqCst) >= 1);
}
