//! Sample blocks: one series' samples of one profile, as compressed columns.
//!
//! Layout (version 1): `version u8`, `duration_ns` (zigzag), `total` (zigzag),
//! `scale` (varint, the GCD of all values), `n` (varint), then the stack-id column
//! sorted ascending and delta-encoded (varints), then the value column divided by
//! `scale` (zigzag varints). Dense stack ids make the deltas small; the scale turns
//! CPU nanoseconds (multiples of the period) into small counts. RocksDB compresses
//! the blocks further (zstd).

use super::codec::{put_signed, put_varint, Reader};
use crate::error::NodeError;

const BLOCK_VERSION: u8 = 1;

/// A decoded sample block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SampleBlock {
    /// Duration the profile covers, ns.
    pub duration_nanos: i64,
    /// Sum of all values.
    pub total: i64,
    /// `(dense stack id, value)`, stack ids strictly ascending.
    pub samples: Vec<(u64, i64)>,
}

fn gcd(mut left: u64, mut right: u64) -> u64 {
    while right != 0 {
        (left, right) = (right, left % right);
    }
    left
}

/// Encodes samples (any order, stack ids unique) into a block.
pub fn encode_block(duration_nanos: i64, samples: &mut [(u64, i64)]) -> Vec<u8> {
    samples.sort_unstable_by_key(|(stack, _)| *stack);
    debug_assert!(
        samples.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "stack ids are unique"
    );
    let total: i64 = samples
        .iter()
        .map(|(_, value)| *value)
        .fold(0i64, i64::wrapping_add);
    let scale = samples
        .iter()
        .fold(0u64, |accumulated, (_, value)| {
            gcd(accumulated, value.unsigned_abs())
        })
        .max(1);
    let mut buffer = Vec::with_capacity(16 + samples.len() * 3);
    buffer.push(BLOCK_VERSION);
    put_signed(&mut buffer, duration_nanos);
    put_signed(&mut buffer, total);
    put_varint(&mut buffer, scale);
    put_varint(&mut buffer, samples.len() as u64);
    let mut previous = 0u64;
    for (stack, _) in samples.iter() {
        put_varint(&mut buffer, stack - previous);
        previous = *stack;
    }
    for (_, value) in samples.iter() {
        put_signed(&mut buffer, value / scale as i64);
    }
    buffer
}

/// Reads only the header: `(duration_nanos, total)`. Range queries need no more.
pub fn decode_block_header(bytes: &[u8]) -> Result<(i64, i64), NodeError> {
    let mut reader = Reader::new(bytes, "sample block");
    check_version(&mut reader)?;
    Ok((reader.signed()?, reader.signed()?))
}

fn check_version(reader: &mut Reader<'_>) -> Result<(), NodeError> {
    let version = reader.byte()?;
    if version != BLOCK_VERSION {
        return Err(NodeError::Corrupt(format!(
            "sample block version {version} is unknown"
        )));
    }
    Ok(())
}

/// Decodes a whole block, calling `visit(stack id, value)` for every sample
/// without allocating.
pub fn visit_block(bytes: &[u8], mut visit: impl FnMut(u64, i64)) -> Result<(i64, i64), NodeError> {
    let mut reader = Reader::new(bytes, "sample block");
    check_version(&mut reader)?;
    let duration_nanos = reader.signed()?;
    let total = reader.signed()?;
    let scale = reader.varint()? as i64;
    let count = reader.count()?;
    // The value column follows the stack column.
    let mut stacks = Vec::with_capacity(count);
    let mut previous = 0u64;
    for _ in 0..count {
        previous = previous.wrapping_add(reader.varint()?);
        stacks.push(previous);
    }
    for stack in stacks {
        visit(stack, reader.signed()?.wrapping_mul(scale));
    }
    Ok((duration_nanos, total))
}

/// Decodes a whole block.
pub fn decode_block(bytes: &[u8]) -> Result<SampleBlock, NodeError> {
    let mut samples = Vec::new();
    let (duration_nanos, total) = visit_block(bytes, |stack, value| samples.push((stack, value)))?;
    Ok(SampleBlock {
        duration_nanos,
        total,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn blocks_round_trip(
            duration in any::<i64>(),
            entries in prop::collection::btree_map(any::<u64>(), -1_000_000_000i64..1_000_000_000, 0..100),
            multiplier in 1i64..1000,
        ) {
            let mut samples: Vec<(u64, i64)> = entries.into_iter().map(|(stack, value)| (stack, value * multiplier)).collect();
            let encoded = encode_block(duration, &mut samples);
            let decoded = decode_block(&encoded).unwrap();
            prop_assert_eq!(decoded.samples, samples.clone());
            prop_assert_eq!(decoded.duration_nanos, duration);
            prop_assert_eq!(decoded.total, samples.iter().map(|(_, value)| *value).sum::<i64>());
        }

        #[test]
        fn corrupt_blocks_are_errors_not_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_block(&bytes);
        }
    }

    #[test]
    fn cpu_nanoseconds_compress_to_counts() {
        let mut samples: Vec<(u64, i64)> = (0..100)
            .map(|stack| (stack, 10_000_000 * (1 + stack as i64 % 3)))
            .collect();
        let encoded = encode_block(0, &mut samples);
        assert!(encoded.len() < 220, "{} bytes", encoded.len());
    }
}
