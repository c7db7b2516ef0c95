//! Without privileges the agent cannot load BPF: it says why, and scraping still works.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::*;

/// Serves a small valid goroutine pprof on every request, on a thread, until the test ends.
fn fake_pprof_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let body = goroutine_pprof();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                line.clear();
            }
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(header.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    address
}

fn goroutine_pprof() -> Vec<u8> {
    use kiln_proto::pprof as wire;
    use prost::Message;
    let strings: Vec<String> = ["", "goroutine", "count", "main.serve", "runtime.gopark"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let profile = wire::Profile {
        sample_type: vec![wire::ValueType { r#type: 1, unit: 2 }],
        period_type: Some(wire::ValueType { r#type: 1, unit: 2 }),
        period: 1,
        sample: vec![wire::Sample {
            location_id: vec![2, 1],
            value: vec![7],
            label: vec![],
        }],
        location: vec![
            wire::Location {
                id: 1,
                address: 0x10,
                line: vec![wire::Line {
                    function_id: 1,
                    line: 1,
                    column: 0,
                }],
                ..Default::default()
            },
            wire::Location {
                id: 2,
                address: 0x20,
                line: vec![wire::Line {
                    function_id: 2,
                    line: 1,
                    column: 0,
                }],
                ..Default::default()
            },
        ],
        function: vec![
            wire::Function {
                id: 1,
                name: 3,
                system_name: 3,
                ..Default::default()
            },
            wire::Function {
                id: 2,
                name: 4,
                system_name: 4,
                ..Default::default()
            },
        ],
        string_table: strings,
        ..Default::default()
    };
    profile.encode_to_vec()
}

#[test]
fn unprivileged_agent_says_why_bpf_is_unavailable_and_keeps_scraping() {
    if !is_root() {
        eprintln!("skipped: needs root to drop to an unprivileged user with setpriv");
        return;
    }
    let temp = tempfile::tempdir().expect("tempdir");
    // The unprivileged user must be able to run the binary and write the spool: copy the binary out of
    // the (root-only) build directory into a world-readable directory.
    let dir = temp.path().join("public");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let binary = dir.join("kiln-agent");
    std::fs::copy(agent_binary(), &binary).expect("copy agent");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let target = fake_pprof_server();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[[scrape_configs]]\njob_name = \"fake\"\ntargets = [\"{target}\"]\ninterval = \"1s\"\nprofiles = [\"goroutine\"]\n"
        ),
    )
    .expect("config");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let node = TestNode::start();
    let spool = dir.join("spool");
    let agent = TestAgent::start_with(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ],
        &binary,
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--server",
            &node.address,
            "--spool-dir",
            spool.to_str().expect("utf-8"),
        ],
    );
    let message = wait_for(
        "the agent to explain why BPF is unavailable",
        Duration::from_secs(30),
        || {
            let text = agent.stderr_text();
            text.lines()
                .find(|line| line.contains("cannot load the BPF CPU profiler"))
                .map(str::to_string)
        },
    );
    eprintln!("agent said: {message}");
    assert!(
        message.contains("uid 65534, not root"),
        "names the user: {message}"
    );
    assert!(
        message.contains("CAP_BPF"),
        "names the missing capability: {message}"
    );
    assert!(message.contains("scraping continues"), "{message}");
    assert_eq!(agent.metric("bpf_running"), 0.0);
    // Scraping goes on regardless.
    wait_for(
        "the scraped goroutine profile to be stored",
        Duration::from_secs(60),
        || {
            let types = series_types(&node, "{job=\"fake\"}");
            types
                .contains_key("goroutine:goroutine:count:goroutine:count")
                .then_some(())
        },
    );
    // BPF that cannot load is reported at start and leaves the agent healthy: nothing stopped, and
    // restarting it would not help. (`/healthz` fails when a running part stops: `health.rs`.)
    assert_eq!(
        http_get(&agent.metrics_address, "/healthz").as_deref(),
        Some("ok")
    );
    let top = node.kiln_ok(&[
        "query",
        "goroutine{job=\"fake\"}",
        "--from",
        "0",
        "--output",
        "top",
    ]);
    assert!(top.contains("runtime.gopark"), "{top}");
}
