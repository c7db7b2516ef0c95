//! Scraping the Go demo's net/http/pprof endpoints into a real node.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn go_demo_all_six_kinds_and_cpu_hot_functions() {
    let temp = tempfile::tempdir().expect("tempdir");
    let demo = build_go_demo(temp.path());
    let port = free_port();
    let demo_address = format!("127.0.0.1:{port}");
    let _demo = KillOnDrop(
        Command::new(&demo)
            .arg(&demo_address)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Go demo"),
    );
    wait_for("the Go demo to listen", Duration::from_secs(30), || {
        http_get(&demo_address, "/debug/pprof/").map(|_| ())
    });
    let node = TestNode::start();
    let config = temp.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[profiler]\nenabled = false\n\n[[scrape_configs]]\njob_name = \"go-demo\"\ntargets = [\"{demo_address}\"]\ninterval = \"3s\"\n[scrape_configs.labels]\nservice = \"demo\"\n"
        ),
    )
    .expect("write config");
    let spool = temp.path().join("spool");
    let _agent = TestAgent::start(&[
        "--config",
        config.to_str().expect("utf-8"),
        "--server",
        &node.address,
        "--spool-dir",
        spool.to_str().expect("utf-8"),
    ]);
    let wanted = [
        "process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta",
        "process_cpu:samples:count:cpu:nanoseconds:delta",
        "memory:inuse_space:bytes:space:bytes",
        "memory:inuse_objects:count:space:bytes",
        "memory:alloc_space:bytes:space:bytes",
        "memory:alloc_objects:count:space:bytes",
        "goroutine:goroutine:count:goroutine:count",
        "mutex:delay:nanoseconds:contentions:count",
        "mutex:contentions:count:contentions:count",
        "block:delay:nanoseconds:contentions:count",
        "block:contentions:count:contentions:count",
    ];
    let types = wait_for(
        "all six profile kinds to be stored",
        Duration::from_secs(90),
        || {
            let types = series_types(&node, "{job=\"go-demo\"}");
            wanted
                .iter()
                .all(|name| types.contains_key(*name))
                .then_some(types)
        },
    );
    eprintln!("stored types: {types:?}");
    // Each kind is stored once per target: heap gives only inuse_*, allocs only alloc_*.
    assert!(types.values().all(|count| *count == 1), "{types:?}");
    let series = node.kiln_ok(&["series", "{job=\"go-demo\"}", "--from", "0", "--output", "json"]);
    assert!(series.contains(&demo_address), "instance label: {series}");
    assert!(series.contains("\"service\""), "job labels: {series}");

    let top = node.kiln_ok(&[
        "query",
        "cpu{job=\"go-demo\"}",
        "--from",
        "0",
        "--to",
        "now",
        "--output",
        "top",
    ]);
    eprintln!("{top}");
    let names = top_names(&top);
    let hot = [
        "main.hashWork",
        "main.generateReport",
        "crypto/sha256.block",
        "main.worker",
    ];
    for function in ["main.hashWork", "main.generateReport", "main.worker"] {
        assert!(
            top.contains(function),
            "the CPU top should name {function}; rows: {:?}",
            &names[..names.len().min(20)]
        );
    }
    assert!(
        names.iter().take(15).any(|name| hot.contains(&name.as_str())),
        "a hot function of the demo should be near the top: {:?}",
        &names[..names.len().min(15)]
    );
}
