//! The label header (label.go) in front of labelled packets and streams, and its check.

use super::error::{Result, WireError};
use super::msgpack::Dec;
use crate::cluster::messages::MessageType;

// ---------------------------------------------------------------------------------------------
// Label header (label.go).
// ---------------------------------------------------------------------------------------------

/// `makeLabelHeader`: 244, u8 length, label bytes (nothing for an empty label).
pub(super) fn push_label_header(out: &mut Vec<u8>, label: &[u8]) -> Result<()> {
    if label.is_empty() {
        return Ok(());
    }
    let len = u8::try_from(label.len()).map_err(|_| WireError::LabelTooLong(label.len()))?;
    out.push(MessageType::HasLabel.into());
    out.push(len);
    out.extend_from_slice(label);
    Ok(())
}

/// `RemoveLabelHeaderFromPacket` / `...FromStream`: (label, rest); no header = empty label.
fn strip_label(buf: &[u8]) -> Result<(&[u8], &[u8])> {
    let Some((&t, after)) = buf.split_first() else {
        return Ok((&[], buf));
    };
    if MessageType::try_from(t) != Ok(MessageType::HasLabel) {
        return Ok((&[], buf));
    }
    let mut d = Dec::new(after);
    let size = usize::from(d.u8()?);
    if size == 0 {
        return Err(WireError::EmptyLabel);
    }
    let label = d.take(size)?;
    Ok((label, d.rest()))
}

/// memberlist drops packets and streams whose label differs from its own
/// (net.go `ingestPacket`, `handleConn`); an absent header counts as the empty label.
pub(super) fn check_label<'a>(buf: &'a [u8], expected: &[u8]) -> Result<&'a [u8]> {
    let (label, rest) = strip_label(buf)?;
    if label != expected {
        return Err(WireError::LabelMismatch);
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use crate::cluster::messages::Message;
    use crate::cluster::wire::test_support::*;
    use crate::cluster::wire::{Keyring, WireError, encode_message, open_packet, seal_packet};

    #[test]
    fn labels() {
        let ping = encode_message(&Message::Ping(ping_a()));
        let none = Keyring::default();
        let p = seal_packet(ping.clone(), b"dc1", false, &none).expect("seal");
        assert_eq!(&p[..5], b"\xf4\x03dc1");
        assert_eq!(&p[5..], &ping[..]);
        assert_eq!(
            open_packet(&p, b"dc1", &none),
            Ok(vec![Message::Ping(ping_a())])
        );
        // Different label, label missing, label unexpected: all dropped, as ingestPacket does.
        assert_eq!(
            open_packet(&p, b"dc2", &none),
            Err(WireError::LabelMismatch)
        );
        assert_eq!(
            open_packet(&ping, b"dc1", &none),
            Err(WireError::LabelMismatch)
        );
        assert_eq!(open_packet(&p, b"", &none), Err(WireError::LabelMismatch));
        // Empty or truncated label headers.
        assert_eq!(
            open_packet(&[244, 0, 0], b"", &none),
            Err(WireError::EmptyLabel)
        );
        assert_eq!(open_packet(&[244], b"a", &none), Err(WireError::Truncated));
        assert_eq!(
            open_packet(&[244, 5, b'a'], b"a", &none),
            Err(WireError::Truncated)
        );
        // Too long to send.
        assert_eq!(
            seal_packet(ping, &[b'x'; 256], false, &none),
            Err(WireError::LabelTooLong(256))
        );
    }
}
