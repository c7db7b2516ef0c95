//! End-to-end DWARF (.eh_frame) unwinding: the real agent (BPF, root) pushing to a real node, queried
//! with the real CLI. A program without frame pointers (PIE + shared library, -O2
//! -fomit-frame-pointer) must show its whole call chain; a stock Debian binary (python3) must get stacks
//! at least 3 times deeper than with frame pointers, ending in its entry frames.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

const CPU_SAMPLES: &str = "process_cpu:samples:count:cpu:nanoseconds:delta";

/// Builds `tests/programs/dwarfchain.c` (PIE) and `dwarfchain_lib.c` (shared library) with
/// `-O2 -fomit-frame-pointer` into `dir`.
fn build_dwarfchain(dir: &Path) -> PathBuf {
    let programs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs");
    let library = dir.join("libkilnchain.so");
    let executable = dir.join("dwarfchain");
    let run = |command: &mut Command, what: &str| {
        let output = command.output().expect("run clang");
        assert!(
            output.status.success(),
            "{what} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(
        Command::new("clang")
            .args(["-O2", "-fomit-frame-pointer", "-fPIC", "-shared", "-o"])
            .arg(&library)
            .arg(programs.join("dwarfchain_lib.c")),
        "clang dwarfchain_lib.c",
    );
    run(
        Command::new("clang")
            .args(["-O2", "-fomit-frame-pointer", "-fPIE", "-pie", "-o"])
            .arg(&executable)
            .arg(programs.join("dwarfchain.c"))
            .arg(format!("-L{}", dir.display()))
            .arg(format!("-Wl,-rpath,{}", dir.display()))
            .arg("-lkilnchain"),
        "clang dwarfchain.c",
    );
    // The premise of the test: the chain functions set up no frame pointer (`mov %rsp,%rbp`). (The C
    // runtime's own helpers in crtbegin.o may; they are not on the sampled stacks.)
    for binary in [&library, &executable] {
        let output = Command::new("objdump")
            .arg("-d")
            .arg(binary)
            .output()
            .expect("run objdump (Debian package binutils)");
        let disassembly = String::from_utf8_lossy(&output.stdout);
        for function in disassembly.split("\n\n") {
            let Some(header) = function.lines().find(|line| line.ends_with(">:")) else {
                continue;
            };
            if header.contains("<chain_") || header.contains("<main>") {
                assert!(
                    !function.contains("mov    %rsp,%rbp"),
                    "{header} was built with a frame pointer:\n{function}"
                );
            }
        }
    }
    executable
}

fn agent_args<'a>(node: &'a TestNode, spool: &'a str, node_name: &'a str, unwinder: &'a str) -> Vec<&'a str> {
    let mut args = profiling_args(node, spool);
    args.extend(["--node-name", node_name, "--unwinder", unwinder]);
    args
}

#[test]
fn omit_frame_pointer_chain_through_a_shared_library_is_whole() {
    if !is_root() {
        eprintln!("skipped: needs root for BPF (CI runs as root)");
        return;
    }
    let temp = tempfile::tempdir().expect("tempdir");
    let program = build_dwarfchain(temp.path());
    let node = TestNode::start();
    let spool = temp.path().join("spool");
    let spool = spool.to_str().expect("utf-8 path");
    let agent = TestAgent::start(&agent_args(&node, spool, "dwarf-host", "dwarf"));
    wait_for("the BPF profiler to run", Duration::from_secs(30), || {
        (agent.metric("bpf_running") == 1.0).then_some(())
    });
    let status = Command::new(&program)
        .args(["spin", "4"])
        .status()
        .expect("run dwarfchain");
    assert!(status.success());

    let selector = format!("{CPU_SAMPLES}{{executable=\"dwarfchain\"}}");
    let folded = settled_folded(&node, &selector, 100, &[&agent]);
    for (stack, value) in folded.iter().take(10) {
        eprintln!("{value:6} {stack}");
    }
    let total: i64 = folded.iter().map(|(_, value)| value).sum();
    let chain = "main;chain_one;chain_two;chain_three;chain_four;chain_five";
    let whole = sum_where(&folded, |stack| stack.contains(chain));
    assert!(
        whole as f64 >= 0.9 * total as f64,
        "expected the whole chain {chain} in order in most samples: {whole} of {total}"
    );
    // Rooted in libc's entry, not cut after a frame or two.
    let rooted = sum_where(&folded, |stack| {
        stack.starts_with("_start;") && stack.contains("__libc_start_call_main;main;")
    });
    assert!(
        rooted as f64 >= 0.9 * total as f64,
        "expected stacks rooted in _start/__libc_start_main: {rooted} of {total}"
    );
    // The series says which unwinder made it, and the agent counts it.
    let dwarf_series = node.folded(&format!(
        "{CPU_SAMPLES}{{executable=\"dwarfchain\", unwinder=\"dwarf\"}}"
    ));
    let dwarf_total: i64 = dwarf_series.iter().map(|(_, value)| value).sum();
    assert!(
        dwarf_total as f64 >= 0.9 * total as f64,
        "unwinder=\"dwarf\" series: {dwarf_total} of {total}"
    );
    assert!(agent
        .metrics()
        .contains("kiln_agent_user_stacks_total{unwinder=\"dwarf\"}"));
    assert!(agent.metric("dwarf_unwound") >= whole as f64);
}

/// A stock Debian binary without frame pointers under load: python3 running a busy loop.
struct BusyPython(Child);

impl BusyPython {
    fn start() -> BusyPython {
        let child = Command::new("python3")
            .args(["-c", "while True: pass"])
            .stdin(Stdio::null())
            .spawn()
            .expect("run python3 (Debian package python3)");
        BusyPython(child)
    }
}

impl Drop for BusyPython {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The sample-weighted median of the number of frames per stack.
fn median_depth(folded: &[(String, i64)]) -> usize {
    let mut depths: Vec<(usize, i64)> = folded
        .iter()
        .map(|(stack, value)| (stack.split(';').count(), *value))
        .collect();
    depths.sort();
    let total: i64 = depths.iter().map(|(_, value)| value).sum();
    let mut seen = 0;
    for (depth, value) in depths {
        seen += value;
        if 2 * seen >= total {
            return depth;
        }
    }
    0
}

#[test]
fn stock_python_stacks_are_three_times_deeper_than_frame_pointers() {
    if !is_root() {
        eprintln!("skipped: needs root for BPF (CI runs as root)");
        return;
    }
    let temp = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start();
    let dwarf_spool = temp.path().join("spool-dwarf");
    let fp_spool = temp.path().join("spool-fp");
    // Two agents at once, one per unwinder, sampling the same process at the same time: the comparison
    // is between unwinders, not between two runs of the workload.
    let dwarf_agent = TestAgent::start(&agent_args(
        &node,
        dwarf_spool.to_str().expect("utf-8"),
        "dwarf-host",
        "dwarf",
    ));
    let fp_agent = TestAgent::start(&agent_args(
        &node,
        fp_spool.to_str().expect("utf-8"),
        "fp-host",
        "fp",
    ));
    wait_for("both BPF profilers to run", Duration::from_secs(30), || {
        (dwarf_agent.metric("bpf_running") == 1.0 && fp_agent.metric("bpf_running") == 1.0).then_some(())
    });
    let python = BusyPython::start();
    let pid_selector = |host: &str| format!("{CPU_SAMPLES}{{node=\"{host}\", comm=\"python3\"}}");
    // Run until both agents stored enough samples of the loop (at 99 Hz, 200 samples is about 2 s).
    wait_for(
        "python3 samples from both agents",
        Duration::from_secs(90),
        || {
            let enough = |host: &str| {
                let total: i64 = node
                    .folded(&pid_selector(host))
                    .iter()
                    .map(|(_, value)| value)
                    .sum();
                total >= 200
            };
            if enough("dwarf-host") && enough("fp-host") {
                Some(())
            } else {
                std::thread::sleep(Duration::from_millis(1000));
                None
            }
        },
    );
    drop(python);
    let dwarf = settled_folded(&node, &pid_selector("dwarf-host"), 200, &[&dwarf_agent]);
    let fp = settled_folded(&node, &pid_selector("fp-host"), 200, &[&fp_agent]);
    eprintln!("DWARF:");
    for (stack, value) in dwarf.iter().take(5) {
        eprintln!("{value:6} {stack}");
    }
    eprintln!("frame pointers:");
    for (stack, value) in fp.iter().take(5) {
        eprintln!("{value:6} {stack}");
    }
    let dwarf_depth = median_depth(&dwarf);
    let fp_depth = median_depth(&fp);
    eprintln!("median user stack depth: DWARF {dwarf_depth}, frame pointers {fp_depth}");
    assert!(fp_depth >= 1);
    assert!(
        dwarf_depth >= 3 * fp_depth,
        "DWARF median depth {dwarf_depth} is not 3x the frame-pointer median {fp_depth}"
    );
    // The DWARF stacks end (at the root) in the C entry or the interpreter's entry frames.
    let total: i64 = dwarf.iter().map(|(_, value)| value).sum();
    let rooted = sum_where(&dwarf, |stack| {
        let root = stack.split(';').next().unwrap_or("");
        matches!(root, "_start" | "__libc_start_main" | "main" | "Py_BytesMain")
            && (stack.contains("__libc_start_call_main;") || stack.contains("Py_BytesMain"))
    });
    assert!(
        rooted as f64 >= 0.9 * total as f64,
        "expected DWARF stacks rooted in _start/__libc_start_main/Py_BytesMain: {rooted} of {total}"
    );
    let interpreter = sum_where(&dwarf, |stack| {
        stack.contains("Py_BytesMain;") && stack.contains("_PyEval_EvalFrameDefault")
    });
    assert!(
        interpreter as f64 >= 0.8 * total as f64,
        "expected the interpreter loop under Py_BytesMain: {interpreter} of {total}"
    );
    // Every DWARF sample is labelled as such, every frame-pointer one as fp.
    let fp_labelled = node.folded(&format!("{CPU_SAMPLES}{{node=\"fp-host\", unwinder=\"dwarf\"}}"));
    assert!(
        fp_labelled.is_empty(),
        "the fp agent made DWARF stacks: {fp_labelled:?}"
    );
}
