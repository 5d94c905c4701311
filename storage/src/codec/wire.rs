//! Primitive encodings shared by every codec in this crate: LEB128 varints, zigzag signed
//! integers, length-prefixed byte strings, and a bounds-checked [`Reader`] that turns every
//! malformed input into a [`DecodeError`] instead of a panic.
//!
//! Invariants: writers never fail (they append to a `Vec<u8>`); readers never index past the
//! end of their input, never allocate more than the input could describe, and reject
//! non-canonical varints (over-long or overflowing), so each value has exactly one encoding.

use std::fmt;

/// Longest LEB128 encoding of a `u64`, in bytes.
pub const MAX_VARINT_LEN: usize = 10;

/// Why bytes could not be decoded, and where. Decoding errors always mean the bytes are not
/// what an encoder of this crate produced: corruption, never a reason to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Offset of the offending byte within the decoded buffer.
    pub offset: usize,
    /// What check failed, for a human.
    pub reason: String,
}

impl DecodeError {
    /// A decode error at `offset`.
    pub fn new(offset: usize, reason: impl Into<String>) -> Self {
        Self {
            offset,
            reason: reason.into(),
        }
    }

    /// This error as an [`crate::Error::Corruption`] of the bytes found at `base_offset` in
    /// `path` (the error's own offset is added to `base_offset`).
    pub fn into_corruption(
        self,
        path: impl Into<std::path::PathBuf>,
        base_offset: u64,
    ) -> crate::Error {
        let offset = base_offset.saturating_add(u64::try_from(self.offset).unwrap_or(u64::MAX));
        crate::Error::corruption(path, offset, self.reason)
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for DecodeError {}

/// A decode error with no file behind it (an encoded value held in memory) becomes a
/// corruption of `<encoded value>`.
impl From<DecodeError> for crate::Error {
    fn from(e: DecodeError) -> Self {
        e.into_corruption("<encoded value>", 0)
    }
}

/// Appends `v` as an unsigned LEB128 varint (1 to 10 bytes).
#[inline]
pub fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        // Truncation is the point: the low 7 bits plus the continuation bit.
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends `v` zigzag-encoded as a varint, so small negative numbers stay short.
#[inline]
pub fn put_ivarint(buf: &mut Vec<u8>, v: i64) {
    put_uvarint(buf, zigzag(v));
}

/// Appends a length-prefixed byte string.
#[inline]
pub fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    put_uvarint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// Maps signed to unsigned so that values near zero have short varints.
#[inline]
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zigzag`].
#[inline]
pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A cursor over an input buffer whose every read is bounds-checked.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Current offset from the start of the buffer.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// A decode error at the current position.
    pub fn error(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError::new(self.pos, reason)
    }

    /// Fails unless every byte was consumed: trailing bytes mean the encoder and decoder
    /// disagree about the layout.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(self.error(format!("{} trailing bytes", self.remaining())))
        }
    }

    /// Reads one byte.
    pub fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| self.error(format!("truncated {what}")))?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads exactly `n` bytes.
    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(self.error(format!(
                "truncated {what}: needs {n} bytes, {} left",
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Reads a canonical unsigned LEB128 varint.
    pub fn uvarint(&mut self, what: &str) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for i in 0..MAX_VARINT_LEN {
            let b = self.u8(what)?;
            let bits = u64::from(b & 0x7f);
            if i == MAX_VARINT_LEN - 1 && b > 0x01 {
                return Err(DecodeError::new(
                    start,
                    format!("{what}: varint overflows u64"),
                ));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(DecodeError::new(start, format!("{what}: over-long varint")));
                }
                return Ok(v);
            }
        }
        Err(DecodeError::new(
            start,
            format!("{what}: varint longer than 10 bytes"),
        ))
    }

    /// Reads a zigzag varint.
    pub fn ivarint(&mut self, what: &str) -> Result<i64, DecodeError> {
        self.uvarint(what).map(unzigzag)
    }

    /// Reads a varint length and checks it against both `max` and the bytes left, so a bad
    /// length can never cause a large allocation.
    pub fn len(&mut self, max: usize, what: &str) -> Result<usize, DecodeError> {
        let start = self.pos;
        let n = self.uvarint(what)?;
        let n = usize::try_from(n)
            .map_err(|_| DecodeError::new(start, format!("{what}: length {n} too large")))?;
        if n > max {
            return Err(DecodeError::new(
                start,
                format!("{what}: length {n} exceeds the limit of {max}"),
            ));
        }
        if n > self.remaining() {
            return Err(DecodeError::new(
                start,
                format!(
                    "{what}: length {n} exceeds the {} bytes left",
                    self.remaining()
                ),
            ));
        }
        Ok(n)
    }

    /// Reads a length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let n = self.len(max, what)?;
        self.take(n, what)
    }

    /// Reads a length-prefixed UTF-8 string of at most `max` bytes.
    pub fn string(&mut self, max: usize, what: &str) -> Result<String, DecodeError> {
        let start = self.pos;
        let b = self.bytes(max, what)?;
        let s = std::str::from_utf8(b)
            .map_err(|e| DecodeError::new(start, format!("{what}: not UTF-8: {e}")))?;
        Ok(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_roundtrip_at_every_length_boundary() {
        let values = [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ];
        for v in values {
            let mut buf = Vec::new();
            put_uvarint(&mut buf, v);
            let mut r = Reader::new(&buf);
            assert_eq!(r.uvarint("v"), Ok(v));
            assert!(r.finish().is_ok());
        }
        for v in [0, 1, -1, 63, -64, 64, i64::MIN, i64::MAX] {
            let mut buf = Vec::new();
            put_ivarint(&mut buf, v);
            assert_eq!(Reader::new(&buf).ivarint("v"), Ok(v));
        }
    }

    #[test]
    fn small_signed_values_encode_in_one_byte() {
        for v in -64..64 {
            let mut buf = Vec::new();
            put_ivarint(&mut buf, v);
            assert_eq!(buf.len(), 1, "{v}");
        }
    }

    #[test]
    fn non_canonical_and_overflowing_varints_are_refused() {
        // Over-long zero.
        assert!(Reader::new(&[0x80, 0x00]).uvarint("v").is_err());
        // Eleven bytes.
        assert!(Reader::new(&[0xff; 11]).uvarint("v").is_err());
        // Tenth byte carries bits beyond 64.
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert!(Reader::new(&over).uvarint("v").is_err());
        // Truncated.
        assert!(Reader::new(&[0x80]).uvarint("v").is_err());
    }

    #[test]
    fn lengths_beyond_the_input_or_the_limit_are_refused() {
        let mut buf = Vec::new();
        put_uvarint(&mut buf, 1_000_000);
        assert!(Reader::new(&buf).bytes(usize::MAX, "b").is_err());
        let mut buf = Vec::new();
        put_bytes(&mut buf, b"abcdef");
        assert!(Reader::new(&buf).bytes(5, "b").is_err());
        assert_eq!(Reader::new(&buf).bytes(6, "b"), Ok(&b"abcdef"[..]));
    }
}
