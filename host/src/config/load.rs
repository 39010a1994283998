//! Reading gateway.toml: syntax, unknown keys and type errors, each with its key path.

use std::fmt;
use std::path::PathBuf;

use super::schema::Config;

/// One thing wrong with a config file, located by its key path (`routes[2].upstream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} problem(s) in config:\n{}", .0.len(), list(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The individual problems (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(problems) => problems,
            ConfigError::Read { .. } => &[],
        }
    }
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A config that deserialized, with the unknown keys found on the way (every one is
/// reported, not only the first; `plan` reports them with its own findings).
#[derive(Debug)]
pub struct Parsed {
    pub config: Config,
    pub unknown_keys: Vec<Problem>,
}

/// Parses config text. A syntax or type error stops parsing: it is reported alongside
/// the unknown keys seen before it.
pub fn parse(text: &str) -> Result<Parsed, ConfigError> {
    let mut problems = Vec::new();
    let deserializer = match toml::Deserializer::parse(text) {
        Ok(d) => d,
        Err(e) => return Err(ConfigError::Invalid(vec![syntax_problem(text, &e)])),
    };
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(ignored_path(&path));
    let ignored = serde_ignored::Deserializer::new(deserializer, &mut record);
    let parsed: Result<Config, _> = serde_path_to_error::deserialize(ignored);
    problems.extend(
        unknown
            .into_iter()
            .map(|path| Problem::new(path, "unknown key")),
    );
    match parsed {
        Ok(config) => Ok(Parsed {
            config,
            unknown_keys: problems,
        }),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            problems.push(Problem::new(
                if path == "." {
                    "(root)".to_owned()
                } else {
                    path
                },
                type_message(&inner),
            ));
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// toml's messages carry a multi-line source excerpt; keep the first line, the key path
/// already says where.
fn type_message(e: &toml::de::Error) -> String {
    e.message()
        .lines()
        .next()
        .unwrap_or("invalid value")
        .to_owned()
}

fn syntax_problem(text: &str, e: &toml::de::Error) -> Problem {
    let location = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {col}")
        }
        None => "(syntax)".to_owned(),
    };
    Problem::new(location, format!("TOML syntax: {}", type_message(e)))
}

/// Formats serde_ignored's path the way serde_path_to_error does: `routes[2].key`.
fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => {
            let parent = ignored_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::plan::test_problems as problems;

    #[test]
    fn empty_text_is_the_default_config() {
        assert_eq!(parse("").ok().map(|p| p.config), Some(Config::default()));
    }

    #[test]
    fn every_unknown_key_is_reported_with_its_path() {
        let found = problems(
            r#"
            colour = 1
            [server]
            lisen = "x"
            [[routes]]
            path = "/a"
            upstream = "u"
            [[routes]]
            path = "/b"
            upstream = "u"
            bogus = true
            [upstreams.u]
            targets = [{ url = "http://127.0.0.1:1", wieght = 2 }]
            "#,
        );
        assert!(
            found.contains(&"colour: unknown key".to_owned()),
            "{found:?}"
        );
        assert!(
            found.contains(&"server.lisen: unknown key".to_owned()),
            "{found:?}"
        );
        assert!(
            found.contains(&"routes[1].bogus: unknown key".to_owned()),
            "{found:?}"
        );
        assert!(
            found.contains(&"upstreams.u.targets[0].wieght: unknown key".to_owned()),
            "{found:?}"
        );
    }

    #[test]
    fn type_errors_name_the_key() {
        let found = problems("[server]\nmax_headers = \"many\"\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("server.max_headers: "), "{found:?}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let found = problems("[server]\nlisten = \n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("line 2, column"), "{found:?}");
    }
}
