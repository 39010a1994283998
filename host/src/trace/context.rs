//! W3C trace context (`traceparent`), pure: parse a client's, decide sampling, write
//! the one sent upstream.

/// A span's place in a trace: what `traceparent` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

/// Length of a version-00 `traceparent`: `00-` 32 hex `-` 16 hex `-` 2 hex.
pub const TRACEPARENT_LEN: usize = 55;

/// Parses a `traceparent` value. Per the W3C rules: version `ff` and all-zero ids are
/// invalid; a future version is read as version 00 when its first 55 bytes fit (and
/// what follows starts with `-`); upper-case hex is invalid.
pub fn parse_traceparent(value: &[u8]) -> Option<SpanContext> {
    if value.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex_u8(&value[0..2])?;
    if version == 0xff
        || (version == 0 && value.len() != TRACEPARENT_LEN)
        || (version != 0 && value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-')
    {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex_u128(&value[3..35])?;
    let span_id = hex_u64(&value[36..52])?;
    let flags = hex_u8(&value[53..55])?;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// Writes `00-{trace}-{span}-{flags}` (55 bytes) without allocating.
pub fn format_traceparent(context: &SpanContext) -> [u8; TRACEPARENT_LEN] {
    let mut out = [0u8; TRACEPARENT_LEN];
    out[0] = b'0';
    out[1] = b'0';
    out[2] = b'-';
    write_hex(&mut out[3..35], context.trace_id);
    out[35] = b'-';
    write_hex(&mut out[36..52], u128::from(context.span_id));
    out[52] = b'-';
    out[53] = b'0';
    out[54] = if context.sampled { b'1' } else { b'0' };
    out
}

/// OpenTelemetry's `TraceIdRatioBased` decision: the trace id's low 64 bits, shifted
/// right once, below the ratio's bound (see `plan::sample_bound`).
pub fn ratio_sampled(trace_id: u128, bound: u64) -> bool {
    ((trace_id as u64) >> 1) < bound
}

/// Lower-case hex of `value` into `out` (as many low-order digits as `out` holds).
pub fn write_hex(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_u128(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, &b| {
        Some((acc << 4) | u128::from(hex_digit(b)?))
    })
}

fn hex_u64(digits: &[u8]) -> Option<u64> {
    hex_u128(digits).map(|v| v as u64)
}

fn hex_u8(digits: &[u8]) -> Option<u8> {
    hex_u128(digits).map(|v| v as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_spec_example() {
        let context = parse_traceparent(GOOD).unwrap();
        assert_eq!(context.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(context.span_id, 0x00f067aa0ba902b7);
        assert!(context.sampled);
        assert_eq!(&format_traceparent(&context)[..], GOOD);
        let unsampled = SpanContext {
            sampled: false,
            ..context
        };
        assert!(format_traceparent(&unsampled).ends_with(b"-00"));
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        for bad in [
            &b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"",
        ] {
            assert_eq!(
                parse_traceparent(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A later version may carry more fields after a dash.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn ratio_sampling_follows_the_bound() {
        let half = crate::plan::sample_bound(0.5);
        assert!(ratio_sampled(0, half));
        assert!(!ratio_sampled(u128::from(u64::MAX), half));
        assert!(ratio_sampled(u128::MAX, crate::plan::sample_bound(1.0)));
        assert!(!ratio_sampled(0, crate::plan::sample_bound(0.0)));
    }
}
