//! The plugins under test, really compiled to wasm32-wasip2 — once per test run.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The plugins workspace (`plugins/`).
fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins")
}

/// Builds every plugin (a no-op when scripts/test.sh already did) and returns the folder
/// holding the .wasm files.
fn built() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = workspace();
        let target_dir = dir.join("target");
        let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&dir)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--target-dir",
            ])
            .arg(&target_dir)
            .output()
            .expect("run cargo to build the plugins");
        assert!(
            output.status.success(),
            "building plugins for wasm32-wasip2 failed (is the target installed? \
             scripts/test.sh adds it):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        target_dir.join("wasm32-wasip2/release")
    })
}

/// The compiled component of plugin crate `crate_name` (e.g. "api_key_auth").
pub fn plugin(crate_name: &str) -> Vec<u8> {
    let path = built().join(format!("{crate_name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The JavaScript or Python example plugin `name` ("js-canary", "py-allowlist"), built
/// into a component by plugins/build-lang.sh — once per run: the script keeps a
/// component newer than its sources (scripts/test.sh builds them before the tests).
pub fn lang_plugin(name: &str) -> Vec<u8> {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let output = Command::new("bash")
            .arg(workspace().join("build-lang.sh"))
            .arg(name)
            .output()
            .expect("run plugins/build-lang.sh");
        assert!(
            output.status.success(),
            "building {name} failed (scripts/test.sh installs Node/npm and Python packages):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        built.push(name.to_owned());
    }
    let path = workspace().join(format!("target/lang/{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The plugins workspace's target folder (its compiled dependencies).
pub fn plugins_target_dir() -> PathBuf {
    workspace().join("target")
}
