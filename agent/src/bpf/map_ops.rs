//! Map operations that aya 0.13 does not offer, as raw `bpf()` calls: batched lookups, with and
//! without deleting (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_LOOKUP_AND_DELETE_BATCH`, Linux 5.6+), and
//! lookup-and-delete of one stack trace (`BPF_MAP_LOOKUP_AND_DELETE_ELEM` on a stack trace map, a
//! recent kernel addition).
//!
//! Why: at 19 Hz the agent's own CPU is small, and a fifth of it went to `bpf()` calls. aya walks a
//! map with one `GET_NEXT_KEY` and one `LOOKUP` call per key and deletes one key per call, so a
//! drain cost three calls per counted key and three per stack, and the once-a-second peek at new
//! processes one call per key. A batch moves up to a whole map per call.
//!
//! The sampler probes each operation once when it loads ([`RawMap::probe_batch`],
//! [`RawMap::probe_take_stack`]) and keeps aya's one-key-at-a-time path for kernels without them.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use aya::maps::Map;

/// `enum bpf_cmd` values (`linux/bpf.h`), stable kernel ABI.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// The kernel's internal "not supported" errno (`ENOTSUPP`, not the `EOPNOTSUPP` of libc), which
/// `bpf()` returns for an operation a map type lacks.
const KERNEL_ENOTSUPP: i32 = 524;

/// Elements asked for per batch call at first; doubled when one hash bucket holds more (`ENOSPC`).
const FIRST_BATCH_ELEMENTS: u32 = 1024;

/// The prefix of `union bpf_attr` that the `BPF_MAP_*_ELEM` commands read.
#[repr(C)]
struct ElementAttr {
    map_fd: u32,
    _padding: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The prefix of `union bpf_attr` that the `BPF_MAP_*_BATCH` commands read; `count` is written back.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls `bpf(command, attr, size_of(attr))`.
///
/// # Safety
/// `attr` must be the attribute prefix `command` reads, and every pointer in it must be valid for
/// the sizes the kernel derives from the map (key, value, `count` elements) until the call returns.
unsafe fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: forwarded to the caller; the kernel reads and writes at most `size_of::<T>()` bytes of
    // `attr`, which is live and exclusively borrowed for the call.
    let result = unsafe { libc::syscall(libc::SYS_bpf, command, attr as *mut T, std::mem::size_of::<T>()) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// True when `error` says the running kernel lacks the operation, rather than that it failed.
/// Kernels older than a command answer `EINVAL`; map types without it answer `ENOTSUPP`.
fn is_unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(KERNEL_ENOTSUPP)
    )
}

/// A map's descriptor with the sizes the kernel reports for it.
///
/// It borrows the descriptor of a map that aya owns and closes: a `RawMap` must not be used after
/// that map is dropped. The sampler keeps both as fields of one struct, so they live and die
/// together.
#[derive(Debug, Clone, Copy)]
pub struct RawMap {
    name: &'static str,
    fd: RawFd,
    key_bytes: usize,
    /// Bytes of one element's value as user space sees it: for per-CPU maps, one 8-byte-aligned
    /// slot per possible CPU.
    value_bytes: usize,
    max_entries: u32,
}

impl RawMap {
    /// Describes `map` (a hash, per-CPU array or stack trace map), reading its sizes from the
    /// kernel. `possible_cpus` is the number of value slots of a per-CPU map.
    pub fn describe(name: &'static str, map: &Map, possible_cpus: usize) -> Result<RawMap, String> {
        let (data, per_cpu) = match map {
            Map::HashMap(data) | Map::StackTraceMap(data) => (data, false),
            Map::PerCpuArray(data) => (data, true),
            _ => {
                return Err(format!(
                    "map {name}: not a hash, per-CPU array or stack trace map"
                ))
            }
        };
        let info = data.info().map_err(|error| format!("map {name}: {error}"))?;
        let value_size = info.value_size() as usize;
        let value_bytes = if per_cpu {
            value_size.next_multiple_of(8) * possible_cpus.max(1)
        } else {
            value_size
        };
        Ok(RawMap {
            name,
            fd: data.fd().as_fd().as_raw_fd(),
            key_bytes: info.key_size() as usize,
            value_bytes,
            max_entries: info.max_entries(),
        })
    }

    /// The map's name in the BPF object (for errors).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Bytes of one value as user space sees it.
    pub fn value_bytes(&self) -> usize {
        self.value_bytes
    }

    /// Whether the running kernel has batched lookups for this map: one batch call on it, which
    /// changes nothing. `Err` only for failures that say nothing about support.
    pub fn probe_batch(&self) -> io::Result<bool> {
        match self.for_each_batched(false, 1, &mut |_, _| {}) {
            Ok(()) => Ok(true),
            Err(error) if is_unsupported(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Whether the running kernel can look up and delete one stack trace in one call. Asks for
    /// stack id 0, so call it on a stack map that holds nothing yet.
    pub fn probe_take_stack(&self) -> io::Result<bool> {
        let mut frames = vec![0u8; self.value_bytes];
        match self.element_call(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &0u32.to_ne_bytes(), &mut frames) {
            Ok(()) => Ok(true),
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(true),
            Err(error) if is_unsupported(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Hands every element of the map to `each` as (key bytes, value bytes), in the kernel's order,
    /// and deletes each one handed over when `delete` is set. Elements inserted or deleted
    /// concurrently may or may not be seen; without concurrent writers every element is seen once.
    pub fn for_each(&self, delete: bool, each: &mut dyn FnMut(&[u8], &[u8])) -> io::Result<()> {
        self.for_each_batched(delete, FIRST_BATCH_ELEMENTS.min(self.max_entries.max(1)), each)
    }

    fn for_each_batched(
        &self,
        delete: bool,
        first_batch_elements: u32,
        each: &mut dyn FnMut(&[u8], &[u8]),
    ) -> io::Result<()> {
        let command = if delete {
            BPF_MAP_LOOKUP_AND_DELETE_BATCH
        } else {
            BPF_MAP_LOOKUP_BATCH
        };
        // The batch position token: a bucket index (4 bytes) for hash maps, a key for the others.
        let token_bytes = self.key_bytes.max(4);
        let mut in_batch = vec![0u8; token_bytes];
        let mut out_batch = vec![0u8; token_bytes];
        let mut started = false;
        let mut elements = first_batch_elements.max(1);
        let mut keys = Vec::new();
        let mut values = Vec::new();
        loop {
            keys.resize(elements as usize * self.key_bytes, 0u8);
            values.resize(elements as usize * self.value_bytes, 0u8);
            let mut attr = BatchAttr {
                in_batch: if started { in_batch.as_ptr() as u64 } else { 0 },
                out_batch: out_batch.as_mut_ptr() as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: elements,
                map_fd: self.fd as u32,
                elem_flags: 0,
                flags: 0,
            };
            // SAFETY: `attr` is the batch prefix; the token buffers hold `token_bytes`, and `keys`
            // and `values` hold `elements` keys and values of the sizes the kernel reported.
            let result = unsafe { bpf(command, &mut attr) };
            let filled = (attr.count.min(elements)) as usize;
            for index in 0..filled {
                each(
                    &keys[index * self.key_bytes..(index + 1) * self.key_bytes],
                    &values[index * self.value_bytes..(index + 1) * self.value_bytes],
                );
            }
            match result {
                Ok(()) => {
                    in_batch.copy_from_slice(&out_batch);
                    started = true;
                }
                // The end of the map; what this call returned is valid.
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                // One bucket holds more elements than asked for: ask again for more, same position.
                Err(error)
                    if error.raw_os_error() == Some(libc::ENOSPC)
                        && filled == 0
                        && elements < self.max_entries =>
                {
                    elements = elements.saturating_mul(2).min(self.max_entries);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Reads stack `id` into `frames` (the map's value: instruction pointers, zero after the last)
    /// and deletes it, in one call when `in_one_call` (see [`RawMap::probe_take_stack`]), else in
    /// two. `Ok(false)` when the map has no such stack.
    pub fn take_stack(&self, id: u32, frames: &mut [u8], in_one_call: bool) -> io::Result<bool> {
        debug_assert_eq!(frames.len(), self.value_bytes);
        let key = id.to_ne_bytes();
        let command = if in_one_call {
            BPF_MAP_LOOKUP_AND_DELETE_ELEM
        } else {
            BPF_MAP_LOOKUP_ELEM
        };
        match self.element_call(command, &key, frames) {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
            Err(error) => return Err(error),
        }
        if !in_one_call {
            match self.element_call(BPF_MAP_DELETE_ELEM, &key, &mut []) {
                Ok(()) => {}
                // Nobody else deletes from a drained generation; tolerate it anyway.
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(true)
    }

    fn element_call(&self, command: libc::c_long, key: &[u8], value: &mut [u8]) -> io::Result<()> {
        debug_assert_eq!(key.len(), self.key_bytes);
        debug_assert!(value.is_empty() || value.len() == self.value_bytes);
        let mut attr = ElementAttr {
            map_fd: self.fd as u32,
            _padding: 0,
            key: key.as_ptr() as u64,
            value: if value.is_empty() {
                0
            } else {
                value.as_mut_ptr() as u64
            },
            flags: 0,
        };
        // SAFETY: `attr` is the element prefix; `key` holds one key and `value` one value (or is
        // not passed, for a delete) of the sizes the kernel reported for this map.
        unsafe { bpf(command, &mut attr) }
    }
}

/// Reads a `u32` at `offset` of `bytes` (native order): the fields of keys and values above.
pub fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        bytes.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

/// Reads a `u64` at `offset` of `bytes` (native order).
pub fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(
        bytes.get(offset..offset + 8)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::fd::{FromRawFd, OwnedFd};

    use super::*;

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_TYPE_HASH: u32 = 1;

    /// The prefix of `union bpf_attr` that `BPF_MAP_CREATE` reads.
    #[repr(C)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    }

    /// A hash map of `u32` → `u64` with `entries` elements (key `k` holds `k * 10`), outside any BPF
    /// object, and its [`RawMap`]. `None` when this process may not create maps (not root).
    fn filled_hash_map(max_entries: u32, entries: u32) -> Option<(OwnedFd, RawMap)> {
        let mut create = CreateAttr {
            map_type: BPF_MAP_TYPE_HASH,
            key_size: 4,
            value_size: 8,
            max_entries,
        };
        // Not through `bpf()`, which drops the result: here it is the new map's descriptor.
        // SAFETY: the map-creation prefix, which holds no pointers; a non-negative result is a
        // descriptor this process now owns.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_CREATE,
                &mut create as *mut CreateAttr,
                std::mem::size_of::<CreateAttr>(),
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let map = RawMap {
            name: "test",
            fd: fd as RawFd,
            key_bytes: 4,
            value_bytes: 8,
            max_entries,
        };
        for key in 0..entries {
            let value = u64::from(key) * 10;
            let mut attr = ElementAttr {
                map_fd: fd as u32,
                _padding: 0,
                key: &key as *const u32 as u64,
                value: &value as *const u64 as u64,
                flags: 0,
            };
            // SAFETY: the element prefix, pointing at one live key and one live value.
            unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.expect("insert");
        }
        Some((owned, map))
    }

    fn collect(map: &RawMap, delete: bool, first_batch_elements: u32) -> HashMap<u32, u64> {
        let mut seen = HashMap::new();
        map.for_each_batched(delete, first_batch_elements, &mut |key, value| {
            let key = u32_at(key, 0).expect("key");
            let value = u64_at(value, 0).expect("value");
            assert!(seen.insert(key, value).is_none(), "key {key} handed out twice");
        })
        .expect("batch");
        seen
    }

    fn expected(entries: u32) -> HashMap<u32, u64> {
        (0..entries).map(|key| (key, u64::from(key) * 10)).collect()
    }

    #[test]
    fn batches_hand_out_every_element_once_over_several_calls() {
        let Some((_owned, map)) = filled_hash_map(8192, 3000) else {
            eprintln!("skipped: creating BPF maps needs root");
            return;
        };
        // 3000 elements in batches of 1024: the position token carries over three calls.
        assert_eq!(collect(&map, false, FIRST_BATCH_ELEMENTS), expected(3000));
        // A lookup changes nothing; a lookup-and-delete empties the map.
        assert_eq!(collect(&map, true, FIRST_BATCH_ELEMENTS), expected(3000));
        assert!(collect(&map, false, FIRST_BATCH_ELEMENTS).is_empty());
    }

    #[test]
    fn a_bucket_larger_than_the_batch_grows_the_batch() {
        // 3000 elements in 4096 buckets: many buckets hold two or more, so batches of one element
        // meet ENOSPC and must grow rather than fail or skip the bucket.
        let Some((_owned, map)) = filled_hash_map(4096, 3000) else {
            eprintln!("skipped: creating BPF maps needs root");
            return;
        };
        assert_eq!(collect(&map, true, 1), expected(3000));
        assert!(collect(&map, false, 1).is_empty());
    }
}
