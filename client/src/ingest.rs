//! Grouping profiles into write batches, and adding up what the node acknowledged.

use std::collections::BTreeSet;

use kiln_proto::kiln::v1 as proto;
use serde::Serialize;

use crate::client::new_idempotency_key;

/// Parses a `name=value` label argument. The name must be non-empty and free of spaces; the node checks
/// the full Prometheus naming rules. The value may be empty and may contain `=`.
pub fn parse_label_argument(argument: &str) -> Result<proto::Label, String> {
    let Some((name, value)) = argument.split_once('=') else {
        return Err(format!("label {argument:?} is not of the form name=value"));
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("label {argument:?} has an empty name"));
    }
    if name.chars().any(char::is_whitespace) {
        return Err(format!("label name {name:?} contains whitespace"));
    }
    Ok(proto::Label {
        name: name.to_string(),
        value: value.to_string(),
    })
}

/// When a batch is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// At most this many profiles per batch (0 is treated as 1).
    pub max_profiles: usize,
    /// A batch is sent before it would grow past this many pprof bytes; a single larger profile still goes,
    /// alone.
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    /// 16 profiles or 3 MiB, whichever comes first: below the 4 MiB default message limit of gRPC servers.
    fn default() -> Self {
        BatchLimits {
            max_profiles: 16,
            max_bytes: 3 * 1024 * 1024,
        }
    }
}

/// Collects profiles that share one label set into [`proto::WriteRequest`]s, each with its own fresh
/// idempotency key. Every profile pushed ends up in exactly one request, in push order.
#[derive(Debug)]
pub struct Batcher {
    labels: Vec<proto::Label>,
    limits: BatchLimits,
    pending: Vec<proto::RawProfile>,
    pending_sources: Vec<String>,
    pending_bytes: usize,
}

/// A write request ready to send, with where each of its profiles came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The request: one series, its profiles in push order.
    pub request: proto::WriteRequest,
    /// Per profile of the request, in the same order, what it came from (a file's path). The node
    /// names a bad profile by its index in the request; this turns that into something a user knows.
    pub sources: Vec<String>,
}

impl Batch {
    /// The sources numbered as the node numbers the profiles: `profile 0 = a.pb.gz, profile 1 = …`.
    pub fn describe_sources(&self) -> String {
        self.sources
            .iter()
            .enumerate()
            .map(|(index, source)| format!("profile {index} = {source}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Batcher {
    /// A batcher for profiles that all carry `labels`.
    pub fn new(labels: Vec<proto::Label>, limits: BatchLimits) -> Self {
        Batcher {
            labels,
            limits,
            pending: Vec::new(),
            pending_sources: Vec::new(),
            pending_bytes: 0,
        }
    }

    /// Adds a profile read from `source`; returns the batches that became ready to send (zero, one
    /// or two).
    pub fn push(&mut self, profile: proto::RawProfile, source: impl Into<String>) -> Vec<Batch> {
        let mut ready = Vec::new();
        let size = profile.pprof.len();
        if !self.pending.is_empty() && self.pending_bytes.saturating_add(size) > self.limits.max_bytes {
            ready.extend(self.take_batch());
        }
        self.pending_bytes += size;
        self.pending.push(profile);
        self.pending_sources.push(source.into());
        if self.pending.len() >= self.limits.max_profiles.max(1)
            || self.pending_bytes >= self.limits.max_bytes
        {
            ready.extend(self.take_batch());
        }
        ready
    }

    /// Returns the last, partly filled batch, if any profile is left.
    pub fn finish(&mut self) -> Option<Batch> {
        self.take_batch()
    }

    fn take_batch(&mut self) -> Option<Batch> {
        if self.pending.is_empty() {
            return None;
        }
        self.pending_bytes = 0;
        let profiles = std::mem::take(&mut self.pending);
        debug_assert_eq!(profiles.len(), self.pending_sources.len());
        Some(Batch {
            request: proto::WriteRequest {
                idempotency_key: new_idempotency_key(),
                series: vec![proto::SeriesWrite {
                    labels: self.labels.clone(),
                    profiles,
                }],
            },
            sources: std::mem::take(&mut self.pending_sources),
        })
    }
}

/// What an ingest run did, as the node acknowledged it. Printed by `kiln ingest` (also as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestSummary {
    /// Files read and sent.
    pub files: u64,
    /// Files skipped because they could not be read or converted (only with `--keep-going`).
    pub skipped_files: u64,
    /// Batches acknowledged.
    pub batches: u64,
    /// Batches the node had already stored under the same idempotency key (stored once, not twice).
    pub duplicate_batches: u64,
    /// Profiles stored (one per sample type of each pprof).
    pub profiles: u64,
    /// Samples stored.
    pub samples: u64,
    /// The distinct profile types written.
    pub profile_types: BTreeSet<String>,
}

impl IngestSummary {
    /// Adds one acknowledgement.
    pub fn add_response(&mut self, response: &proto::WriteResponse) {
        self.batches += 1;
        if response.duplicate {
            self.duplicate_batches += 1;
        }
        self.profiles += response.profiles;
        self.samples += response.samples;
        self.profile_types.extend(response.profile_types.iter().cloned());
    }

    /// One line for people: `ingested 10 files in 2 batches: 34 profiles, 12345 samples, 4 profile types`.
    pub fn describe(&self) -> String {
        let mut line = format!(
            "ingested {} file{} in {} batch{}: {} profiles, {} samples, {} profile type{}",
            self.files,
            plural(self.files, "", "s"),
            self.batches,
            plural(self.batches, "", "es"),
            self.profiles,
            self.samples,
            self.profile_types.len(),
            plural(self.profile_types.len() as u64, "", "s"),
        );
        if self.duplicate_batches > 0 {
            line.push_str(&format!(
                " ({} batch{} already stored earlier, not stored twice)",
                self.duplicate_batches,
                plural(self.duplicate_batches, "", "es")
            ));
        }
        if self.skipped_files > 0 {
            line.push_str(&format!("; skipped {} unreadable file(s)", self.skipped_files));
        }
        line
    }
}

fn plural(count: u64, singular: &'static str, plural: &'static str) -> &'static str {
    if count == 1 {
        singular
    } else {
        plural
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(size: usize) -> proto::RawProfile {
        proto::RawProfile {
            pprof: vec![0; size],
            ..Default::default()
        }
    }

    #[test]
    fn labels_parse() {
        assert_eq!(
            parse_label_argument("job=api").unwrap(),
            proto::Label {
                name: "job".into(),
                value: "api".into()
            }
        );
        assert_eq!(parse_label_argument("query=a=b").unwrap().value, "a=b");
        assert_eq!(parse_label_argument("empty=").unwrap().value, "");
        assert!(parse_label_argument("novalue").is_err());
        assert!(parse_label_argument("=x").is_err());
        assert!(parse_label_argument("a b=x").is_err());
    }

    #[test]
    fn batches_split_by_count_and_bytes_with_distinct_keys() {
        let labels = vec![proto::Label {
            name: "job".into(),
            value: "api".into(),
        }];
        let mut batcher = Batcher::new(
            labels.clone(),
            BatchLimits {
                max_profiles: 3,
                max_bytes: 100,
            },
        );
        let mut batches = Vec::new();
        for (index, size) in [10, 10, 10, 10, 60, 50, 500, 1].into_iter().enumerate() {
            batches.extend(batcher.push(profile(size), format!("file-{index}")));
        }
        batches.extend(batcher.finish());
        assert!(batcher.finish().is_none());
        let sources: Vec<Vec<&str>> = batches
            .iter()
            .map(|batch| batch.sources.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            sources,
            vec![
                vec!["file-0", "file-1", "file-2"],
                vec!["file-3", "file-4"],
                vec!["file-5"],
                vec!["file-6"],
                vec!["file-7"]
            ],
            "each batch knows where each of its profiles came from, in request order"
        );
        assert_eq!(
            batches[1].describe_sources(),
            "profile 0 = file-3, profile 1 = file-4"
        );
        let batches: Vec<proto::WriteRequest> = batches.into_iter().map(|batch| batch.request).collect();
        let shapes: Vec<Vec<usize>> = batches
            .iter()
            .map(|batch| {
                batch.series[0]
                    .profiles
                    .iter()
                    .map(|profile| profile.pprof.len())
                    .collect()
            })
            .collect();
        assert_eq!(
            shapes,
            vec![vec![10, 10, 10], vec![10, 60], vec![50], vec![500], vec![1]]
        );
        assert!(batches.iter().all(|batch| batch.series[0].labels == labels));
        let keys: BTreeSet<&str> = batches
            .iter()
            .map(|batch| batch.idempotency_key.as_str())
            .collect();
        assert_eq!(keys.len(), batches.len());
    }

    #[test]
    fn summary_adds_up_and_describes_itself() {
        let mut summary = IngestSummary {
            files: 3,
            ..Default::default()
        };
        summary.add_response(&proto::WriteResponse {
            duplicate: false,
            profiles: 4,
            samples: 100,
            series: 4,
            profile_types: vec!["a".into(), "b".into()],
        });
        summary.add_response(&proto::WriteResponse {
            duplicate: true,
            profiles: 1,
            samples: 5,
            series: 1,
            profile_types: vec!["a".into()],
        });
        assert_eq!(
            summary.describe(),
            "ingested 3 files in 2 batches: 5 profiles, 105 samples, 2 profile types \
             (1 batch already stored earlier, not stored twice)"
        );
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["duplicateBatches"], 1);
        assert_eq!(json["profileTypes"], serde_json::json!(["a", "b"]));
    }
}
