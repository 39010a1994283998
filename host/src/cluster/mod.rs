//! The gossip cluster: memberlist's protocol (messages, wire codec, SWIM + Lifeguard
//! state machine) driven by a thin UDP/TCP loop that replicates the service registry.

mod driver;
pub mod messages;
pub mod replication;
#[cfg(test)]
mod sim;
pub mod swim;
pub mod wire;

use base64::Engine;

pub use driver::{ClusterSettings, ClusterView, start, state_name};

/// Decodes `cluster.secret_key` (base64 of 16, 24 or 32 bytes).
pub fn decode_key(text: &str) -> Result<Vec<u8>, String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| "is not base64".to_owned())?;
    if matches!(key.len(), 16 | 24 | 32) {
        Ok(key)
    } else {
        Err(format!(
            "decodes to {} bytes; AES keys are 16, 24 or 32 bytes",
            key.len()
        ))
    }
}
