//! Benchmark helper (BENCHMARKS.md, "kiln-agent: DWARF unwinding"): loads the unwind tables of N distinct
//! ELF executables (default 100, from /usr/bin, /usr/sbin, /usr/lib) the way the agent does, and prints
//! the table bytes held and this process' RSS growth.
//!
//!   cargo run --release -p kiln-agent --example unwind_table_memory [N]

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| {
                    line.split_whitespace()
                        .nth(1)
                        .and_then(|value| value.parse().ok())
                })
        })
        .unwrap_or(0)
}

/// ELF files (by magic) with distinct inodes under `dirs`, in name order.
fn executables(dirs: &[&str]) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|entry| entry.path()).collect();
        paths.sort();
        for path in paths {
            let Ok(metadata) = std::fs::metadata(&path) else {
                continue;
            };
            if !metadata.is_file() || !seen.insert((metadata.dev(), metadata.ino())) {
                continue;
            }
            let is_elf = std::fs::File::open(&path)
                .and_then(|mut file| {
                    let mut magic = [0u8; 4];
                    std::io::Read::read_exact(&mut file, &mut magic).map(|_| magic)
                })
                .is_ok_and(|magic| &magic == b"\x7fELF");
            if is_elf {
                found.push(path);
            }
        }
    }
    found
}

fn main() {
    let wanted: usize = std::env::args()
        .nth(1)
        .and_then(|text| text.parse().ok())
        .unwrap_or(100);
    let candidates = executables(&["/usr/bin", "/usr/sbin", "/usr/lib/x86_64-linux-gnu"]);
    let before = rss_kib();
    let started = Instant::now();
    let mut tables = Vec::new();
    let mut table_bytes = 0usize;
    let mut without_tables = 0;
    for path in &candidates {
        if tables.len() == wanted {
            break;
        }
        match kiln_agent::unwind::read_module_tables(Path::new(path)) {
            Ok(module) => {
                if !module.has_tables() {
                    without_tables += 1;
                }
                table_bytes += module.bytes();
                tables.push(module);
            }
            Err(error) => eprintln!("skipped: {error}"),
        }
    }
    let elapsed = started.elapsed();
    let after = rss_kib();
    println!(
        "executables: {} (without .eh_frame/.debug_frame: {without_tables}), load time {:.1} ms",
        tables.len(),
        elapsed.as_secs_f64() * 1000.0
    );
    println!(
        "unwind table bytes: {table_bytes} ({:.2} MiB, {:.1} KiB per executable)",
        table_bytes as f64 / 1048576.0,
        table_bytes as f64 / 1024.0 / tables.len().max(1) as f64
    );
    println!(
        "RSS growth: {} KiB ({:.2} MiB)",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / 1024.0
    );
}
