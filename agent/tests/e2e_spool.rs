//! The node goes away during a run: what the agent collected meanwhile is spooled on disk, survives an
//! agent restart, and is replayed once the node is back.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

#[test]
fn node_killed_and_agent_restarted_nothing_collected_is_missing() {
    if !is_root() {
        eprintln!("skipped: needs root for BPF (CI runs as root)");
        return;
    }
    let temp = tempfile::tempdir().expect("tempdir");
    let burner = compile_program("burner", temp.path());
    let mut node = TestNode::start();
    let spool = temp.path().join("spool");
    let spool = spool.to_str().expect("utf-8").to_string();
    let args = [
        "--server",
        node.address.as_str(),
        "--spool-dir",
        spool.as_str(),
        "--drain-interval",
        "1s",
        "--frequency-hz",
        "99",
    ]
    .map(str::to_string);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = TestAgent::start(&arg_refs);
    wait_for("a first push", Duration::from_secs(60), || {
        (agent.metric("batches_pushed") >= 1.0).then_some(())
    });

    // The node dies; the burner runs its whole life while the node is down.
    node.kill9();
    let status = Command::new(&burner).arg("150").status().expect("run burner");
    assert!(status.success());
    wait_for("batches to pile up in the spool", Duration::from_secs(60), || {
        (agent.metric("spool_batches") >= 2.0).then_some(())
    });
    // The agent is restarted too while the node is still down: the spool must survive it.
    agent.stop();
    let spooled = std::fs::read_dir(&spool).expect("spool dir").count();
    assert!(spooled >= 2, "spool files after stop: {spooled}");
    let mut agent = TestAgent::start(&arg_refs);
    node.restart_same_port();

    wait_for("the spool to drain", Duration::from_secs(120), || {
        (agent.metric("spool_batches") == 0.0 && agent.metric("batches_pushed") >= 1.0).then_some(())
    });
    let selector = "process_cpu:samples:count:cpu:nanoseconds:delta{executable=\"burner\"}";
    let folded = node.folded(selector);
    let heavy = sum_where(&folded, |stack| stack.contains("outer_heavy;inner_heavy"));
    let light = sum_where(&folded, |stack| stack.contains("outer_light;inner_light"));
    eprintln!("after replay: heavy {heavy}, light {light}");
    // Everything the burner did happened while the node was down: all of it came through the spool,
    // with the 2:1 split intact (a lost batch would skew or shrink it).
    assert!(
        heavy > 50 && light > 25,
        "samples missing after replay: heavy {heavy}, light {light}"
    );
    let ratio = heavy as f64 / light as f64;
    assert!((ratio - 2.0).abs() <= 0.3, "split after replay {ratio:.3}");
    assert_eq!(agent.metric("dropped_batches"), 0.0);
    agent.stop();
}
