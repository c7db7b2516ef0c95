//! Conformance: openraft's own storage test suite against Kiln's RocksDB log
//! store and group state machine (data group, real RocksDB in a temp dir).

use std::sync::Arc;

use kiln_node::metrics::Metrics;
use kiln_node::raft::log_store::LogStore;
use kiln_node::raft::state_machine::{GroupStateMachine, MachineKind};
use kiln_node::raft::{StorageError, TypeConfig};
use kiln_node::storage::writer::Writer;
use kiln_node::storage::{Storage, StorageOptions};
use openraft::testing::{StoreBuilder, Suite};

/// Keeps the temp dir alive as long as the stores the suite holds, and stops the
/// writer thread (joined) before the directory goes: a writer still running when
/// the test process exits would race RocksDB's teardown.
struct Guard {
    writer: Arc<Writer>,
    _directory: tempfile::TempDir,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.writer.shutdown();
    }
}

struct RocksBuilder;

const GROUP: u32 = 7;

impl StoreBuilder<TypeConfig, LogStore, GroupStateMachine, Guard> for RocksBuilder {
    async fn build(&self) -> Result<(Guard, LogStore, GroupStateMachine), StorageError> {
        let directory = tempfile::tempdir().expect("temp dir");
        let storage = Storage::open(directory.path(), StorageOptions::default()).expect("open RocksDB");
        let metrics = Arc::new(Metrics::new());
        let writer = Arc::new(Writer::start(storage.clone(), GROUP, 64, metrics.clone()).expect("writer"));
        let machine = GroupStateMachine::new(
            storage.clone(),
            GROUP,
            MachineKind::Data {
                writer: writer.clone(),
            },
            directory.path().join("snapshots"),
            metrics,
        );
        Ok((
            Guard {
                writer,
                _directory: directory,
            },
            LogStore::new(storage, GROUP),
            machine,
        ))
    }
}

#[test]
fn conformance_openraft_storage_suite_passes_on_rocksdb() {
    Suite::test_all(RocksBuilder).expect("openraft storage suite");
}
