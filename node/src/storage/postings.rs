//! The RocksDB merge operator that keeps label postings as roaring bitmaps.
//!
//! A posting's stored value is a serialized [`RoaringBitmap`] of series ordinals.
//! Writers never read-modify-write it: they merge operands, so concurrent series
//! creation needs no lock and no read. Operands are tagged:
//! - `A` + bitmap: add these ordinals;
//! - `R` + bitmap: remove these ordinals (retention dropped the series);
//! - `P` + u32 length + removed + added: a partial merge of several operands,
//!   meaning `(existing - removed) | added`.
//!
//! Applying operands in order is all RocksDB guarantees; the `P` form keeps partial
//! merges exact under that order, so adds and removes compose correctly.

use roaring::RoaringBitmap;
use rocksdb::MergeOperands;

const ADD: u8 = b'A';
const REMOVE: u8 = b'R';
const PARTIAL: u8 = b'P';

/// Name under which the operator is registered; part of the on-disk format.
pub const MERGE_OPERATOR_NAME: &str = "kiln.postings.v1";

fn serialize(bitmap: &RoaringBitmap) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(bitmap.serialized_size());
    // Writing to a Vec cannot fail.
    let _ = bitmap.serialize_into(&mut buffer);
    buffer
}

/// An operand that adds `ordinals`.
pub fn add_operand(ordinals: &RoaringBitmap) -> Vec<u8> {
    let mut operand = vec![ADD];
    operand.extend_from_slice(&serialize(ordinals));
    operand
}

/// An operand that removes `ordinals`.
pub fn remove_operand(ordinals: &RoaringBitmap) -> Vec<u8> {
    let mut operand = vec![REMOVE];
    operand.extend_from_slice(&serialize(ordinals));
    operand
}

/// Decodes a stored (fully merged) posting value.
pub fn decode_posting(bytes: &[u8]) -> Option<RoaringBitmap> {
    RoaringBitmap::deserialize_from(bytes).ok()
}

/// `(removed, added)` of one operand.
fn decode_operand(operand: &[u8]) -> Option<(RoaringBitmap, RoaringBitmap)> {
    let (tag, body) = operand.split_first()?;
    match *tag {
        ADD => Some((RoaringBitmap::new(), RoaringBitmap::deserialize_from(body).ok()?)),
        REMOVE => Some((RoaringBitmap::deserialize_from(body).ok()?, RoaringBitmap::new())),
        PARTIAL => {
            let length = u32::from_be_bytes(body.get(..4)?.try_into().ok()?) as usize;
            let removed = RoaringBitmap::deserialize_from(body.get(4..4 + length)?).ok()?;
            let added = RoaringBitmap::deserialize_from(body.get(4 + length..)?).ok()?;
            Some((removed, added))
        }
        _ => None,
    }
}

/// Full merge: the existing bitmap with every operand applied in order. A corrupt
/// operand fails the merge (RocksDB then reports corruption) rather than silently
/// dropping series from the index.
pub fn full_merge(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut bitmap = match existing {
        Some(bytes) => decode_posting(bytes)?,
        None => RoaringBitmap::new(),
    };
    for operand in operands {
        let (removed, added) = decode_operand(operand)?;
        bitmap -= removed;
        bitmap |= added;
    }
    Some(serialize(&bitmap))
}

/// Partial merge: folds operands into one `P` operand.
pub fn partial_merge(_key: &[u8], _existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut removed = RoaringBitmap::new();
    let mut added = RoaringBitmap::new();
    for operand in operands {
        let (operand_removed, operand_added) = decode_operand(operand)?;
        // (x - R) | A, then - R2 | A2  ==  (x - (R | R2)) | ((A - R2) | A2)
        added -= &operand_removed;
        removed |= operand_removed;
        added |= operand_added;
    }
    let removed_bytes = serialize(&removed);
    let mut operand = vec![PARTIAL];
    operand.extend_from_slice(&(removed_bytes.len() as u32).to_be_bytes());
    operand.extend_from_slice(&removed_bytes);
    operand.extend_from_slice(&serialize(&added));
    Some(operand)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap(values: &[u32]) -> RoaringBitmap {
        values.iter().copied().collect()
    }

    #[test]
    fn adds_and_removes_compose_in_order_through_rocksdb() {
        let directory = tempfile::tempdir().unwrap();
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.set_merge_operator(MERGE_OPERATOR_NAME, full_merge, partial_merge);
        let db = rocksdb::DB::open(&options, directory.path()).unwrap();
        db.merge(b"k", add_operand(&bitmap(&[1, 2, 3]))).unwrap();
        db.merge(b"k", remove_operand(&bitmap(&[2]))).unwrap();
        db.flush().unwrap();
        db.merge(b"k", add_operand(&bitmap(&[2, 9]))).unwrap();
        db.merge(b"k", remove_operand(&bitmap(&[1]))).unwrap();
        db.merge(b"k", add_operand(&bitmap(&[5]))).unwrap();
        db.flush().unwrap();
        db.compact_range::<&[u8], &[u8]>(None, None);
        let stored = decode_posting(&db.get(b"k").unwrap().unwrap()).unwrap();
        assert_eq!(stored, bitmap(&[2, 3, 5, 9]));
    }
}
