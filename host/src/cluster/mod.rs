//! The gossip cluster: memberlist's protocol (messages, wire codec, SWIM + Lifeguard
//! state machine) driven by a thin UDP/TCP loop that replicates the service registry.

mod driver;
pub mod messages;
pub mod replication;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod sim_bench;
pub mod swim;
pub mod view;
pub mod wire;

pub use driver::{ClusterSettings, GossipSockets, bind, start};
pub use view::{ClusterView, state_name};
pub use wire::decode_key;
