//! msgpack exactly as go-codec's default `MsgpackHandle` writes and reads it.
//!
//! The msgpack layer is written by hand over [`rmp::Marker`] rather than with `rmp::encode` /
//! `rmp-serde`: go-codec's default handle (`WriteExt == false`, go-msgpack v2.1.5 `msgpack.go`)
//! uses the *old* msgpack spec: strings and `[]byte` are both "raw" (fixstr / str16 / str32,
//! never str8 nor bin), nil slices are `nil`, Go `int` values above 127 use the *signed* int16/32/64
//! markers, and struct fields are written as a map sorted by field name (`encode.go` `kStruct`
//! uses `sfiSort`). rmp's helpers pick str8/bin8 and unsigned markers, which would not be
//! byte-identical.

use std::borrow::Cow;

use rmp::Marker;

use super::error::{Result, WireError};

// ---------------------------------------------------------------------------------------------
// msgpack encoder: go-codec MsgpackHandle{} defaults (go-msgpack v2.1.5 codec/msgpack.go).
// ---------------------------------------------------------------------------------------------

pub(super) struct Enc {
    pub(super) out: Vec<u8>,
}

impl Enc {
    pub(super) fn new(type_byte: u8) -> Self {
        Enc {
            out: vec![type_byte],
        }
    }

    fn marker(&mut self, m: Marker) {
        self.out.push(m.to_u8());
    }

    /// `writeContainerLen(msgpackContainerMap, n)`: fixmap below 16, then map16, map32.
    pub(super) fn map(&mut self, n: usize) {
        if n < 16 {
            self.marker(Marker::FixMap(n as u8));
        } else if let Ok(n) = u16::try_from(n) {
            self.marker(Marker::Map16);
            self.out.extend_from_slice(&n.to_be_bytes());
        } else {
            self.marker(Marker::Map32);
            self.out.extend_from_slice(&len_u32(n).to_be_bytes());
        }
    }

    /// `writeContainerLen(msgpackContainerRawLegacy, n)`: with `WriteExt == false` both Go
    /// strings and `[]byte` are old-spec raw: fixstr below 32, then str16, str32 (no str8).
    pub(super) fn raw(&mut self, b: &[u8]) {
        if b.len() < 32 {
            self.marker(Marker::FixStr(b.len() as u8));
        } else if let Ok(n) = u16::try_from(b.len()) {
            self.marker(Marker::Str16);
            self.out.extend_from_slice(&n.to_be_bytes());
        } else {
            self.marker(Marker::Str32);
            self.out.extend_from_slice(&len_u32(b.len()).to_be_bytes());
        }
        self.out.extend_from_slice(b);
    }

    /// A struct field name (`encStructFieldKey` → `EncodeStringEnc`, raw legacy).
    pub(super) fn key(&mut self, k: &str) {
        self.raw(k.as_bytes());
    }

    /// A Go `[]byte`: `EncodeStringBytesRaw` writes nil for a nil slice. Rust cannot tell nil
    /// from empty, so empty is written as nil, which is what memberlist sends in practice
    /// (`ackResp{seq, nil}`, `Meta` without a delegate).
    pub(super) fn bytes(&mut self, b: &[u8]) {
        if b.is_empty() {
            self.marker(Marker::Null);
        } else {
            self.raw(b);
        }
    }

    /// `EncodeUint`: positive fixint up to 127, then uint8/16/32/64.
    pub(super) fn uint(&mut self, v: u64) {
        if v <= 127 {
            self.marker(Marker::FixPos(v as u8));
        } else if let Ok(v) = u8::try_from(v) {
            self.marker(Marker::U8);
            self.out.push(v);
        } else if let Ok(v) = u16::try_from(v) {
            self.marker(Marker::U16);
            self.out.extend_from_slice(&v.to_be_bytes());
        } else if let Ok(v) = u32::try_from(v) {
            self.marker(Marker::U32);
            self.out.extend_from_slice(&v.to_be_bytes());
        } else {
            self.marker(Marker::U64);
            self.out.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// `EncodeInt` (PositiveIntUnsigned=false): 0..=127 fixint, larger positives use the
    /// *signed* int16/int32/int64 markers (never int8), negatives fixneg/int8/16/32/64.
    pub(super) fn int(&mut self, v: i64) {
        if (-32..=127).contains(&v) {
            // Positive and negative fixint share the one-byte two's-complement form.
            self.out.push(v as i8 as u8);
        } else if let Ok(v) = i8::try_from(v) {
            // Only -128..=-33 get here: positives past 127 never fit int8.
            self.marker(Marker::I8);
            self.out.push(v as u8);
        } else if let Ok(v) = i16::try_from(v) {
            self.marker(Marker::I16);
            self.out.extend_from_slice(&v.to_be_bytes());
        } else if let Ok(v) = i32::try_from(v) {
            self.marker(Marker::I32);
            self.out.extend_from_slice(&v.to_be_bytes());
        } else {
            self.marker(Marker::I64);
            self.out.extend_from_slice(&v.to_be_bytes());
        }
    }

    pub(super) fn bool(&mut self, b: bool) {
        self.marker(if b { Marker::True } else { Marker::False });
    }
}

/// Lengths we encode come from our own buffers, which never approach 4 GiB (packets are
/// capped at 64 KiB, streams at [`MAX_STREAM_BYTES`](super::limits::MAX_STREAM_BYTES)); saturate rather than wrap just in case.
pub(super) fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------------
// msgpack decoder: accepts what go-codec's decoder accepts (msgpack.go `DecodeBytes`,
// `DecodeUint64`, `DecodeInt64`, `DecodeBool`; decode.go `kStruct`).
// ---------------------------------------------------------------------------------------------

pub(super) fn mp_err(field: &str, what: &str) -> WireError {
    WireError::Msgpack(format!("{field}: {what}"))
}

pub(super) struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(super) fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(WireError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(super) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn be16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn be32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn be64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(super) fn marker(&mut self) -> Result<Marker> {
        Ok(Marker::from_u8(self.u8()?))
    }

    /// Any integer marker as i128 (wide enough for both u64 and i64); `nil` reads as 0, since
    /// go-codec sets a field to its zero value on nil.
    fn integer(&mut self, field: &str) -> Result<i128> {
        Ok(match self.marker()? {
            Marker::Null => 0,
            Marker::FixPos(v) => v.into(),
            Marker::FixNeg(v) => v.into(),
            Marker::U8 => self.u8()?.into(),
            Marker::U16 => self.be16()?.into(),
            Marker::U32 => self.be32()?.into(),
            Marker::U64 => self.be64()?.into(),
            Marker::I8 => (self.u8()? as i8).into(),
            Marker::I16 => (self.be16()? as i16).into(),
            Marker::I32 => (self.be32()? as i32).into(),
            Marker::I64 => (self.be64()? as i64).into(),
            m => return Err(mp_err(field, &format!("expected integer, got {m:?}"))),
        })
    }

    pub(super) fn uint<T: TryFrom<i128>>(&mut self, field: &str) -> Result<T> {
        let v = self.integer(field)?;
        T::try_from(v).map_err(|_| mp_err(field, &format!("value {v} out of range")))
    }

    /// A Go `int` (push/pull header counts).
    pub(super) fn int(&mut self, field: &str) -> Result<i64> {
        self.uint(field)
    }

    /// `DecodeBool`: true/false, or fixint 0/1.
    pub(super) fn bool(&mut self, field: &str) -> Result<bool> {
        match self.marker()? {
            Marker::Null | Marker::False | Marker::FixPos(0) => Ok(false),
            Marker::True | Marker::FixPos(1) => Ok(true),
            m => Err(mp_err(field, &format!("expected bool, got {m:?}"))),
        }
    }

    /// `DecodeBytes`: raw str (any of fixstr/str8/16/32, no UTF-8 check), bin8/16/32, an array
    /// of small integers, or nil (empty).
    pub(super) fn raw(&mut self, field: &str) -> Result<Cow<'a, [u8]>> {
        let len = match self.marker()? {
            Marker::Null => return Ok(Cow::Borrowed(&[])),
            Marker::FixStr(n) => n.into(),
            Marker::Str8 | Marker::Bin8 => self.u8()?.into(),
            Marker::Str16 | Marker::Bin16 => self.be16()?.into(),
            Marker::Str32 | Marker::Bin32 => self.be32()?,
            Marker::FixArray(n) => return self.byte_array(n.into(), field).map(Cow::Owned),
            Marker::Array16 => {
                let n = self.be16()?.into();
                return self.byte_array(n, field).map(Cow::Owned);
            }
            Marker::Array32 => {
                let n = self.be32()?;
                return self.byte_array(n, field).map(Cow::Owned);
            }
            m => return Err(mp_err(field, &format!("expected bytes, got {m:?}"))),
        };
        let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
        self.take(len).map(Cow::Borrowed)
    }

    /// go-codec also decodes `[]byte` from an array of uint8 (`DecSliceUint8V`).
    fn byte_array(&mut self, n: u32, field: &str) -> Result<Vec<u8>> {
        let n = usize::try_from(n).map_err(|_| WireError::Truncated)?;
        // Each element takes at least one byte, so never reserve more than what is left.
        let mut v = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            v.push(self.uint::<u8>(field)?);
        }
        Ok(v)
    }

    pub(super) fn bytes(&mut self, field: &str) -> Result<Vec<u8>> {
        self.raw(field).map(Cow::into_owned)
    }

    /// A Go string. Go strings may hold any bytes; Rust's must be UTF-8, so invalid names are
    /// rejected rather than silently altered (a lossy rewrite could make two members collide).
    pub(super) fn string(&mut self, field: &str) -> Result<String> {
        let raw = self.bytes(field)?;
        String::from_utf8(raw).map_err(|_| mp_err(field, "invalid UTF-8"))
    }

    /// Skips one value of any type (unknown struct fields; decode.go `structFieldNotFound`).
    /// Iterative, so deeply nested garbage cannot overflow the stack.
    pub(super) fn skip(&mut self) -> Result<()> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let extra: u64 = match self.marker()? {
                Marker::FixArray(n) => n.into(),
                Marker::Array16 => self.be16()?.into(),
                Marker::Array32 => self.be32()?.into(),
                Marker::FixMap(n) => u64::from(n) * 2,
                Marker::Map16 => u64::from(self.be16()?) * 2,
                Marker::Map32 => u64::from(self.be32()?) * 2,
                m => {
                    let n = self.scalar_len(m)?;
                    self.take(n)?;
                    0
                }
            };
            pending += extra;
            // Every pending value needs at least one more byte.
            if pending > self.remaining() as u64 {
                return Err(WireError::Truncated);
            }
        }
        Ok(())
    }

    /// How many bytes follow a non-container marker.
    fn scalar_len(&mut self, m: Marker) -> Result<usize> {
        let n: u64 = match m {
            Marker::Null | Marker::True | Marker::False | Marker::FixPos(_) | Marker::FixNeg(_) => {
                0
            }
            Marker::U8 | Marker::I8 => 1,
            Marker::U16 | Marker::I16 => 2,
            Marker::U32 | Marker::I32 | Marker::F32 => 4,
            Marker::U64 | Marker::I64 | Marker::F64 => 8,
            Marker::FixStr(n) => n.into(),
            Marker::Str8 | Marker::Bin8 => self.u8()?.into(),
            Marker::Str16 | Marker::Bin16 => self.be16()?.into(),
            Marker::Str32 | Marker::Bin32 => self.be32()?.into(),
            Marker::FixExt1 => 2,
            Marker::FixExt2 => 3,
            Marker::FixExt4 => 5,
            Marker::FixExt8 => 9,
            Marker::FixExt16 => 17,
            Marker::Ext8 => u64::from(self.u8()?) + 1,
            Marker::Ext16 => u64::from(self.be16()?) + 1,
            Marker::Ext32 => u64::from(self.be32()?) + 1,
            m => return Err(mp_err("value", &format!("invalid marker {m:?}"))),
        };
        usize::try_from(n).map_err(|_| WireError::Truncated)
    }

    /// Decodes a Go struct (decode.go `kStruct`): a map keyed by field name (any order,
    /// unknown keys skipped), an array in Go declaration order (`names` must be in that
    /// order), or nil (all zero values). `visit` reads the value of field `names[i]`.
    pub(super) fn fields(
        &mut self,
        names: &[&str],
        mut visit: impl FnMut(&mut Self, usize) -> Result<()>,
    ) -> Result<()> {
        let (is_map, n) = match self.marker()? {
            Marker::Null => return Ok(()),
            Marker::FixMap(n) => (true, n.into()),
            Marker::Map16 => (true, self.be16()?.into()),
            Marker::Map32 => (true, self.be32()?),
            Marker::FixArray(n) => (false, n.into()),
            Marker::Array16 => (false, self.be16()?.into()),
            Marker::Array32 => (false, self.be32()?),
            m => return Err(mp_err("struct", &format!("expected map, got {m:?}"))),
        };
        for i in 0..n as usize {
            let idx = if is_map {
                let key = self.raw("field name")?;
                names.iter().position(|f| f.as_bytes() == key.as_ref())
            } else {
                (i < names.len()).then_some(i)
            };
            match idx {
                Some(idx) => visit(self, idx)?,
                None => self.skip()?,
            }
        }
        Ok(())
    }
}
