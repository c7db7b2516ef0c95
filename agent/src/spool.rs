//! The on-disk spool: every batch is written here before it is sent and removed once the node has
//! acknowledged it, so batches survive an unreachable node and an agent restart, and are sent in the
//! order they were made.
//!
//! Layout: one file per batch, `<sequence, 20 digits>.batch`, holding the protobuf `WriteRequest`
//! (idempotency key included, so a batch sent before a crash and again after is stored once). A file is
//! written as `.tmp`, synced, renamed, and the directory synced: a crash leaves either the whole batch or
//! none. When the spool grows past its byte bound, the oldest batches are deleted and counted.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_proto::kiln::v1::WriteRequest;
use prost::Message;

/// Spool I/O failure.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file or the directory could not be read or written.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What an append did to older batches.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Oldest batches deleted to stay within the bound.
    pub dropped_batches: u64,
    /// Their bytes.
    pub dropped_bytes: u64,
}

/// A bounded directory of pending batches.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// sequence → file size.
    entries: BTreeMap<u64, u64>,
    bytes: u64,
    next: u64,
}

impl Spool {
    /// Opens (creating) `dir`, deleting half-written `.tmp` files and indexing the batches left by an
    /// earlier run, which are sent first.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> Result<Spool, SpoolError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut entries = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(sequence) = name
                .strip_suffix(".batch")
                .and_then(|digits| digits.parse::<u64>().ok())
            else {
                continue;
            };
            let size = entry.metadata().map_err(io(&path))?.len();
            entries.insert(sequence, size);
        }
        let bytes = entries.values().sum();
        let next = entries.keys().next_back().map_or(0, |last| last + 1);
        Ok(Spool {
            dir,
            max_bytes,
            entries,
            bytes,
            next,
        })
    }

    fn path(&self, sequence: u64) -> PathBuf {
        self.dir.join(format!("{sequence:020}.batch"))
    }

    /// Durably appends a batch, then deletes the oldest batches while the spool is over its bound (the
    /// batch just written is never deleted here, even when it alone exceeds the bound).
    pub fn append(&mut self, request: &WriteRequest) -> Result<AppendOutcome, SpoolError> {
        let sequence = self.next;
        let bytes = request.encode_to_vec();
        let final_path = self.path(sequence);
        let temp_path = final_path.with_extension("tmp");
        {
            let mut file = File::create(&temp_path).map_err(io(&temp_path))?;
            file.write_all(&bytes).map_err(io(&temp_path))?;
            file.sync_all().map_err(io(&temp_path))?;
        }
        std::fs::rename(&temp_path, &final_path).map_err(io(&final_path))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io(&self.dir))?;
        self.next += 1;
        self.entries.insert(sequence, bytes.len() as u64);
        self.bytes += bytes.len() as u64;

        let mut outcome = AppendOutcome::default();
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            let Some((&oldest, &size)) = self.entries.iter().next() else {
                break;
            };
            self.remove(oldest)?;
            outcome.dropped_batches += 1;
            outcome.dropped_bytes += size;
        }
        Ok(outcome)
    }

    /// The oldest batch. A file that no longer decodes (disk corruption) is deleted and reported as
    /// `Err(sequence)` so the caller can count it; the next call moves on.
    pub fn oldest(&mut self) -> Result<Option<(u64, WriteRequest)>, SpoolError> {
        let Some(&sequence) = self.entries.keys().next() else {
            return Ok(None);
        };
        let path = self.path(sequence);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        match WriteRequest::decode(bytes.as_slice()) {
            Ok(request) => Ok(Some((sequence, request))),
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "dropping a corrupt spool file");
                self.remove(sequence)?;
                Ok(None)
            }
        }
    }

    /// Deletes a batch (acknowledged, or dropped).
    pub fn remove(&mut self, sequence: u64) -> Result<(), SpoolError> {
        if let Some(size) = self.entries.remove(&sequence) {
            self.bytes -= size;
            let path = self.path(sequence);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(io(&path)(error)),
            }
        }
        Ok(())
    }

    /// Bytes of pending batches.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Pending batches.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(key: &str, size: usize) -> WriteRequest {
        WriteRequest {
            idempotency_key: key.to_string(),
            series: vec![kiln_proto::kiln::v1::SeriesWrite {
                labels: vec![],
                profiles: vec![kiln_proto::kiln::v1::RawProfile {
                    pprof: vec![7; size],
                    ..Default::default()
                }],
            }],
        }
    }

    #[test]
    fn survives_reopen_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
            for key in ["a", "b", "c"] {
                spool.append(&request(key, 10)).expect("append");
            }
            let (sequence, first) = spool.oldest().expect("read").expect("some");
            assert_eq!(first.idempotency_key, "a");
            spool.remove(sequence).expect("remove");
        }
        std::fs::write(dir.path().join("00000000000000000099.tmp"), b"half").expect("write");
        let mut spool = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(spool.len(), 2);
        let (sequence, next) = spool.oldest().expect("read").expect("some");
        assert_eq!(next.idempotency_key, "b");
        spool.remove(sequence).expect("remove");
        spool.append(&request("d", 10)).expect("append");
        let keys: Vec<String> = std::iter::from_fn(|| {
            let (sequence, request) = spool.oldest().expect("read")?;
            spool.remove(sequence).expect("remove");
            Some(request.idempotency_key)
        })
        .collect();
        assert_eq!(keys, vec!["c", "d"], "new batches go after the old run's");
        assert!(!dir.path().join("00000000000000000099.tmp").exists());
    }

    #[test]
    fn full_spool_drops_oldest_and_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), 350).expect("open");
        let mut dropped = 0;
        for index in 0..5 {
            dropped += spool
                .append(&request(&format!("k{index}"), 100))
                .expect("append")
                .dropped_batches;
        }
        assert!(spool.bytes() <= 350);
        assert_eq!(dropped as usize + spool.len(), 5);
        assert!(dropped >= 2);
        let (_, oldest) = spool.oldest().expect("read").expect("some");
        assert_eq!(oldest.idempotency_key, format!("k{dropped}"));
    }

    #[test]
    fn corrupt_file_is_dropped_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
        spool.append(&request("a", 10)).expect("append");
        std::fs::write(dir.path().join(format!("{:020}.batch", 0)), [0xff, 0xff, 0xff]).expect("corrupt");
        assert!(spool.oldest().expect("read").is_none());
        assert!(spool.is_empty());
    }
}
