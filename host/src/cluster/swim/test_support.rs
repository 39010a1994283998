//! State-machine builders and lookups shared by the SWIM tests.

use std::net::SocketAddr;

use tokio::time::Instant;

use super::{Member, Swim, SwimConfig, VSN};
use crate::cluster::messages::{Alive, Message, NodeState, PushNodeState, Suspect};

pub(super) fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 7946))
}

pub(super) fn node(i: u8, now: Instant) -> Swim {
    let mut cfg = SwimConfig::lan(format!("n{i}"), addr(i));
    cfg.rng_seed = Some(u64::from(i));
    Swim::new(cfg, now)
}

/// `s` hears `alive` (incarnation 1) from n2 up to n`last`.
pub(super) fn hear_alive(s: &mut Swim, last: u8, now: Instant) {
    for i in 2..=last {
        s.handle_packet(
            addr(i),
            vec![Message::Alive(alive_msg(&format!("n{i}"), i, 1))],
            now,
        );
    }
}

pub(super) fn suspect(incarnation: u32, node: &str, from: &str) -> Suspect {
    Suspect {
        incarnation,
        node: node.into(),
        from: from.into(),
    }
}

pub(super) fn alive_msg(name: &str, i: u8, inc: u32) -> Alive {
    Alive {
        incarnation: inc,
        node: name.to_string(),
        addr: vec![10, 0, 0, i],
        port: 7946,
        meta: Vec::new(),
        vsn: VSN.to_vec(),
    }
}

pub(super) fn member<'a>(members: &'a [Member], name: &str) -> &'a Member {
    members
        .iter()
        .find(|m| m.name == name)
        .expect("member present")
}

pub(super) fn queued_about(s: &Swim, name: &str) -> Vec<Message> {
    s.broadcasts
        .items()
        .map(|(_, q)| q)
        .filter(|q| q.name == name)
        .map(|q| q.msg.clone())
        .collect()
}

pub(super) fn push_state(name: &str, i: u8, inc: u32, state: NodeState) -> PushNodeState {
    PushNodeState {
        name: name.to_string(),
        addr: vec![10, 0, 0, i],
        port: 7946,
        meta: Vec::new(),
        incarnation: inc,
        state,
        vsn: VSN.to_vec(),
    }
}
