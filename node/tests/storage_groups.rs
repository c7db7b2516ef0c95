//! Regression: several shard groups share one RocksDB and one set of read caches;
//! dense ids are per group, so the caches must never hand one group's record to
//! another (this broke merges once groups shared the storage).

use std::sync::Arc;

use kiln_node::ingest::{prepare_write, OldestKept};
use kiln_node::metrics::Metrics;
use kiln_node::storage::writer::Writer;
use kiln_node::storage::{Storage, StorageOptions};
use kiln_proto::kiln::v1 as api;

fn request(key: &str, file: &str) -> api::WriteRequest {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/pprof/go")
        .join(file);
    api::WriteRequest {
        idempotency_key: key.into(),
        series: vec![api::SeriesWrite {
            labels: vec![api::Label {
                name: "file".into(),
                value: file.into(),
            }],
            profiles: vec![api::RawProfile {
                pprof: std::fs::read(&path).expect("shared Go profile"),
                name: String::new(),
                default_time_unix_nanos: 0,
                delta: None,
            }],
        }],
    }
}

#[tokio::test]
async fn stack_cache_keeps_groups_apart() {
    let directory = tempfile::tempdir().expect("temp dir");
    let storage = Storage::open(directory.path(), StorageOptions::default()).expect("open");
    let metrics = Arc::new(Metrics::new());
    let cpu_group = Writer::start(storage.clone(), 1, 16, metrics.clone()).expect("writer 1");
    let heap_group = Writer::start(storage.clone(), 2, 16, metrics).expect("writer 2");
    cpu_group
        .write(prepare_write(request("a", "cpu.pb.gz"), OldestKept::any_time()).expect("prepare"))
        .await
        .expect("write cpu");
    heap_group
        .write(prepare_write(request("b", "heap.pb.gz"), OldestKept::any_time()).expect("prepare"))
        .await
        .expect("write heap");
    // Fill the cache from group 1, then read the same dense id of group 2.
    let cpu_first = storage.stacks(1, &[0]).expect("cpu stack 0");
    let heap_first = storage.stacks(2, &[0]).expect("heap stack 0");
    assert_ne!(cpu_first, heap_first, "group 2 got group 1's cached stack");
    storage.forget_group(2);
    assert_eq!(storage.stacks(2, &[0]).expect("heap stack 0 again"), heap_first);
    cpu_group.shutdown();
    heap_group.shutdown();
}

/// Every record of the replicated column families except `meta` (which holds
/// wall-clock times), in key order.
fn stored_records(storage: &Storage) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    use kiln_node::storage::keys;
    let mut records = Vec::new();
    for cf in [
        keys::CF_SERIES,
        keys::CF_POSTINGS,
        keys::CF_SYMBOLS,
        keys::CF_SAMPLES,
    ] {
        storage
            .scan_prefix(cf, &[], |key, value| {
                records.push((cf.to_string(), key.to_vec(), value.to_vec()));
                Ok(true)
            })
            .expect("scan");
    }
    records
}

/// A write whose stored stacks and symbols were left out (as a proposer does for a
/// group that already stores them) must store exactly what the whole write stores.
#[tokio::test]
async fn stripping_stored_content_stores_the_same_records_as_the_whole_write() {
    let whole_directory = tempfile::tempdir().expect("temp dir");
    let stripped_directory = tempfile::tempdir().expect("temp dir");
    let whole_storage = Storage::open(whole_directory.path(), StorageOptions::default()).expect("open");
    let stripped_storage = Storage::open(stripped_directory.path(), StorageOptions::default()).expect("open");
    let metrics = Arc::new(Metrics::new());
    let whole = Writer::start(whole_storage.clone(), 1, 16, metrics.clone()).expect("writer");
    let stripped = Writer::start(stripped_storage.clone(), 1, 16, metrics.clone()).expect("writer");
    for writer in [&whole, &stripped] {
        writer
            .write(prepare_write(request("first", "cpu-1.pb.gz"), OldestKept::any_time()).expect("prepare"))
            .await
            .expect("write");
    }
    for (key, file) in [("second", "cpu-2.pb.gz"), ("third", "cpu-1.pb.gz")] {
        whole
            .write(prepare_write(request(key, file), OldestKept::any_time()).expect("prepare"))
            .await
            .expect("write whole");
        let mut write = prepare_write(request(key, file), OldestKept::any_time()).expect("prepare");
        let left_out = write.strip_committed(&stripped.committed_content());
        assert!(left_out.stacks > 0, "{file}: no stored stack was left out");
        assert!(left_out.symbols > 0, "{file}: no stored symbol was left out");
        stripped.write(write).await.expect("write stripped");
    }
    assert_eq!(stored_records(&stripped_storage), stored_records(&whole_storage));
    assert_eq!(metrics.stack_content_missing.get(), 0);
    whole.shutdown();
    stripped.shutdown();
}
