//! Regression: several shard groups share one RocksDB and one set of read caches;
//! dense ids are per group, so the caches must never hand one group's record to
//! another (this broke merges once groups shared the storage).

use std::sync::Arc;

use kiln_node::ingest::prepare_write;
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
        .write(prepare_write(request("a", "cpu.pb.gz")).expect("prepare"))
        .await
        .expect("write cpu");
    heap_group
        .write(prepare_write(request("b", "heap.pb.gz")).expect("prepare"))
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
