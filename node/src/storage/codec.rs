//! Varint / zigzag primitives for the record and block encodings.

use crate::error::NodeError;

/// Appends `value` as an LEB128 varint.
pub fn put_varint(buffer: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buffer.push((value as u8) | 0x80);
        value >>= 7;
    }
    buffer.push(value as u8);
}

/// Appends a signed value, zigzag-encoded.
pub fn put_signed(buffer: &mut Vec<u8>, value: i64) {
    put_varint(buffer, ((value << 1) ^ (value >> 63)) as u64);
}

/// Reads values back from a buffer; every read fails cleanly on truncated or
/// corrupt input instead of panicking.
pub struct Reader<'buffer> {
    bytes: &'buffer [u8],
    position: usize,
    what: &'static str,
}

impl<'buffer> Reader<'buffer> {
    /// A reader over `bytes`; `what` names the record in errors.
    pub fn new(bytes: &'buffer [u8], what: &'static str) -> Self {
        Reader {
            bytes,
            position: 0,
            what,
        }
    }

    fn corrupt(&self, detail: &str) -> NodeError {
        NodeError::Corrupt(format!("{} at byte {}: {detail}", self.what, self.position))
    }

    /// Reads an LEB128 varint.
    pub fn varint(&mut self) -> Result<u64, NodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(byte) = self.bytes.get(self.position) else {
                return Err(self.corrupt("truncated varint"));
            };
            self.position += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.corrupt("varint longer than 10 bytes"))
    }

    /// Reads a zigzag-encoded signed value.
    pub fn signed(&mut self) -> Result<i64, NodeError> {
        let raw = self.varint()?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    /// Reads a fixed big-endian u64.
    pub fn fixed_u64(&mut self) -> Result<u64, NodeError> {
        let bytes = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_be_bytes(array))
    }

    /// Reads one byte.
    pub fn byte(&mut self) -> Result<u8, NodeError> {
        Ok(self.take(1)?[0])
    }

    /// Reads `length` raw bytes.
    pub fn take(&mut self, length: usize) -> Result<&'buffer [u8], NodeError> {
        let end = self
            .position
            .checked_add(length)
            .filter(|end| *end <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.corrupt("truncated"));
        };
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    /// Reads a count that must fit in what is left of the buffer (one byte per item
    /// at least), so that corrupt counts cannot make a reader allocate wildly.
    pub fn count(&mut self) -> Result<usize, NodeError> {
        let count = self.varint()?;
        if count > (self.bytes.len() - self.position) as u64 {
            return Err(self.corrupt("count larger than the record"));
        }
        Ok(count as usize)
    }

    /// True when every byte was read.
    pub fn is_at_end(&self) -> bool {
        self.position == self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn varints_round_trip(values in prop::collection::vec(any::<i64>(), 0..50)) {
            let mut buffer = Vec::new();
            for value in &values {
                put_signed(&mut buffer, *value);
                put_varint(&mut buffer, *value as u64);
            }
            let mut reader = Reader::new(&buffer, "test");
            for value in &values {
                prop_assert_eq!(reader.signed().unwrap(), *value);
                prop_assert_eq!(reader.varint().unwrap(), *value as u64);
            }
            prop_assert!(reader.is_at_end());
        }

        #[test]
        fn truncated_input_is_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..20)) {
            let mut reader = Reader::new(&bytes, "test");
            while reader.varint().is_ok() {}
        }
    }
}
