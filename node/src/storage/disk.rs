//! Free space on the file system of the data directory, and the reserve that writes must leave.
//!
//! Why: a log append or an apply that fails for want of space is fatal to a raft group (openraft
//! stops a group whose storage fails), and RocksDB refuses every later write until it is reopened.
//! With a full disk, every group of the node stopped: writes failed, and so did queries, which
//! need each group's leader to prove it is current. So writes are refused while free space is under
//! the reserve, before anything is appended; reads, expiries (which free space) and cluster changes
//! still go through, and writes resume by themselves once space is freed. A node under its reserve
//! also says so in its answers to raft appends, and the leaders of its groups refuse writes too
//! (`raft::network::PeerDiskReports`): otherwise its replicas, as followers, would fill its disk.
//! It says so in its probe answers too, and the metadata leader places no new replica on it
//! (`cluster::placement`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Default reserve: writes stop while less than this is free on the data directory's file system.
pub const DEFAULT_DISK_RESERVE_BYTES: u64 = 1 << 30;

/// Bytes available to an unprivileged writer on the file system holding `path`.
fn available_bytes(path: &Path) -> std::io::Result<u64> {
    let stats = rustix::fs::statvfs(path)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// The free space last measured on the data directory's file system, against a reserve.
///
/// Guarantees: [`Self::admit_write`] refuses while the last measurement is under the reserve, and
/// admits again after a later measurement is not. Measurements come from [`Self::refresh`], which
/// the node runs off its async workers every [`DISK_REFRESH_INTERVAL`] (statvfs may block on an
/// unusual file system); between two of them a write may take the free space under the reserve,
/// which is what the reserve is for.
#[derive(Debug)]
pub struct DiskReserve {
    path: PathBuf,
    /// Changed only by [`Self::set_reserve_bytes`].
    reserve_bytes: AtomicU64,
    /// `u64::MAX` until the first successful measurement: an unmeasurable file system admits writes.
    available_bytes: AtomicU64,
}

/// How often the node measures the free space of its data directory.
pub const DISK_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

impl DiskReserve {
    /// A reserve of `reserve_bytes` on the file system of `path`, measured once now.
    pub fn new(path: &Path, reserve_bytes: u64) -> DiskReserve {
        let reserve = DiskReserve {
            path: path.to_path_buf(),
            reserve_bytes: AtomicU64::new(reserve_bytes),
            available_bytes: AtomicU64::new(u64::MAX),
        };
        if let Err(error) = reserve.refresh() {
            tracing::warn!(%error, path = %path.display(), "cannot measure the free disk space; writes are not held back by it");
        }
        reserve
    }

    /// Measures the free space again (a blocking system call). Returns it.
    pub fn refresh(&self) -> std::io::Result<u64> {
        let bytes = available_bytes(&self.path)?;
        self.available_bytes.store(bytes, Ordering::Relaxed);
        Ok(bytes)
    }

    /// The last measurement, bytes (`u64::MAX` if none succeeded).
    fn available_bytes(&self) -> u64 {
        self.available_bytes.load(Ordering::Relaxed)
    }

    /// Sets the reserve to `reserve_bytes`; [`Self::admit_write`] compares the last measurement
    /// with it from now on. Why: the cluster tests put a node under its reserve after its replicas
    /// are placed, as a disk that fills up would.
    pub fn set_reserve_bytes(&self, reserve_bytes: u64) {
        self.reserve_bytes.store(reserve_bytes, Ordering::Relaxed);
    }

    /// `Err` with a message for the client while the last measurement is under the reserve. The message
    /// starts with "data directory": the caller says whose.
    pub fn admit_write(&self) -> Result<(), String> {
        let available = self.available_bytes();
        let reserve_bytes = self.reserve_bytes.load(Ordering::Relaxed);
        if available >= reserve_bytes {
            return Ok(());
        }
        Err(format!(
            "data directory {} has {} free, under its reserve of {} (--min-free-disk-bytes): \
             writes are refused until space is freed (queries still work; a shorter --retention frees \
             space at the next retention pass)",
            self.path.display(),
            human_bytes(available),
            human_bytes(reserve_bytes),
        ))
    }
}

fn human_bytes(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    let mib = bytes as f64 / MIB;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_the_file_system_refuses_and_one_of_zero_admits() {
        let directory = tempfile::tempdir().expect("temp dir");
        let available = available_bytes(directory.path()).expect("statvfs");
        assert!(available > 0);
        let admits = DiskReserve::new(directory.path(), 0);
        assert!(admits.admit_write().is_ok());
        let refuses = DiskReserve::new(directory.path(), u64::MAX - 1);
        let message = refuses.admit_write().expect_err("under the reserve");
        assert!(message.contains("--min-free-disk-bytes"), "{message}");
        assert!(
            message.contains(&directory.path().display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn an_unmeasurable_path_admits_writes() {
        let reserve = DiskReserve::new(Path::new("/nonexistent/kiln/data"), 1 << 30);
        assert_eq!(reserve.available_bytes(), u64::MAX);
        assert!(reserve.admit_write().is_ok());
    }
}
