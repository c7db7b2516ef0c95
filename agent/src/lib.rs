//! `kiln-agent`: one per host. An eBPF sampler profiles every process on the host (CPU; user stacks
//! unwound with .eh_frame or frame pointers; kernel stacks), a scraper fetches pprof profiles from Go
//! `net/http/pprof` endpoints, and both push to Kiln through an on-disk spool.
//!
//! - [`bpf`]: loads and drains the BPF program (`bpf/profiler.bpf.c`);
//! - [`process`], [`symbolize`], [`profile`]: `/proc` information, blazesym symbolization, pprof building;
//! - [`unwind`]: DWARF unwinding of the user stacks the BPF program copies (framehop);
//! - [`cpu`]: the drain → label → symbolize → profile loop;
//! - [`scrape`]: pprof scraping;
//! - [`relabel`]: Prometheus-style relabel rules;
//! - [`spool`], [`push`]: durable, bounded, ordered delivery through a swappable [`push::Sink`];
//! - [`config`], [`metrics`], [`shutdown`], [`health`]: configuration, `/metrics`, cancellation,
//!   `/healthz` (fails once a part of the agent stopped).

pub mod bpf;
pub mod config;
pub mod cpu;
pub mod health;
pub mod metrics;
pub mod process;
pub mod profile;
pub mod push;
pub mod relabel;
pub mod scrape;
pub mod shutdown;
pub mod spool;
pub mod symbolize;
pub mod unwind;
