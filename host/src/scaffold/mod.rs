//! `fluxgate-host plugin new NAME --lang rust|js|python`: writes a ready plugin project
//! (one working hook, one test, the build file, a README with the build command).
//!
//! Everything a project needs that is not on a package registry comes from this binary:
//! the contract (`wit/plugin.wit`, the one this gateway loads) and, for JavaScript and
//! Python, the thin helper and its test double, copied into the project. A Rust
//! project depends on `fluxgate-sdk` ([`SdkSource`]); the toolchains (cargo's crates,
//! componentize-js from npm, componentize-py from PyPI) come from the registries at
//! build time, at the versions pinned here.

use std::path::{Path, PathBuf};

/// The contract every template builds against: the gateway's own WIT.
const WIT: &str = include_str!("../../../wit/plugin.wit");

/// componentize-js version the JavaScript template pins (as plugins/js does).
pub const COMPONENTIZE_JS: &str = "0.23.0";
/// The WASI shim componentize-js 0.23 loads at build time without declaring it (its
/// development version, 0.17): pinned beside it, or npm picks jco's 0.26, which cannot
/// read the WIT folder.
pub const PREVIEW2_SHIM: &str = "0.17.5";
/// componentize-py version the Python template pins (as plugins/py does).
pub const COMPONENTIZE_PY: &str = "0.25.1";

/// The language of a new project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Js,
    Python,
}

/// Where a Rust project gets fluxgate-sdk from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdkSource {
    /// A local checkout's `sdk/` folder (written as an absolute path).
    Path(PathBuf),
    /// A git repository holding FluxGate (cargo finds the crate in it), at a revision.
    Git { url: String, rev: Option<String> },
    /// A published version requirement, e.g. "0.2".
    Version(String),
}

/// What to write.
#[derive(Debug, Clone)]
pub struct NewPlugin {
    pub name: String,
    pub lang: Lang,
    /// The project folder (must not exist, or be empty).
    pub dir: PathBuf,
    /// Rust only; `None`: the SDK this binary was built from, if it is on this machine.
    pub sdk: Option<SdkSource>,
}

/// Why a project was not written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("{0:?} is not a plugin name: a letter, then letters, digits, '-' or '_' (at most 64)")]
    Name(String),
    #[error("{0} already exists and is not empty")]
    Exists(PathBuf),
    #[error(
        "fluxgate-sdk is not published to a registry yet, and the SDK this binary was built from ({0}) is not on this machine: pass --sdk-path DIR (a FluxGate checkout's sdk/), --sdk-git URL or --sdk-version VERSION"
    )]
    NoSdk(PathBuf),
    #[error("--sdk-path {0}: no fluxgate-sdk crate there (expected its Cargo.toml)")]
    BadSdkPath(PathBuf),
    #[error("--sdk-* options are for --lang rust only")]
    SdkForOtherLanguage,
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// The project written: its files and what to run next.
#[derive(Debug, Clone)]
pub struct Written {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// How fluxgate-sdk is found (Rust), for the summary.
    pub sdk_origin: Option<String>,
    pub build: String,
    pub test: String,
    /// The component the build writes, relative to the project's parent folder.
    pub artifact: String,
}

impl std::fmt::Display for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "wrote {} ({} files)",
            self.dir.display(),
            self.files.len()
        )?;
        if let Some(origin) = &self.sdk_origin {
            writeln!(f, "fluxgate-sdk: {origin}")?;
        }
        writeln!(f, "build: {}", self.build)?;
        writeln!(f, "test:  {}", self.test)?;
        writeln!(f, "check: fluxgate-host plugin check {}", self.artifact)?;
        Ok(())
    }
}

/// Letters, digits, '-' and '_', starting with a letter: a plugin name (the file stem
/// in the plugin folder), a cargo package and an npm package name alike.
pub fn is_project_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The SDK this binary was built from (a FluxGate checkout's `sdk/`).
fn built_from_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk")
}

/// The `fluxgate-sdk = ...` line of the Rust template, and where it points, in words.
fn sdk_dependency(source: Option<&SdkSource>) -> Result<(String, String), ScaffoldError> {
    let toml_string = |s: &str| toml::Value::String(s.to_owned()).to_string();
    match source {
        None => {
            let dir = built_from_sdk();
            if !dir.join("Cargo.toml").is_file() {
                return Err(ScaffoldError::NoSdk(dir));
            }
            sdk_dependency(Some(&SdkSource::Path(dir)))
        }
        Some(SdkSource::Path(dir)) => {
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
            if !manifest.contains("name = \"fluxgate-sdk\"") {
                return Err(ScaffoldError::BadSdkPath(dir.clone()));
            }
            let dir = std::fs::canonicalize(dir).map_err(|error| ScaffoldError::Io {
                path: dir.clone(),
                error,
            })?;
            let shown = dir.display().to_string();
            Ok((
                format!("fluxgate-sdk = {{ path = {} }}", toml_string(&shown)),
                format!("the local checkout {shown} (a path dependency)"),
            ))
        }
        Some(SdkSource::Git { url, rev }) => {
            let rev_part = rev
                .as_deref()
                .map(|r| format!(", rev = {}", toml_string(r)))
                .unwrap_or_default();
            Ok((
                format!("fluxgate-sdk = {{ git = {}{rev_part} }}", toml_string(url)),
                format!(
                    "the git repository {url}{} (a git dependency)",
                    rev.as_deref()
                        .map(|r| format!(" at {r}"))
                        .unwrap_or_default()
                ),
            ))
        }
        Some(SdkSource::Version(version)) => Ok((
            format!("fluxgate-sdk = {}", toml_string(version)),
            format!("the registry, version {version}"),
        )),
    }
}

/// A project's files (path relative to its folder, contents).
type Files = Vec<(&'static str, String)>;

/// The files of a project, and (Rust) where its fluxgate-sdk comes from.
fn files(request: &NewPlugin) -> Result<(Files, Option<String>), ScaffoldError> {
    let name = request.name.as_str();
    let crate_name = name.replace('-', "_");
    let fill = |template: &str, extra: &[(&str, &str)]| {
        let mut out = template
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{componentize_js}}", COMPONENTIZE_JS)
            .replace("{{preview2_shim}}", PREVIEW2_SHIM)
            .replace("{{componentize_py}}", COMPONENTIZE_PY);
        for (key, value) in extra {
            out = out.replace(&format!("{{{{{key}}}}}"), value);
        }
        out
    };
    Ok(match request.lang {
        Lang::Rust => {
            let (dependency, origin) = sdk_dependency(request.sdk.as_ref())?;
            let extra = [
                ("sdk_dependency", dependency.as_str()),
                ("sdk_origin", origin.as_str()),
            ];
            (
                vec![
                    (
                        "Cargo.toml",
                        fill(include_str!("templates/rust/Cargo.toml"), &extra),
                    ),
                    (
                        "src/lib.rs",
                        fill(include_str!("templates/rust/lib.rs"), &extra),
                    ),
                    (
                        "README.md",
                        fill(include_str!("templates/rust/README.md"), &extra),
                    ),
                    (
                        ".gitignore",
                        fill(include_str!("templates/rust/gitignore"), &extra),
                    ),
                ],
                Some(origin),
            )
        }
        Lang::Js => {
            if request.sdk.is_some() {
                return Err(ScaffoldError::SdkForOtherLanguage);
            }
            (
                vec![
                    (
                        "package.json",
                        fill(include_str!("templates/js/package.json"), &[]),
                    ),
                    (
                        "plugin.js",
                        fill(include_str!("templates/js/plugin.js"), &[]),
                    ),
                    (
                        "plugin.test.js",
                        fill(include_str!("templates/js/plugin.test.js"), &[]),
                    ),
                    (
                        "README.md",
                        fill(include_str!("templates/js/README.md"), &[]),
                    ),
                    (
                        ".gitignore",
                        fill(include_str!("templates/js/gitignore"), &[]),
                    ),
                    (
                        "fluxgate.js",
                        include_str!("../../../plugins/js/fluxgate.js").to_owned(),
                    ),
                    (
                        "fluxgate-testing/index.js",
                        include_str!("../../../plugins/js/testing/index.js").to_owned(),
                    ),
                    (
                        "fluxgate-testing/fake-host.js",
                        include_str!("../../../plugins/js/testing/fake-host.js").to_owned(),
                    ),
                    (
                        "fluxgate-testing/hooks.js",
                        include_str!("../../../plugins/js/testing/hooks.js").to_owned(),
                    ),
                    (
                        "fluxgate-testing/register.js",
                        include_str!("../../../plugins/js/testing/register.js").to_owned(),
                    ),
                    ("wit/plugin.wit", WIT.to_owned()),
                ],
                None,
            )
        }
        Lang::Python => {
            if request.sdk.is_some() {
                return Err(ScaffoldError::SdkForOtherLanguage);
            }
            (
                vec![
                    ("app.py", fill(include_str!("templates/python/app.py"), &[])),
                    (
                        "test_app.py",
                        fill(include_str!("templates/python/test_app.py"), &[]),
                    ),
                    (
                        "build.py",
                        fill(include_str!("templates/python/build.py"), &[]),
                    ),
                    (
                        "README.md",
                        fill(include_str!("templates/python/README.md"), &[]),
                    ),
                    (
                        ".gitignore",
                        fill(include_str!("templates/python/gitignore"), &[]),
                    ),
                    (
                        "fluxgate_plugin.py",
                        include_str!("../../../plugins/py/fluxgate_plugin.py").to_owned(),
                    ),
                    ("wit/plugin.wit", WIT.to_owned()),
                ],
                None,
            )
        }
    })
}

/// Writes the project; refuses a bad name or a folder that is not empty.
pub fn write(request: &NewPlugin) -> Result<Written, ScaffoldError> {
    if !is_project_name(&request.name) {
        return Err(ScaffoldError::Name(request.name.clone()));
    }
    let dir = &request.dir;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| ScaffoldError::Io { path, error }
    };
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io(dir))?;
        if entries.next().is_some() {
            return Err(ScaffoldError::Exists(dir.clone()));
        }
    }
    let (contents, sdk_origin) = files(request)?;
    let mut written = Vec::with_capacity(contents.len());
    for (relative, text) in contents {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, text).map_err(io(&path))?;
        written.push(path);
    }
    let name = &request.name;
    let shown = dir.display();
    let (build, test, artifact) = match request.lang {
        Lang::Rust => {
            let crate_name = name.replace('-', "_");
            (
                format!(
                    "cargo build --manifest-path {shown}/Cargo.toml --release --target wasm32-wasip2"
                ),
                format!("cargo test --manifest-path {shown}/Cargo.toml"),
                format!("{shown}/target/wasm32-wasip2/release/{crate_name}.wasm"),
            )
        }
        Lang::Js => (
            format!("npm --prefix {shown} run build"),
            format!("npm --prefix {shown} test"),
            format!("{shown}/{name}.wasm"),
        ),
        Lang::Python => (
            format!("python3 {shown}/build.py"),
            format!("(cd {shown} && python3 -m unittest)"),
            format!("{shown}/{name}.wasm"),
        ),
    };
    Ok(Written {
        dir: dir.clone(),
        files: written,
        sdk_origin,
        build,
        test,
        artifact,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(dir: &Path, name: &str, lang: Lang, sdk: Option<SdkSource>) -> NewPlugin {
        NewPlugin {
            name: name.into(),
            lang,
            dir: dir.join(name),
            sdk,
        }
    }

    #[test]
    fn names_must_be_plugin_and_package_names() {
        for good in ["hello", "my-plugin", "a_1"] {
            assert!(is_project_name(good), "{good}");
        }
        for bad in ["", "1abc", "-x", "a b", "../x", "a.b", &"x".repeat(65)] {
            assert!(!is_project_name(bad), "{bad}");
        }
        let tmp = tempfile::tempdir().unwrap();
        let err = write(&new(tmp.path(), "9lives", Lang::Rust, None)).unwrap_err();
        assert!(matches!(err, ScaffoldError::Name(_)), "{err}");
    }

    #[test]
    fn rust_project_depends_on_the_sdk_as_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let sdk = built_from_sdk();
        let written = write(&new(tmp.path(), "hello-rs", Lang::Rust, None)).unwrap();
        let manifest = std::fs::read_to_string(tmp.path().join("hello-rs/Cargo.toml")).unwrap();
        let canonical = std::fs::canonicalize(&sdk).unwrap();
        assert!(
            manifest.contains(&format!(
                "fluxgate-sdk = {{ path = \"{}\" }}",
                canonical.display()
            )),
            "{manifest}"
        );
        assert!(manifest.contains("name = \"hello-rs\""));
        assert!(manifest.contains("[workspace]"), "its own workspace");
        assert!(written.artifact.ends_with("release/hello_rs.wasm"));
        let lib = std::fs::read_to_string(tmp.path().join("hello-rs/src/lib.rs")).unwrap();
        assert!(lib.contains("hello from hello-rs") && lib.contains("#[test]"));
        let readme = std::fs::read_to_string(tmp.path().join("hello-rs/README.md")).unwrap();
        assert!(
            readme.contains(
                "cargo build --manifest-path hello-rs/Cargo.toml --release --target wasm32-wasip2"
            ),
            "{readme}"
        );
        assert!(!readme.contains("{{"), "every placeholder filled: {readme}");

        let git = SdkSource::Git {
            url: "https://example.invalid/fluxgate.git".into(),
            rev: Some("v0.2.0".into()),
        };
        write(&new(tmp.path(), "by-git", Lang::Rust, Some(git))).unwrap();
        let manifest = std::fs::read_to_string(tmp.path().join("by-git/Cargo.toml")).unwrap();
        assert!(manifest.contains(
            "fluxgate-sdk = { git = \"https://example.invalid/fluxgate.git\", rev = \"v0.2.0\" }"
        ));
        write(&new(
            tmp.path(),
            "by-version",
            Lang::Rust,
            Some(SdkSource::Version("0.2".into())),
        ))
        .unwrap();
        let manifest = std::fs::read_to_string(tmp.path().join("by-version/Cargo.toml")).unwrap();
        assert!(manifest.contains("fluxgate-sdk = \"0.2\""));
        let bad = write(&new(
            tmp.path(),
            "by-bad-path",
            Lang::Rust,
            Some(SdkSource::Path(tmp.path().to_path_buf())),
        ))
        .unwrap_err();
        assert!(matches!(bad, ScaffoldError::BadSdkPath(_)), "{bad}");
    }

    #[test]
    fn js_and_python_projects_carry_the_contract_and_the_helper() {
        let tmp = tempfile::tempdir().unwrap();
        write(&new(tmp.path(), "hello-js", Lang::Js, None)).unwrap();
        let dir = tmp.path().join("hello-js");
        assert_eq!(
            std::fs::read_to_string(dir.join("wit/plugin.wit")).unwrap(),
            WIT
        );
        let package = std::fs::read_to_string(dir.join("package.json")).unwrap();
        let package: serde_json::Value = serde_json::from_str(&package).unwrap();
        assert_eq!(package["name"], "hello-js");
        assert_eq!(
            package["devDependencies"]["@bytecodealliance/componentize-js"],
            COMPONENTIZE_JS
        );
        for file in [
            "fluxgate.js",
            "fluxgate-testing/register.js",
            "plugin.test.js",
        ] {
            assert!(dir.join(file).is_file(), "{file}");
        }

        write(&new(tmp.path(), "hello-py", Lang::Python, None)).unwrap();
        let dir = tmp.path().join("hello-py");
        assert_eq!(
            std::fs::read_to_string(dir.join("wit/plugin.wit")).unwrap(),
            WIT
        );
        let build = std::fs::read_to_string(dir.join("build.py")).unwrap();
        assert!(build.contains(&format!("componentize-py=={COMPONENTIZE_PY}")));
        assert!(build.contains("hello-py.wasm"));
        for file in ["app.py", "test_app.py", "fluxgate_plugin.py"] {
            assert!(dir.join(file).is_file(), "{file}");
        }
        let sdk = write(&new(
            tmp.path(),
            "js-sdk",
            Lang::Js,
            Some(SdkSource::Version("0.2".into())),
        ))
        .unwrap_err();
        assert!(matches!(sdk, ScaffoldError::SdkForOtherLanguage));
    }

    #[test]
    fn a_folder_in_use_is_not_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("taken");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("keep.txt"), "mine").unwrap();
        let err = write(&new(tmp.path(), "taken", Lang::Js, None)).unwrap_err();
        assert!(matches!(err, ScaffoldError::Exists(_)), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.join("keep.txt")).unwrap(),
            "mine"
        );
        // An empty folder is fine.
        std::fs::create_dir(tmp.path().join("empty")).unwrap();
        write(&new(tmp.path(), "empty", Lang::Python, None)).unwrap();
    }
}
