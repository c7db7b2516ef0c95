//! Measurement helpers of the fleet benchmark: aligned text tables, percentiles,
//! per-thread CPU time from `/proc`, directory sizes and machine facts.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// A text table printed with aligned columns (first column left, others right).
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with a title and column headers.
    pub fn new(title: &str, header: &[&str]) -> Table {
        Table {
            title: title.to_string(),
            header: header.iter().map(|cell| cell.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row.
    pub fn row<S: AsRef<str>>(&mut self, cells: &[S]) {
        self.rows
            .push(cells.iter().map(|cell| cell.as_ref().to_string()).collect());
    }

    /// Renders the table as Markdown-compatible text.
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|cell| cell.chars().count()).collect();
        for row in &self.rows {
            for (column, cell) in row.iter().enumerate().take(columns) {
                widths[column] = widths[column].max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| -> String {
            let mut text = String::from("|");
            for (column, width) in widths.iter().enumerate() {
                let cell = cells.get(column).map(String::as_str).unwrap_or("");
                let padding = width - cell.chars().count();
                if column == 0 {
                    text.push_str(&format!(" {cell}{} |", " ".repeat(padding)));
                } else {
                    text.push_str(&format!(" {}{cell} |", " ".repeat(padding)));
                }
            }
            text
        };
        let mut text = format!("\n### {}\n\n", self.title);
        text.push_str(&line(&self.header));
        text.push('\n');
        text.push('|');
        for (column, width) in widths.iter().enumerate() {
            let dashes = "-".repeat(*width);
            if column == 0 {
                text.push_str(&format!(" {dashes} |"));
            } else {
                text.push_str(&format!(" {}: |", &dashes[..dashes.len().saturating_sub(1)]));
            }
        }
        text.push('\n');
        for row in &self.rows {
            text.push_str(&line(row));
            text.push('\n');
        }
        text
    }

    /// Prints the table to stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// The `p`-th percentile (0-100) of `values` by nearest rank; 0 when empty.
pub fn percentile(values: &[Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Milliseconds with a precision that suits the magnitude.
pub fn millis(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// A count with thousands separators.
pub fn count(value: u64) -> String {
    let digits = value.to_string();
    let mut text = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

/// A rate with thousands separators, no decimals.
pub fn rate(value: f64) -> String {
    count(value.round().max(0.0) as u64)
}

/// Bytes in binary units.
pub fn bytes(value: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut scaled = value as f64;
    let mut unit = 0;
    while scaled >= 1024.0 && unit + 1 < units.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value} B")
    } else {
        format!("{scaled:.1} {}", units[unit])
    }
}

/// User + system CPU time of one thread or the process.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTime {
    /// Seconds of CPU.
    pub seconds: f64,
}

/// `/proc` reports CPU time in USER_HZ ticks, 100 per second on Linux.
const USER_HZ: f64 = 100.0;

/// Parses `(comm, utime + stime)` out of a `/proc/.../stat` line.
fn parse_stat(text: &str) -> Option<(String, CpuTime)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((
        name,
        CpuTime {
            seconds: (utime + stime) / USER_HZ,
        },
    ))
}

/// CPU time of the whole process (live and exited threads).
pub fn process_cpu() -> CpuTime {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|text| parse_stat(&text))
        .map(|(_, cpu)| cpu)
        .unwrap_or_default()
}

/// CPU time of process `pid` (live and exited threads); zero when it cannot be read.
pub fn pid_cpu(pid: u32) -> CpuTime {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|text| parse_stat(&text))
        .map(|(_, cpu)| cpu)
        .unwrap_or_default()
}

/// Busy CPU seconds of the whole machine, all processes (from `/proc/stat`).
pub fn machine_busy_cpu() -> CpuTime {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return CpuTime::default();
    };
    let Some(line) = text.lines().find(|line| line.starts_with("cpu ")) else {
        return CpuTime::default();
    };
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    let busy: f64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(index, _)| *index != 3 && *index != 4)
        .map(|(_, value)| value)
        .sum();
    CpuTime {
        seconds: busy / USER_HZ,
    }
}

/// CPU time of every live thread of the process, by thread id: `(name, time)`.
pub fn thread_cpu() -> HashMap<u64, (String, CpuTime)> {
    let mut threads = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc/self/task") else {
        return threads;
    };
    for entry in entries.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u64>().ok())
        else {
            continue;
        };
        if let Some(parsed) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|text| parse_stat(&text))
        {
            threads.insert(tid, parsed);
        }
    }
    threads
}

/// The group a thread belongs to, by name.
fn thread_group(name: &str) -> &'static str {
    if name.starts_with("kiln-writer") {
        "kiln writer thread (stage + WAL write + fsync)"
    } else if name.starts_with("tokio") {
        "tokio threads (prepare_write: gunzip, decode, validate, encode)"
    } else if name.starts_with("rocksdb") {
        "RocksDB background (flush, compaction)"
    } else {
        "other threads (main, ...)"
    }
}

/// CPU seconds spent per thread group between two snapshots, plus the
/// process-wide total (which also counts threads that exited in between).
pub fn cpu_by_group(
    before: &HashMap<u64, (String, CpuTime)>,
    after: &HashMap<u64, (String, CpuTime)>,
) -> Vec<(&'static str, f64)> {
    let mut groups: HashMap<&'static str, f64> = HashMap::new();
    for (tid, (name, cpu)) in after {
        let start = before.get(tid).map_or(0.0, |(_, cpu)| cpu.seconds);
        *groups.entry(thread_group(name)).or_default() += (cpu.seconds - start).max(0.0);
    }
    let mut groups: Vec<(&'static str, f64)> = groups.into_iter().collect();
    groups.sort_by(|left, right| right.1.total_cmp(&left.1));
    groups
}

/// Total size of the regular files under `path`.
pub fn dir_bytes(path: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        if metadata.is_dir() {
            total += dir_bytes(&entry.path())?;
        } else {
            total += metadata.len();
        }
    }
    Ok(total)
}

/// The file system (type and device) holding `path`, from `/proc/mounts`.
pub fn filesystem_of(path: &Path) -> String {
    let Ok(path) = path.canonicalize() else {
        return "unknown".to_string();
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".to_string();
    };
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 {
            continue;
        }
        let mount_point = Path::new(fields[1]);
        if path.starts_with(mount_point) {
            let depth = mount_point.components().count();
            if best.as_ref().is_none_or(|(best_depth, _)| depth >= *best_depth) {
                best = Some((depth, format!("{} on {} ({})", fields[2], fields[1], fields[0])));
            }
        }
    }
    best.map(|(_, description)| description)
        .unwrap_or_else(|| "unknown".to_string())
}

/// CPU model and count, from `/proc/cpuinfo`.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|count| count.get())
        .unwrap_or(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("MemTotal"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map(|kib| bytes(kib * 1024))
        .unwrap_or_else(|| "unknown".to_string());
    format!("{cpus} CPUs ({model}), {memory} RAM")
}

/// The value of an unlabelled sample `name` in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}
