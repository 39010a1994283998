//! Test vectors and helpers shared by the wire tests (sample messages, Go's LZW writer).

use std::collections::HashMap;

use super::crypto::Keyring;
use super::msgpack::Enc;
use crate::cluster::messages::{
    AckResp, Alive, Dead, ErrResp, IndirectPingReq, Message, MessageType, NackResp, NodeState,
    Ping, PushNodeState, PushPull, Suspect,
};

pub(super) fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2));
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex"))
        .collect()
}

pub(super) fn keyring(keys: &[&[u8]]) -> Keyring {
    Keyring::new(keys.iter().map(|k| k.to_vec()).collect()).expect("valid test keys")
}

pub(super) const KEY16: &[u8] = b"0123456789abcdef";

pub(super) fn ping_a() -> Ping {
    Ping {
        seq_no: 1,
        node: "a".into(),
        ..Ping::default()
    }
}

pub(super) fn alive_a() -> Alive {
    Alive {
        incarnation: 1,
        node: "a".into(),
        addr: vec![127, 0, 0, 1],
        port: 7946,
        meta: Vec::new(),
        vsn: vec![1, 5, 2, 2, 5, 4],
    }
}

pub(super) fn all_messages() -> Vec<Message> {
    vec![
        Message::Ping(Ping {
            seq_no: 300,
            node: "node-1".into(),
            source_addr: vec![10, 0, 0, 1],
            source_port: 7946,
            source_node: "me".into(),
        }),
        Message::Ping(ping_a()),
        Message::IndirectPing(IndirectPingReq {
            seq_no: u32::MAX,
            target: vec![0; 16],
            port: 65535,
            node: "b".into(),
            nack: true,
            source_addr: vec![10, 0, 0, 3],
            source_port: 1,
            source_node: "c".into(),
        }),
        Message::Ack(AckResp {
            seq_no: 9,
            payload: b"hi".to_vec(),
        }),
        Message::Ack(AckResp {
            seq_no: 70_000,
            payload: Vec::new(),
        }),
        Message::Nack(NackResp { seq_no: 200 }),
        Message::Err(ErrResp {
            error: "boom".into(),
        }),
        Message::Suspect(Suspect {
            incarnation: 2,
            node: "a".into(),
            from: "b".into(),
        }),
        Message::Alive(alive_a()),
        Message::Alive(Alive {
            meta: vec![7; 600],
            node: "x".repeat(40),
            ..alive_a()
        }),
        Message::Dead(Dead {
            incarnation: 3,
            node: "a".into(),
            from: "a".into(),
        }),
        Message::User(b"registry delta".to_vec()),
        Message::User(Vec::new()),
    ]
}

pub(super) fn sample_push_pull() -> PushPull {
    let vsn = vec![1, 5, 2, 2, 5, 4];
    PushPull {
        join: true,
        nodes: vec![
            PushNodeState {
                name: "a".into(),
                addr: vec![127, 0, 0, 1],
                port: 7946,
                meta: Vec::new(),
                incarnation: 1,
                state: NodeState::Alive,
                vsn: vsn.clone(),
            },
            PushNodeState {
                name: "b".into(),
                addr: vec![127, 0, 0, 2],
                port: 7947,
                meta: b"m".to_vec(),
                incarnation: 2,
                state: NodeState::Suspect,
                vsn: vsn.clone(),
            },
            PushNodeState {
                name: "c".into(),
                addr: [0; 15].iter().copied().chain([1]).collect(),
                port: 7948,
                meta: Vec::new(),
                incarnation: 3,
                state: NodeState::Left,
                vsn,
            },
        ],
        user_state: b"state".to_vec(),
    }
}

/// A port of Go's compress/lzw Writer (LSB, litWidth 8), to produce test input. A map
/// stands in for Go's hash table: same dictionary, same codes.
pub(super) fn lzw_encode(input: &[u8]) -> Vec<u8> {
    struct W {
        out: Vec<u8>,
        bits: u32,
        n_bits: u32,
        width: u32,
    }
    impl W {
        fn write(&mut self, c: u32) {
            self.bits |= c << self.n_bits;
            self.n_bits += self.width;
            while self.n_bits >= 8 {
                self.out.push(self.bits as u8);
                self.bits >>= 8;
                self.n_bits -= 8;
            }
        }
    }
    let mut w = W {
        out: Vec::new(),
        bits: 0,
        n_bits: 0,
        width: 9,
    };
    let (mut hi, mut overflow) = (257u32, 512u32);
    let mut table: HashMap<u32, u32> = HashMap::new();
    w.write(256);
    let Some((&first, rest)) = input.split_first() else {
        w.write(257);
        if w.n_bits > 0 {
            w.out.push(w.bits as u8);
        }
        return w.out;
    };
    let mut code = u32::from(first);
    // incHi: returns true when the table was reset.
    let inc_hi = |w: &mut W, hi: &mut u32, overflow: &mut u32, table: &mut HashMap<_, _>| {
        *hi += 1;
        if *hi == *overflow {
            w.width += 1;
            *overflow <<= 1;
        }
        if *hi == 4095 {
            w.write(256);
            w.width = 9;
            *hi = 257;
            *overflow = 512;
            table.clear();
            return true;
        }
        false
    };
    for &x in rest {
        let key = code << 8 | u32::from(x);
        if let Some(&c) = table.get(&key) {
            code = c;
            continue;
        }
        w.write(code);
        code = u32::from(x);
        if !inc_hi(&mut w, &mut hi, &mut overflow, &mut table) {
            table.insert(key, hi);
        }
    }
    w.write(code);
    inc_hi(&mut w, &mut hi, &mut overflow, &mut table);
    w.write(257);
    if w.n_bits > 0 {
        w.out.push(w.bits as u8);
    }
    w.out
}

/// util.go `compressPayload`: `compress{Algo: 0, Buf: lzw}` as a type-9 message.
pub(super) fn compress_message(inner: &[u8]) -> Vec<u8> {
    let mut e = Enc::new(u8::from(MessageType::Compress));
    e.map(2);
    e.key("Algo");
    e.uint(0);
    e.key("Buf");
    e.raw(&lzw_encode(inner));
    e.out
}
