//! Stream-only message bodies: the push/pull state exchange and the stream user message.

use super::codec::decode_err;
use super::error::{Result, WireError};
use super::limits::{MAX_PUSH_NODES, MAX_USER_MSG, MAX_USER_STATE};
use super::msgpack::{Dec, Enc, mp_err};
use crate::cluster::messages::{MessageType, NodeState, PushNodeState, PushPull};

// ---------------------------------------------------------------------------------------------
// Push/pull (net.go sendLocalState / readRemoteState).
// ---------------------------------------------------------------------------------------------

/// Push/pull encoding for a TCP stream (type byte included), and decoding.
///
/// Layout (`sendLocalState`): type 6, `pushPullHeader{Nodes, UserStateLen, Join}`, one
/// `pushNodeState` map per node, then the user state bytes.
pub fn encode_push_pull(pp: &PushPull) -> Vec<u8> {
    let mut e = Enc::new(MessageType::PushPull.into());
    // Header fields sorted: Join < Nodes < UserStateLen. Go `int`s use EncodeInt.
    e.map(3);
    e.key("Join");
    e.bool(pp.join);
    e.key("Nodes");
    e.int(i64::try_from(pp.nodes.len()).unwrap_or(i64::MAX));
    e.key("UserStateLen");
    e.int(i64::try_from(pp.user_state.len()).unwrap_or(i64::MAX));
    for n in &pp.nodes {
        encode_node(&mut e, n);
    }
    e.out.extend_from_slice(&pp.user_state);
    e.out
}

/// One `pushNodeState`, fields sorted: Addr, Incarnation, Meta, Name, Port, State, Vsn.
pub(super) fn encode_node(e: &mut Enc, n: &PushNodeState) {
    e.map(7);
    e.key("Addr");
    e.bytes(&n.addr);
    e.key("Incarnation");
    e.uint(n.incarnation.into());
    e.key("Meta");
    e.bytes(&n.meta);
    e.key("Name");
    e.raw(n.name.as_bytes());
    e.key("Port");
    e.uint(n.port.into());
    e.key("State");
    // NodeStateType is a Go int.
    e.int(n.state as i64);
    e.key("Vsn");
    e.bytes(&n.vsn);
}

/// Decodes a push/pull message, type byte first (as returned by [`open_stream`](super::open_stream)).
///
/// An `errResp` in its place (net.go `sendAndReceiveState`) becomes [`WireError::Remote`].
/// More than 100 000 nodes or more than 64 MiB of user state is refused. Bytes after the user
/// state are ignored, as `readRemoteState` reads exactly `UserStateLen` bytes.
pub fn decode_push_pull(buf: &[u8]) -> std::result::Result<PushPull, WireError> {
    let (&t, body) = buf.split_first().ok_or(WireError::Truncated)?;
    if MessageType::try_from(t) != Ok(MessageType::PushPull) {
        return Err(type_error(t, body));
    }
    let mut d = Dec::new(body);
    let (count, user_len, join) = decode_push_pull_header(&mut d)?;
    // Each node takes at least one byte: never reserve more than the buffer could hold.
    let mut nodes = Vec::with_capacity(count.min(d.remaining()));
    for _ in 0..count {
        nodes.push(decode_node(&mut d)?);
    }
    let user_state = d.take(user_len)?.to_vec();
    Ok(PushPull {
        join,
        nodes,
        user_state,
    })
}

/// `pushPullHeader` with memberlist's sanity checks on both counts.
fn decode_push_pull_header(d: &mut Dec<'_>) -> Result<(usize, usize, bool)> {
    let (mut nodes, mut user_len, mut join) = (0i64, 0i64, false);
    d.fields(&["Nodes", "UserStateLen", "Join"], |d, i| {
        match i {
            0 => nodes = d.int("Nodes")?,
            1 => user_len = d.int("UserStateLen")?,
            _ => join = d.bool("Join")?,
        }
        Ok(())
    })?;
    Ok((
        checked_len(nodes, MAX_PUSH_NODES)?,
        checked_len(user_len, MAX_USER_STATE)?,
        join,
    ))
}

fn decode_node(d: &mut Dec<'_>) -> Result<PushNodeState> {
    const FIELDS: &[&str] = &[
        "Name",
        "Addr",
        "Port",
        "Meta",
        "Incarnation",
        "State",
        "Vsn",
    ];
    let mut n = PushNodeState {
        name: String::new(),
        addr: Vec::new(),
        port: 0,
        meta: Vec::new(),
        incarnation: 0,
        // Go's zero value for NodeStateType is StateAlive.
        state: NodeState::Alive,
        vsn: Vec::new(),
    };
    d.fields(FIELDS, |d, i| {
        match i {
            0 => n.name = d.string("Name")?,
            1 => n.addr = d.bytes("Addr")?,
            2 => n.port = d.uint("Port")?,
            3 => n.meta = d.bytes("Meta")?,
            4 => n.incarnation = d.uint("Incarnation")?,
            5 => n.state = node_state(d.int("State")?)?,
            _ => n.vsn = d.bytes("Vsn")?,
        }
        Ok(())
    })?;
    Ok(n)
}

/// state.go's four states; memberlist never sends others.
fn node_state(v: i64) -> Result<NodeState> {
    Ok(match v {
        0 => NodeState::Alive,
        1 => NodeState::Suspect,
        2 => NodeState::Dead,
        3 => NodeState::Left,
        _ => return Err(mp_err("State", &format!("unknown node state {v}"))),
    })
}

// ---------------------------------------------------------------------------------------------
// Stream user messages (net.go sendUserMsg / readUserMsg).
// ---------------------------------------------------------------------------------------------

/// Decodes a stream user message (net.go `readUserMsg`), type byte first.
pub fn decode_user_stream(buf: &[u8]) -> std::result::Result<Vec<u8>, WireError> {
    let (&t, body) = buf.split_first().ok_or(WireError::Truncated)?;
    if MessageType::try_from(t) != Ok(MessageType::User) {
        return Err(type_error(t, body));
    }
    let mut d = Dec::new(body);
    let mut len = 0i64;
    d.fields(&["UserMsgLen"], |d, _| {
        len = d.int("UserMsgLen")?;
        Ok(())
    })?;
    let len = checked_len(len, MAX_USER_MSG)?;
    Ok(d.take(len)?.to_vec())
}

/// The error for an unexpected stream message: a remote `errResp` is surfaced as its text.
fn type_error(t: u8, body: &[u8]) -> WireError {
    match MessageType::try_from(t) {
        Ok(MessageType::Err) => match decode_err(&mut Dec::new(body)) {
            Ok(e) => WireError::Remote(e.error),
            Err(e) => e,
        },
        Ok(_) => WireError::UnexpectedType(t),
        Err(unknown) => unknown.into(),
    }
}

/// A Go `int` length from a header: negative or above `max` is refused (net.go checks both).
fn checked_len(v: i64, max: i64) -> Result<usize> {
    if !(0..=max).contains(&v) {
        return Err(WireError::TooLarge);
    }
    usize::try_from(v).map_err(|_| WireError::TooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::messages::{ErrResp, Message};
    use crate::cluster::wire::test_support::*;
    use crate::cluster::wire::{
        encode_message, open_stream, open_stream_reply, seal_stream, seal_stream_reply,
    };

    #[test]
    fn push_pull_round_trip_matches_go() {
        let pp = sample_push_pull();
        let bytes = encode_push_pull(&pp);
        // sendLocalState's buffer from Go for the same state.
        let go = hex(concat!(
            "0683a44a6f696ec3a54e6f64657303ac5573657253746174654c656e05",
            "87a441646472a47f000001ab496e6361726e6174696f6e01a44d657461c0a44e616d65a161",
            "a4506f7274cd1f0aa5537461746500a356736ea6010502020504",
            "87a441646472a47f000002ab496e6361726e6174696f6e02a44d657461a16da44e616d65a162",
            "a4506f7274cd1f0ba5537461746501a356736ea6010502020504",
            "87a441646472b000000000000000000000000000000001ab496e6361726e6174696f6e03a44d657461c0",
            "a44e616d65a163a4506f7274cd1f0ca5537461746503a356736ea6010502020504",
            "7374617465"
        ));
        assert_eq!(bytes, go);
        assert_eq!(decode_push_pull(&bytes), Ok(pp.clone()));
        // Through an encrypted, labelled stream both ways.
        let keys = keyring(&[&[5u8; 24]]);
        let s = seal_stream(bytes.clone(), b"dc1", &keys).expect("seal");
        assert_eq!(&s[..5], b"\xf4\x03dc1");
        assert_eq!(s[5], u8::from(MessageType::Encrypt));
        let inner = open_stream(&s, b"dc1", &keys).expect("open");
        assert_eq!(decode_push_pull(&inner), Ok(pp.clone()));
        let r = seal_stream_reply(bytes, b"dc1", &keys).expect("reply");
        assert_eq!(r[0], u8::from(MessageType::Encrypt));
        let inner = open_stream_reply(&r, b"dc1", &keys).expect("open reply");
        assert_eq!(decode_push_pull(&inner), Ok(pp));
    }

    #[test]
    fn push_pull_header_int_encoding_and_limits() {
        // Go `int` 200 and 70000 use signed int16/int32 markers (EncodeInt), from Go output.
        let mut e = Enc::new(6);
        e.map(3);
        e.key("Join");
        e.bool(false);
        e.key("Nodes");
        e.int(200);
        e.key("UserStateLen");
        e.int(70_000);
        assert_eq!(
            e.out,
            hex("0683a44a6f696ec2a54e6f646573d100c8ac5573657253746174654c656ed200011170")
        );
        // That header promises 200 nodes that are not there.
        assert_eq!(decode_push_pull(&e.out), Err(WireError::Truncated));

        let header = |nodes: i64, user: i64| {
            let mut e = Enc::new(6);
            e.map(2);
            e.key("Nodes");
            e.int(nodes);
            e.key("UserStateLen");
            e.int(user);
            e.out
        };
        assert_eq!(
            decode_push_pull(&header(100_001, 0)),
            Err(WireError::TooLarge)
        );
        assert_eq!(decode_push_pull(&header(-1, 0)), Err(WireError::TooLarge));
        assert_eq!(
            decode_push_pull(&header(0, 64 * 1024 * 1024 + 1)),
            Err(WireError::TooLarge)
        );
        assert_eq!(decode_push_pull(&header(0, 10)), Err(WireError::Truncated));
        let empty = PushPull::default();
        assert_eq!(decode_push_pull(&header(0, 0)), Ok(empty));
        // Unknown node state.
        let mut pp = encode_push_pull(&PushPull {
            nodes: sample_push_pull().nodes[..1].to_vec(),
            ..PushPull::default()
        });
        let at = pp
            .windows(6)
            .position(|w| w == b"\xa5State")
            .expect("State key")
            + 6;
        pp[at] = 9;
        assert!(matches!(decode_push_pull(&pp), Err(WireError::Msgpack(_))));
        // An errResp in place of the push/pull.
        let err = encode_message(&Message::Err(ErrResp { error: "no".into() }));
        assert_eq!(decode_push_pull(&err), Err(WireError::Remote("no".into())));
        assert_eq!(decode_push_pull(&[7]), Err(WireError::UnexpectedType(7)));
    }

    #[test]
    fn user_messages_on_streams() {
        // "hello" as memberlist's `sendUserMsg` writes it: type 8, then
        // `userMsgHeader{UserMsgLen: 5}` (a one-entry map), then the bytes.
        let b = b"\x08\x81\xaaUserMsgLen\x05hello".to_vec();
        assert_eq!(decode_user_stream(&b), Ok(b"hello".to_vec()));
        assert_eq!(
            decode_user_stream(&b[..b.len() - 1]),
            Err(WireError::Truncated)
        );
        assert_eq!(decode_user_stream(&[0]), Err(WireError::UnexpectedType(0)));
    }
}
