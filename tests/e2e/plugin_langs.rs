//! Plugins in other languages and the plugin author's road: the JavaScript and Python
//! examples built into components (componentize-js, componentize-py) and served by the
//! real gateway; `fluxgate-host plugin check` on good and bad files; `plugin new` →
//! build → check → copy → request for the Rust template, and the JavaScript and Python
//! templates' own tests.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use fluxgate_host::plan::{JAVASCRIPT_DEFAULTS, PYTHON_DEFAULTS};

use crate::cli::BIN;
use crate::support::upstream::Upstream;
use crate::support::wasm::{lang_plugin, plugin, plugins_target_dir};
use crate::support::{PATIENCE, TestGateway, client, get};

fn run(command: &mut Command) -> Output {
    command.output().expect("run command")
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The pool serving the first route's `plugin` runs under its language's memory limit
/// (the built-in default), not `[plugins]`'s 32 MiB.
fn assert_pool_limits(gw: &TestGateway, plugin: &str, memory_limit_mb: Option<u64>) {
    let snapshot = gw.gateway.snapshot();
    let entry = snapshot.routes[0]
        .plugins
        .iter()
        .find(|e| &*e.name == plugin)
        .expect("chain entry");
    let pool = gw.gateway.plugins.resolve(entry).expect("resolved");
    let expected = memory_limit_mb.expect("a language default") << 20;
    assert_eq!(pool.limits().memory_bytes as u64, expected);
    assert_eq!(
        entry.limits.native.memory_bytes,
        32 << 20,
        "Rust keeps 32 MiB"
    );
}

#[tokio::test]
async fn js_canary_sends_marked_and_assigned_users_to_the_canary_upstream() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let config = format!(
        "[plugins]\ntimeout_ms = 1000\n\
         [upstreams.stable]\ntargets = [{{ url = \"http://{}\" }}]\n\
         [upstreams.canary]\ntargets = [{{ url = \"http://{}\" }}]\n\
         [[routes]]\nname = \"app\"\npath = \"/app/*\"\nupstream = \"stable\"\n\
         plugins = [{{ name = \"js-canary\", config = {{ share = 1.0 }} }}]\n\
         [[routes]]\nname = \"app-canary\"\npath = \"/app/*\"\nupstream = \"canary\"\nusers = [\"1\"]\n\
         user_id_key = [\"header:x-canary\", \"cookie:canary\"]\n\
         plugins = [{{ name = \"js-canary\", config = {{ share = 1.0 }} }}]\n\
         [[routes]]\nname = \"none\"\npath = \"/none/*\"\nupstream = \"stable\"\n\
         plugins = [{{ name = \"js-canary\", config = {{ share = 0.0 }} }}]\n",
        stable.addr, canary.addr
    );
    let js = lang_plugin("js-canary");
    let gw = TestGateway::start_with_plugins(&config, &[("js-canary", &js)]).await;
    let c = client();

    // A tester's opt-in header: the canary route, and the canary's upstream is told.
    let opted = get(&c, &gw.url("/app/x"), &[("x-canary", "1")]).await;
    assert_eq!(opted.status, 200, "{:?}", opted.body);
    assert_eq!(opted.headers["x-upstream"], "canary");
    assert_eq!(opted.headers["x-canary"], "1");
    assert_eq!(opted.json()["headers"]["x-canary"][0], "1");
    assert!(opted.headers.get("set-cookie").is_none());

    // share = 1: a new user is served by stable this time and gets the cookie ...
    let first = get(&c, &gw.url("/app/x"), &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["x-upstream"], "stable");
    assert_eq!(first.headers["x-canary"], "0");
    let cookie = first.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("canary=1; Path=/"), "{cookie}");
    // ... and with it, the user's next request goes to the canary.
    let pair = cookie.split(';').next().unwrap();
    let next = get(&c, &gw.url("/app/y"), &[("cookie", pair)]).await;
    assert_eq!(next.headers["x-upstream"], "canary");
    assert_eq!(next.headers["x-canary"], "1");

    // share = 0: nobody is assigned.
    let none = get(&c, &gw.url("/none/x"), &[]).await;
    assert_eq!(none.status, 200);
    assert_eq!(none.headers["x-canary"], "0");
    assert!(none.headers.get("set-cookie").is_none());

    // Loaded as JavaScript, under the JavaScript limits.
    let loaded = gw.gateway.plugins.get("js-canary").expect("loaded");
    assert_eq!(loaded.language.as_str(), "javascript");
    assert_pool_limits(&gw, "js-canary", JAVASCRIPT_DEFAULTS.memory_limit_mb);
}

#[tokio::test]
async fn py_allowlist_lets_listed_clients_in_and_answers_others_403_json() {
    let up = Upstream::start("u").await;
    let config = format!(
        "[plugins]\ntimeout_ms = 1000\n[upstreams.u]\ntargets = [{{ url = \"http://{}\" }}]\n\
         [[routes]]\nname = \"open\"\npath = \"/open/*\"\nupstream = \"u\"\n\
         plugins = [{{ name = \"py-allowlist\", config = {{ allow = [\"127.0.0.0/8\", \"::1\"] }} }}]\n\
         [[routes]]\nname = \"closed\"\npath = \"/closed/*\"\nupstream = \"u\"\n\
         plugins = [{{ name = \"py-allowlist\", config = {{ allow = [\"10.0.0.0/8\"] }} }}]\n",
        up.addr
    );
    let py = lang_plugin("py-allowlist");
    let gw = TestGateway::start_with_plugins(&config, &[("py-allowlist", &py)]).await;
    let c = client();
    let open = get(&c, &gw.url("/open/x"), &[]).await;
    assert_eq!(open.status, 200, "{:?}", open.body);
    assert_eq!(open.headers["x-upstream"], "u");
    let closed = get(&c, &gw.url("/closed/x"), &[]).await;
    assert_eq!(closed.status, 403, "{:?}", closed.body);
    assert_eq!(closed.headers["content-type"], "application/json");
    assert_eq!(closed.json()["error"], "forbidden");
    assert_eq!(closed.json()["message"], "client 127.0.0.1 is not allowed");
    assert_eq!(
        up.requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the refused request never reached the upstream"
    );
    let loaded = gw.gateway.plugins.get("py-allowlist").expect("loaded");
    assert_eq!(loaded.language.as_str(), "python");
    assert_pool_limits(&gw, "py-allowlist", PYTHON_DEFAULTS.memory_limit_mb);
}

/// `fluxgate-host plugin check FILE [args]` on bytes written to a temporary file.
fn check(bytes: &[u8], args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plugin.wasm");
    std::fs::write(&file, bytes).unwrap();
    run(Command::new(BIN)
        .args(["plugin", "check"])
        .arg(&file)
        .args(args))
}

#[test]
fn plugin_check_reports_the_contract_hooks_and_dry_calls_of_a_good_plugin() {
    let out = check(
        &plugin("header_rewrite"),
        &[
            "--config",
            r#"{"request":{"set":{"x-env":"prod"}},"response":{"set":{"x-served-by":"fg"}}}"#,
            "--path",
            "/a?b=1",
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(": OK"), "{all}");
    assert!(
        stdout.contains("contract     fluxgate:plugin@0.2.0"),
        "{all}"
    );
    assert!(stdout.contains("native"), "{all}");
    assert!(
        stdout.contains("hooks: on-request, on-response; needs: no bodies"),
        "{all}"
    );
    assert!(
        stdout.contains("on-request   continue; set x-env: prod"),
        "{all}"
    );
    assert!(
        stdout.contains("on-response  ok; set x-served-by: fg"),
        "{all}"
    );
}

/// Asserts a failed check with `kind` and a message containing `reason`.
fn assert_refused(out: &Output, kind: &str, reason: &str) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("FAILED ({kind})")), "{all}");
    assert!(stderr.contains(reason), "{all}");
}

#[test]
fn plugin_check_names_why_a_file_would_be_refused_or_fail() {
    // A core module, not a component.
    assert_refused(
        &check(b"\0asm\x01\0\0\0", &[]),
        "not_a_component",
        "not a valid component",
    );
    // A component of another world: it exports nothing.
    assert_refused(
        &check(b"\0asm\x0d\0\x01\0", &[]),
        "wrong_world",
        "does not fit the fluxgate:plugin world",
    );
    // Built for the 0.1 contract.
    let v01 = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/e2e/fixtures/tagger-a-v0.1.wasm"
    ))
    .unwrap();
    assert_refused(
        &check(&v01, &[]),
        "contract_version",
        "built for fluxgate:plugin@0.1.0; this gateway loads 0.2.x",
    );
    // init refuses its config.
    assert_refused(
        &check(&plugin("bad_init"), &[]),
        "init",
        "bad-init refuses to start",
    );
    // A config that is not JSON never reaches the plugin.
    assert_refused(
        &check(&plugin("tagger_a"), &["--config", "{nope"]),
        "config",
        "--config is not a JSON object",
    );
    // The dry call traps (and with the header it asks for, it does not).
    assert_refused(&check(&plugin("trap"), &[]), "trap", "on-request failed");
    let fine = check(&plugin("trap"), &["--header", "x-trap: no"]);
    assert!(fine.status.success(), "{}", text(&fine));
    // The dry call breaks an output rule.
    assert_refused(
        &check(
            &plugin("forbidden_header"),
            &["--config", r#"{"name":"content-length","value":"1"}"#],
        ),
        "invalid_output",
        "plugin broke a rule",
    );
}

#[test]
fn plugin_check_measures_fresh_instances() {
    let out = check(&plugin("tagger_a"), &["--instances", "3"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("instances    3 fresh:"),
        "{all}"
    );
}

/// Polls (bounded) until `GET path` answers with header `name`.
async fn wait_for_header(gw: &TestGateway, path: &str, name: &str) -> crate::support::Reply {
    let c = client();
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    loop {
        let reply = get(&c, &gw.url(path), &[]).await;
        if reply.headers.contains_key(name) {
            return reply;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {name} on {path}: last answer {} {:?}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The five commands of docs/PLUGINS.md for a new Rust plugin, against a running
/// gateway whose route already names it: new → build → check → copy → request.
#[tokio::test]
async fn the_five_command_road_for_a_new_rust_plugin() {
    let up = Upstream::start("u").await;
    let config = format!(
        "[plugins]\ntimeout_ms = 1000\n[upstreams.u]\ntargets = [{{ url = \"http://{}\" }}]\n\
         [[routes]]\npath = \"/*\"\nupstream = \"u\"\nplugins = [\"hello\"]\n",
        up.addr
    );
    let gw = TestGateway::start(&config).await;
    let c = client();
    let before = get(&c, &gw.url("/x"), &[]).await;
    assert_eq!(before.status, 503, "named but not loaded yet");

    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    // 1. new
    let new = run(Command::new(BIN)
        .current_dir(cwd)
        .args(["plugin", "new", "hello", "--lang", "rust"]));
    assert!(new.status.success(), "{}", text(&new));
    // The test reuses the plugins workspace's compiled dependencies: same versions (its
    // lock file) and the same target folder. The commands are the README's.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/Cargo.lock"),
        cwd.join("hello/Cargo.lock"),
    )
    .unwrap();
    let target = plugins_target_dir();
    // 2. build
    let build = run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(cwd)
            .env("CARGO_TARGET_DIR", &target)
            .args([
                "build",
                "--manifest-path",
                "hello/Cargo.toml",
                "--release",
                "--target",
                "wasm32-wasip2",
            ]),
    );
    assert!(build.status.success(), "{}", text(&build));
    // (Not one of the five: the template's own test passes as written.)
    let tested = run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(cwd)
            .env("CARGO_TARGET_DIR", &target)
            .args(["test", "--manifest-path", "hello/Cargo.toml"]),
    );
    assert!(tested.status.success(), "{}", text(&tested));
    assert!(
        String::from_utf8_lossy(&tested.stdout).contains("every_answer_gets_the_greeting ... ok"),
        "{}",
        text(&tested)
    );
    let artifact = target.join("wasm32-wasip2/release/hello.wasm");
    // 3. check
    let checked = run(Command::new(BIN)
        .current_dir(cwd)
        .args(["plugin", "check"])
        .arg(&artifact));
    assert!(checked.status.success(), "{}", text(&checked));
    // 4. copy into the plugin folder
    let copy = run(Command::new("cp")
        .current_dir(cwd)
        .arg(&artifact)
        .arg(gw.plugin_dir.join("hello.wasm")));
    assert!(copy.status.success(), "{}", text(&copy));
    // 5. request
    let reply = wait_for_header(&gw, "/x", "x-greeting").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["x-greeting"], "hello from hello");
    assert_eq!(reply.headers["x-upstream"], "u");
}

/// The JavaScript and Python templates' own tests pass as written (Node's test runner,
/// Python's unittest: no gateway, no componentize step).
#[test]
fn the_js_and_python_templates_tests_pass() {
    let work = tempfile::tempdir().unwrap();
    for (name, lang) in [("hello-js", "js"), ("hello-py", "python")] {
        let new = run(Command::new(BIN)
            .current_dir(work.path())
            .args(["plugin", "new", name, "--lang", lang]));
        assert!(new.status.success(), "{}", text(&new));
    }
    let js = run(Command::new("node")
        .current_dir(work.path().join("hello-js"))
        .args([
            "--import",
            "./fluxgate-testing/register.js",
            "--test",
            "plugin.test.js",
        ]));
    assert!(js.status.success(), "{}", text(&js));
    assert!(
        String::from_utf8_lossy(&js.stdout).contains("# pass 1"),
        "{}",
        text(&js)
    );
    let py = run(Command::new("python3")
        .current_dir(work.path().join("hello-py"))
        .args(["-m", "unittest", "-v"]));
    assert!(py.status.success(), "{}", text(&py));
    assert!(
        String::from_utf8_lossy(&py.stderr).contains("Ran 1 test"),
        "{}",
        text(&py)
    );
}

/// The JavaScript and Python templates build into components that pass `plugin check`
/// with the commands their READMEs give. To spare each run a 385 MB npm install, the
/// JavaScript build runs its package.json `build` script's componentize-js step with
/// the checkout's pinned toolchain (the `npm install` before it is npm's own); the
/// Python one runs `python3 NAME/build.py` as written, its `.venv` linked to the
/// checkout's (build.py installs componentize-py only when the venv lacks it).
#[test]
fn the_js_and_python_templates_build_components_that_pass_check() {
    lang_plugin("js-canary"); // the toolchains are installed
    lang_plugin("py-allowlist");
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    for (name, lang) in [("tpl-js", "js"), ("tpl-py", "python")] {
        let new = run(Command::new(BIN)
            .current_dir(cwd)
            .args(["plugin", "new", name, "--lang", lang]));
        assert!(new.status.success(), "{}", text(&new));
    }

    let package: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cwd.join("tpl-js/package.json")).unwrap())
            .unwrap();
    let script = package["scripts"]["build"].as_str().unwrap();
    let step = script.rsplit("&& ").next().unwrap();
    let mut args = step.split_whitespace();
    assert_eq!(args.next(), Some("componentize-js"), "{script}");
    let js = run(
        Command::new(plugins.join("js/node_modules/.bin/componentize-js"))
            .current_dir(cwd.join("tpl-js"))
            .args(args),
    );
    assert!(js.status.success(), "{}", text(&js));

    std::os::unix::fs::symlink(
        std::fs::canonicalize(plugins.join("py/.venv")).unwrap(),
        cwd.join("tpl-py/.venv"),
    )
    .unwrap();
    let py = run(Command::new("python3")
        .current_dir(cwd)
        .args(["tpl-py/build.py"]));
    assert!(py.status.success(), "{}", text(&py));

    for (file, language) in [
        ("tpl-js/tpl-js.wasm", "javascript"),
        ("tpl-py/tpl-py.wasm", "python"),
    ] {
        let checked = run(Command::new(BIN).current_dir(cwd).args([
            "plugin",
            "check",
            file,
            "--config",
            r#"{"greeting":"hi"}"#,
        ]));
        let all = text(&checked);
        assert!(checked.status.success(), "{all}");
        let stdout = String::from_utf8_lossy(&checked.stdout);
        assert!(stdout.contains(&format!("bytes, {language}")), "{all}");
        assert!(
            stdout.contains("on-response  ok; set x-greeting: hi"),
            "{all}"
        );
    }
}
