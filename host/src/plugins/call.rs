//! What every plugin call runs under (its limits) and the ways it can fail.

use super::language::Language;

/// Limits every call of a pool's instances runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Longest a hook may run (its own running time: time spent waiting for the CPU
    /// does not count).
    pub timeout_ms: u64,
    pub memory_bytes: usize,
    /// Warm instances kept per pool.
    pub max_idle: usize,
    /// Calls of one plugin running at once; more fail fast.
    pub max_concurrent: usize,
    /// Instances of one plugin alive at once (all versions and configs).
    pub max_instances: usize,
    /// Linear-memory bytes of one plugin's idle instances.
    pub max_idle_bytes: usize,
    /// Largest body a plugin may set or get.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout_ms: 50,
            memory_bytes: 32 << 20,
            max_idle: 32,
            max_concurrent: 4,
            max_instances: 64,
            max_idle_bytes: 64 << 20,
            max_body: 1 << 20,
        }
    }
}

/// The limits of one chain entry for each language runtime a plugin file may carry:
/// which one applies is known only when a file is loaded (`Language::detect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LimitsByLanguage {
    pub native: Limits,
    pub javascript: Limits,
    pub python: Limits,
}

impl LimitsByLanguage {
    /// The same limits whatever the language.
    pub fn uniform(limits: Limits) -> Self {
        Self {
            native: limits,
            javascript: limits,
            python: limits,
        }
    }

    /// The limits for a file of `language`.
    pub fn get(&self, language: Language) -> Limits {
        match language {
            Language::Native => self.native,
            Language::JavaScript => self.javascript,
            Language::Python => self.python,
        }
    }
}

/// Why a plugin call did not produce an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("plugin is not loaded")]
    NotLoaded,
    #[error("plugin init failed: {0}")]
    Init(String),
    #[error("plugin exceeded its time limit")]
    Timeout,
    #[error("plugin exceeded its memory limit")]
    Memory,
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin broke a rule: {0}")]
    Invalid(String),
    #[error("plugin could not be instantiated: {0}")]
    Instantiate(String),
    #[error("plugin has all of its {0} instances in use")]
    NoInstance(usize),
    #[error("plugin already runs its most calls at once")]
    Busy,
    #[error("plugin is short-circuited after repeated failures (breaker open)")]
    CircuitOpen,
}

impl CallError {
    /// Label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::NotLoaded => "not_loaded",
            CallError::Init(_) => "init",
            CallError::Timeout => "timeout",
            CallError::Memory => "memory",
            CallError::Trap(_) => "trap",
            CallError::Invalid(_) => "invalid_output",
            CallError::Instantiate(_) => "instantiate",
            CallError::NoInstance(_) => "no_instance",
            CallError::Busy => "busy",
            CallError::CircuitOpen => "circuit_open",
        }
    }

    /// Failures that say the plugin itself misbehaves (they feed its breaker).
    pub fn is_plugin_fault(&self) -> bool {
        matches!(
            self,
            CallError::Timeout | CallError::Memory | CallError::Trap(_) | CallError::Invalid(_)
        )
    }

    /// Failures that may pass by themselves (a swap rejected for one is retried).
    pub fn is_transient(&self) -> bool {
        matches!(self, CallError::NoInstance(_) | CallError::Busy)
    }
}
