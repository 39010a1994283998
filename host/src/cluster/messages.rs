//! Gossip messages, one struct per memberlist message body (field names as memberlist
//! sends them), so the wire codec can speak memberlist's protocol byte for byte.

/// memberlist's message type codes (first byte of every packet or stream message): net.go's
/// `messageType` list plus label.go's `hasLabelMsg`. Bytes become types with `TryFrom<u8>`,
/// types become bytes with `u8::from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    Ping = 0,
    IndirectPing = 1,
    AckResp = 2,
    Suspect = 3,
    Alive = 4,
    Dead = 5,
    PushPull = 6,
    Compound = 7,
    User = 8,
    Compress = 9,
    Encrypt = 10,
    NackResp = 11,
    HasCrc = 12,
    Err = 13,
    HasLabel = 244,
}

/// A byte that is none of memberlist's message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown message type {0}")]
pub struct UnknownMessageType(pub u8);

impl TryFrom<u8> for MessageType {
    type Error = UnknownMessageType;

    fn try_from(byte: u8) -> Result<Self, Self::Error> {
        Ok(match byte {
            0 => MessageType::Ping,
            1 => MessageType::IndirectPing,
            2 => MessageType::AckResp,
            3 => MessageType::Suspect,
            4 => MessageType::Alive,
            5 => MessageType::Dead,
            6 => MessageType::PushPull,
            7 => MessageType::Compound,
            8 => MessageType::User,
            9 => MessageType::Compress,
            10 => MessageType::Encrypt,
            11 => MessageType::NackResp,
            12 => MessageType::HasCrc,
            13 => MessageType::Err,
            244 => MessageType::HasLabel,
            _ => return Err(UnknownMessageType(byte)),
        })
    }
}

impl From<MessageType> for u8 {
    fn from(t: MessageType) -> u8 {
        t as u8
    }
}

/// A member's state as memberlist numbers it in push/pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NodeState {
    Alive = 0,
    Suspect = 1,
    Dead = 2,
    Left = 3,
}

/// `ping`: direct probe. `node` lets the target check it is the intended recipient.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ping {
    pub seq_no: u32,
    pub node: String,
    /// Where to reply directly (empty = reply to the packet's source).
    pub source_addr: Vec<u8>,
    pub source_port: u16,
    pub source_node: String,
}

/// `indirectPingReq`: asks a peer to probe `node` at `target:port` for us.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IndirectPingReq {
    pub seq_no: u32,
    pub target: Vec<u8>,
    pub port: u16,
    pub node: String,
    /// Whether we want a nack when the target does not answer.
    pub nack: bool,
    pub source_addr: Vec<u8>,
    pub source_port: u16,
    pub source_node: String,
}

/// `ackResp`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckResp {
    pub seq_no: u32,
    pub payload: Vec<u8>,
}

/// `nackResp`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NackResp {
    pub seq_no: u32,
}

/// `errResp`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrResp {
    pub error: String,
}

/// `suspect`: `from` suspects `node` at `incarnation`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Suspect {
    pub incarnation: u32,
    pub node: String,
    pub from: String,
}

/// `alive`: `node` is alive at `incarnation`, reachable at `addr:port`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Alive {
    pub incarnation: u32,
    pub node: String,
    /// 4 (IPv4) or 16 (IPv6) bytes.
    pub addr: Vec<u8>,
    pub port: u16,
    pub meta: Vec<u8>,
    /// pmin, pmax, pcur, dmin, dmax, dcur.
    pub vsn: Vec<u8>,
}

/// `dead`: `from` declares `node` dead at `incarnation` (`from == node` = it left).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dead {
    pub incarnation: u32,
    pub node: String,
    pub from: String,
}

/// `pushPullHeader`: starts a TCP state exchange.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushPullHeader {
    pub nodes: u32,
    pub user_state_len: u32,
    pub join: bool,
}

/// `pushNodeState`: one member in a push/pull exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushNodeState {
    pub name: String,
    pub addr: Vec<u8>,
    pub port: u16,
    pub meta: Vec<u8>,
    pub incarnation: u32,
    pub state: NodeState,
    pub vsn: Vec<u8>,
}

/// A whole push/pull exchange (one direction).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushPull {
    pub join: bool,
    pub nodes: Vec<PushNodeState>,
    /// The delegate's (our registry's) full state.
    pub user_state: Vec<u8>,
}

/// One decoded packet-level message (after compound/CRC/label/encryption unwrapping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Ping(Ping),
    IndirectPing(IndirectPingReq),
    Ack(AckResp),
    Nack(NackResp),
    Err(ErrResp),
    Suspect(Suspect),
    Alive(Alive),
    Dead(Dead),
    /// A delegate (registry) message carried in memberlist's user-message slot.
    User(Vec<u8>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_bytes_round_trip() {
        // Exactly net.go's 0..=13 and label.go's 244 are message types.
        for byte in 0..=u8::MAX {
            match MessageType::try_from(byte) {
                Ok(t) => {
                    assert!(byte <= 13 || byte == 244, "{byte}");
                    assert_eq!(u8::from(t), byte);
                }
                Err(e) => {
                    assert!(byte > 13 && byte != 244, "{byte}");
                    assert_eq!(e, UnknownMessageType(byte));
                }
            }
        }
    }
}
