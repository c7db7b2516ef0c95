//! End-to-end CPU profiling: the real agent (BPF, root) pushing to a real node, queried with the real CLI.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

const CPU_SAMPLES: &str = "process_cpu:samples:count:cpu:nanoseconds:delta";

#[test]
fn nested_functions_and_two_to_one_split() {
    if !is_root() {
        eprintln!("skipped: needs root for BPF (CI runs as root)");
        return;
    }
    let temp = tempfile::tempdir().expect("tempdir");
    let burner = compile_program("burner", temp.path());
    let node = TestNode::start();
    let spool = temp.path().join("spool");
    let spool = spool.to_str().expect("utf-8 path");
    let agent = TestAgent::start(&profiling_args(&node, spool));
    wait_for("the BPF profiler to run", Duration::from_secs(30), || {
        (agent.metric("bpf_running") == 1.0).then_some(())
    });

    // 300 units for the light thread (~3 s of CPU on an idle machine), 600 for the heavy one.
    let status = Command::new(&burner).arg("300").status().expect("run burner");
    assert!(status.success());

    let selector = format!("{CPU_SAMPLES}{{executable=\"burner\"}}");
    // Wait until a drain after the program's exit has been pushed.
    let folded = settled_folded(&node, &selector, 1, &[&agent]);
    let heavy = sum_where(&folded, |stack| stack.contains("main;outer_heavy;inner_heavy"));
    let light = sum_where(&folded, |stack| stack.contains("main;outer_light;inner_light"));
    eprintln!("heavy {heavy}, light {light}");
    for (stack, value) in folded.iter().take(20) {
        eprintln!("{value:6} {stack}");
    }
    assert!(
        heavy > 100 && light > 50,
        "too few samples: heavy {heavy}, light {light}"
    );
    let ratio = heavy as f64 / light as f64;
    assert!(
        (ratio - 2.0).abs() <= 2.0 * 0.15,
        "expected a 2:1 split within 15%, got {ratio:.3} ({heavy}:{light})"
    );
    // Both threads' work is rooted in main, as nested calls.
    let total: i64 = folded.iter().map(|(_, value)| value).sum();
    assert!(
        (heavy + light) as f64 >= 0.9 * total as f64,
        "most samples should be in the nested functions: {} of {total}",
        heavy + light
    );
    // The nanoseconds type carries the same samples times the period.
    let nanos = node.folded("process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta{executable=\"burner\"}");
    let nanos_total: i64 = nanos.iter().map(|(_, value)| value).sum();
    assert_eq!(nanos_total, total * (1_000_000_000 / 99));
    // Labels: node, comm, executable; no pid by default.
    let series = node.kiln_ok(&["series", &selector, "--from", "0", "--output", "json"]);
    assert!(
        series.contains("\"comm\": \"burner\"") || series.contains("\"comm\":\"burner\""),
        "{series}"
    );
    assert!(series.contains("\"node\""), "{series}");
    assert!(!series.contains("\"pid\""), "{series}");
    // Metrics moved.
    assert!(agent.metric("samples") > 0.0);
    assert!(agent.metric("stacks") > 0.0);
    assert!(agent.metric("batches_pushed") > 0.0);
}

#[test]
fn syscalls_show_kernel_frames_under_user_frames() {
    if !is_root() {
        eprintln!("skipped: needs root for BPF (CI runs as root)");
        return;
    }
    let temp = tempfile::tempdir().expect("tempdir");
    let program = compile_program("syscaller", temp.path());
    let node = TestNode::start();
    let spool = temp.path().join("spool");
    let spool = spool.to_str().expect("utf-8 path");
    let agent = TestAgent::start(&profiling_args(&node, spool));
    wait_for("the BPF profiler to run", Duration::from_secs(30), || {
        (agent.metric("bpf_running") == 1.0).then_some(())
    });
    let status = Command::new(&program).arg("4").status().expect("run syscaller");
    assert!(status.success());
    let selector = format!("{CPU_SAMPLES}{{executable=\"syscaller\"}}");
    let folded = settled_folded(&node, &selector, 1, &[&agent]);
    for (stack, value) in folded.iter().take(10) {
        eprintln!("{value:6} {stack}");
    }
    let total: i64 = folded.iter().map(|(_, value)| value).sum();
    // Kernel frames come after (below, leafward of) the user frames main -> do_reads -> raw_read.
    let with_kernel = sum_where(&folded, |stack| {
        stack
            .split_once("main;do_reads;raw_read;")
            .is_some_and(|(_, kernel)| kernel.contains("do_syscall_64") || kernel.contains("entry_SYSCALL"))
    });
    assert!(total > 50, "too few samples: {total}");
    assert!(
        with_kernel as f64 >= 0.5 * total as f64,
        "expected most samples in the kernel under the user frames: {with_kernel} of {total}; top stacks: {:#?}",
        folded.iter().take(15).collect::<Vec<_>>()
    );
    assert!(
        folded
            .iter()
            .any(|(stack, _)| stack.contains("ksys_read") || stack.contains("vfs_read")),
        "the read path should be named"
    );
}
