//! Which language runtime a component carries, read from its metadata at load. A
//! plugin compiled to wasm directly (Rust, C, ...) carries none; JavaScript and Python
//! components embed a whole interpreter (SpiderMonkey through componentize-js, CPython
//! through componentize-py) and need more memory per instance, so each gets its own
//! default limits (`plugins.languages.*`).
//!
//! The metadata is the plugin's own word, so it only chooses between limits the
//! operator set: a component that claims to be JavaScript gets the JavaScript limits,
//! no more.

use wasmparser::{KnownCustom, Name, Parser, Payload};

/// The runtime class of a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    /// Compiled to wasm directly (Rust with fluxgate-sdk, or any other compiled language).
    Native,
    /// Built with componentize-js (its `producers` section says `language: JavaScript`).
    JavaScript,
    /// Built with componentize-py (it links a core module named `libpython*.so`).
    Python,
}

impl Language {
    /// The name used in config keys (`plugins.languages.NAME`), logs and health.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Native => "native",
            Language::JavaScript => "javascript",
            Language::Python => "python",
        }
    }

    /// Reads a component's metadata. Anything unreadable counts as native (the
    /// compile that follows rejects a broken file with its own message).
    pub fn detect(bytes: &[u8]) -> Language {
        let mut found = Language::Native;
        for payload in Parser::new(0).parse_all(bytes) {
            let Ok(Payload::CustomSection(section)) = payload else {
                if payload.is_err() {
                    break;
                }
                continue;
            };
            match section.as_known() {
                KnownCustom::Producers(reader) => {
                    let javascript = reader.into_iter().flatten().any(|field| {
                        field.name == "language"
                            && field
                                .values
                                .into_iter()
                                .flatten()
                                .any(|v| v.name.eq_ignore_ascii_case("javascript"))
                    });
                    if javascript {
                        return Language::JavaScript;
                    }
                }
                KnownCustom::Name(reader) => {
                    let python = reader.into_iter().flatten().any(|name| {
                        matches!(name, Name::Module { name, .. } if name.starts_with("libpython"))
                    });
                    if python {
                        found = Language::Python;
                    }
                }
                _ => {}
            }
        }
        found
    }

    /// The tool that builds components of this language, for messages.
    pub fn toolchain(self) -> &'static str {
        match self {
            Language::Native => "compiled to wasm directly, e.g. Rust with fluxgate-sdk",
            Language::JavaScript => "componentize-js",
            Language::Python => "componentize-py",
        }
    }
}

impl std::fmt::Display for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component with one custom section (name, payload).
    fn component_with_custom(name: &str, payload: &[u8]) -> Vec<u8> {
        let mut out = b"\0asm\x0d\x00\x01\x00".to_vec();
        let mut body = Vec::new();
        body.push(name.len() as u8);
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(payload);
        out.push(0);
        out.push(body.len() as u8);
        out.extend(body);
        out
    }

    fn string(s: &str) -> Vec<u8> {
        let mut out = vec![s.len() as u8];
        out.extend_from_slice(s.as_bytes());
        out
    }

    #[test]
    fn javascript_is_read_from_the_producers_section() {
        // producers: 1 field "language" with 1 value ("JavaScript", "").
        let mut payload = vec![1];
        payload.extend(string("language"));
        payload.push(1);
        payload.extend(string("JavaScript"));
        payload.extend(string(""));
        let bytes = component_with_custom("producers", &payload);
        assert_eq!(Language::detect(&bytes), Language::JavaScript);
        let mut rust = vec![1];
        rust.extend(string("language"));
        rust.push(1);
        rust.extend(string("Rust"));
        rust.extend(string(""));
        assert_eq!(
            Language::detect(&component_with_custom("producers", &rust)),
            Language::Native
        );
    }

    #[test]
    fn python_is_read_from_a_module_name() {
        // name section, subsection 0 (module name) "libpython3.14.so".
        let name = string("libpython3.14.so");
        let mut payload = vec![0, name.len() as u8];
        payload.extend(name);
        let mut module = b"\0asm\x01\x00\x00\x00".to_vec();
        module.extend_from_slice(&component_with_custom("name", &payload)[8..]);
        assert_eq!(Language::detect(&module), Language::Python);
    }

    #[test]
    fn garbage_is_native() {
        assert_eq!(Language::detect(b"not wasm at all"), Language::Native);
        assert_eq!(Language::detect(b""), Language::Native);
    }
}
