//! Hot reload and graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::upstream::Upstream;
use crate::support::{PATIENCE, TestGateway, client, config_with, get};

fn single_route(up: &Upstream, path: &str) -> String {
    config_with(
        &[("g", &[up.addr], "")],
        &format!("[[routes]]\npath = \"{path}\"\nupstream = \"g\"\n"),
    )
}

#[tokio::test]
async fn an_edit_takes_effect_within_a_second() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&single_route(&up, "/before/*")).await;
    let c = client();
    assert_eq!(get(&c, &gw.url("/before/x"), &[]).await.status, 200);
    std::fs::write(&gw.config_path, single_route(&up, "/after/*")).unwrap();
    let started = tokio::time::Instant::now();
    loop {
        if get(&c, &gw.url("/after/x"), &[]).await.status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "edit not live within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&c, &gw.url("/before/x"), &[]).await.status, 404);
}

#[tokio::test]
async fn a_broken_edit_is_rejected_and_the_old_config_keeps_serving() {
    let up = Upstream::start("u").await;
    let good = single_route(&up, "/ok");
    let gw = TestGateway::start(&good).await;
    let c = client();
    let generation = gw.gateway.snapshot().generation;
    std::fs::write(
        &gw.config_path,
        format!("{good}\n[[routes]]\npath = \"/x\"\nupstream = \"nope\"\n"),
    )
    .unwrap();
    // Wait until the bad edit has been seen (counted as a failed reload).
    let mut seen = false;
    for _ in 0..100 {
        let metrics = get(&c, &gw.url("/metrics"), &[]).await.text();
        if metrics.contains("fluxgate_config_reloads_total{result=\"error\"} 1") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen, "the broken edit was not noticed");
    // Reading the file must not itself count as a change (no re-read loop).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let metrics = get(&c, &gw.url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("fluxgate_config_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    assert_eq!(gw.gateway.snapshot().generation, generation);
    assert_eq!(get(&c, &gw.url("/ok"), &[]).await.status, 200);
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_snapshot_they_started_with() {
    let old = Upstream::start("old").await;
    let new = Upstream::start("new").await;
    let gw = TestGateway::start(&single_route(&old, "/*")).await;
    let c = client();
    let url = gw.url("/slow/600");
    let c2 = c.clone();
    let in_flight = tokio::spawn(async move { get(&c2, &url, &[]).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    gw.reconfigure(&single_route(&new, "/*")).await;
    assert_eq!(
        get(&c, &gw.url("/x"), &[]).await.headers["x-upstream"],
        "new"
    );
    let finished = in_flight.await.unwrap();
    assert_eq!(finished.status, 200);
    assert_eq!(finished.headers["x-upstream"], "old");
}

#[tokio::test]
async fn reloads_under_concurrent_load_fail_no_request() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Arc::new(TestGateway::start(&single_route(&a, "/*")).await);
    let failures = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Requests that started after the load began: from the old config ("a") and the
    // new one ("b"), and answers from "a" after "b" had answered (a switch back).
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (gw, failures, stop) = (gw.clone(), failures.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client();
                let deadline = tokio::time::Instant::now() + PATIENCE;
                let (mut from_a, mut from_b, mut a_after_b) = (0usize, 0usize, 0usize);
                // Until the reload loop has ended (bounded in time).
                while !stop.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
                    let reply = get(&c, &gw.url("/x"), &[]).await;
                    let from = reply
                        .headers
                        .get("x-upstream")
                        .and_then(|v| v.to_str().ok());
                    match (reply.status.as_u16(), from) {
                        (200, Some("a")) => {
                            from_a += 1;
                            a_after_b += usize::from(from_b > 0);
                        }
                        (200, Some("b")) => from_b += 1,
                        _ => {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                (from_a, from_b, a_after_b)
            })
        })
        .collect();
    // The workers are sending before the first reload.
    let started = tokio::time::Instant::now();
    while a.requests.load(Ordering::SeqCst) < 8 {
        assert!(started.elapsed() < PATIENCE, "load never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for i in 0..6 {
        let target = if i % 2 == 0 { &b } else { &a };
        gw.reconfigure(&single_route(target, "/*")).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (mut from_a, mut from_b, mut a_after_b) = (0, 0, 0);
    for w in workers {
        let (x, y, z) = w.await.unwrap();
        from_a += x;
        from_b += y;
        a_after_b += z;
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert!(
        from_a > 0 && from_b > 0 && a_after_b > 0,
        "both configs answered during the load, in turn: {from_a} from a, {from_b} from b, \
         {a_after_b} from a after b"
    );
    assert_eq!(gw.gateway.snapshot().generation, 7);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let up = Upstream::start("u").await;
    let mut gw = TestGateway::start(&single_route(&up, "/*")).await;
    let c = client();
    let url = gw.url("/slow/500");
    let in_flight = tokio::spawn(async move { get(&c, &url, &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = gw.begin_stop();
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    stopping.await.unwrap().unwrap();
    // The listener is closed after shutdown.
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err());
}

#[tokio::test]
async fn shutdown_gives_up_after_the_grace_period() {
    let up = Upstream::start("u").await;
    let config = config_with(
        &[("g", &[up.addr], "")],
        "[server]\nshutdown_grace_ms = 200\n[[routes]]\npath = \"/*\"\nupstream = \"g\"\n",
    );
    let mut gw = TestGateway::start(&config).await;
    let c = client();
    let url = gw.url("/slow/5000");
    let stuck = tokio::spawn(async move { get(&c, &url, &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    gw.begin_stop().await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    stuck.abort();
}
