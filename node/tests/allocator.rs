//! The `kiln-node` binary's allocator options (`node/src/main.rs`), read back from jemalloc itself.

use std::process::Command;

/// jemalloc's own report of its options, as `kiln-node --version` exits.
fn jemalloc_options() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_kiln-node"))
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("run kiln-node --version");
    assert!(output.status.success(), "kiln-node --version failed: {output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Regression: every merge page-faulted its largest buffers in again (1,600–4,200 minor faults per
/// tree build), because jemalloc returned allocations over 8 MiB to the kernel as soon as they were
/// freed.
#[test]
fn large_merge_buffers_are_kept_for_reuse_after_they_are_freed() {
    let options = jemalloc_options();
    for expected in [
        "opt.oversize_threshold: 0",
        "opt.background_thread: true",
        "opt.dirty_decay_ms: 30000",
    ] {
        assert!(
            options.contains(expected),
            "{expected:?} not in jemalloc's options:\n{options}"
        );
    }
}
