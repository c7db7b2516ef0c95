//! pprof scraping of Go `net/http/pprof` endpoints. One loop per (job, target, profile kind): the CPU
//! profile is requested with `?seconds=INTERVAL`, so consecutive scrapes cover time end to end and each is
//! a delta; the others are fetched as they come once per interval.
//!
//! `/debug/pprof/heap` and `/debug/pprof/allocs` return the same four sample types; the agent keeps the
//! `inuse_*` ones from `heap` and the `alloc_*` ones from `allocs`, so each kind is stored once.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use kiln_proto::kiln::v1::{Label, RawProfile, SeriesWrite, WriteRequest};
use kiln_proto::pprof as wire;
use prost::Message;

use crate::config::{ProfileKind, ScrapeConfig};
use crate::metrics::{Metrics, ScrapeLabel};
use crate::push::Outbox;
use crate::relabel::{self, Rule};
use crate::shutdown::Shutdown;

/// Largest profile body accepted from a target.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// A failed scrape.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The request failed.
    #[error("GET {url}: {source}")]
    Http {
        /// The URL.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The target answered with an error status.
    #[error("GET {url}: HTTP {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The start of the body (Go explains errors there).
        body: String,
    },
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("GET {url}: profile larger than {MAX_BODY_BYTES} bytes")]
    TooLarge {
        /// The URL.
        url: String,
    },
    /// The body is not a pprof profile.
    #[error("GET {url}: not a pprof profile: {reason}")]
    NotPprof {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// One scrape loop's fixed part.
#[derive(Clone)]
pub struct ScrapeTarget {
    /// The job's config.
    pub config: ScrapeConfig,
    /// `host:port`.
    pub target: String,
    /// Which profile.
    pub kind: ProfileKind,
    /// The series labels (static, job, instance, the job's labels), relabelled.
    pub labels: BTreeMap<String, String>,
}

impl ScrapeTarget {
    /// The URL fetched.
    pub fn url(&self) -> String {
        let base = format!(
            "{}://{}{}",
            self.config.scheme,
            self.target,
            self.config.path(self.kind)
        );
        if self.kind == ProfileKind::Cpu {
            format!("{base}?seconds={}", cpu_seconds(self.config.interval))
        } else {
            base
        }
    }

    fn timeout(&self) -> Duration {
        let base = self.config.timeout();
        if self.kind == ProfileKind::Cpu {
            base + Duration::from_secs(cpu_seconds(self.config.interval))
        } else {
            base
        }
    }
}

fn cpu_seconds(interval: Duration) -> u64 {
    interval.as_secs().max(1)
}

/// Builds every scrape loop's target from the config: labels `job`, `instance`, the job's labels over
/// the static labels, then the relabel rules (a target they drop is not scraped).
pub fn targets(
    scrape_configs: &[ScrapeConfig],
    static_labels: &BTreeMap<String, String>,
    rules: &[Rule],
) -> Vec<ScrapeTarget> {
    let mut out = Vec::new();
    for config in scrape_configs {
        for target in &config.targets {
            let mut labels = static_labels.clone();
            labels.extend(config.labels.clone());
            labels.insert("job".to_string(), config.job_name.clone());
            labels.insert("instance".to_string(), target.clone());
            let Some(labels) = relabel::apply(rules, labels) else {
                tracing::info!(job = %config.job_name, %target, "target dropped by relabel rules");
                continue;
            };
            for kind in &config.profiles {
                out.push(ScrapeTarget {
                    config: config.clone(),
                    target: target.clone(),
                    kind: *kind,
                    labels: labels.clone(),
                });
            }
        }
    }
    out
}

/// Fetches one profile and returns the pprof bytes to store.
pub async fn scrape_once(client: &reqwest::Client, target: &ScrapeTarget) -> Result<Vec<u8>, ScrapeError> {
    let url = target.url();
    let http = |source| ScrapeError::Http {
        url: url.clone(),
        source,
    };
    let response = client
        .get(&url)
        .timeout(target.timeout())
        .send()
        .await
        .map_err(http)?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(ScrapeError::Status {
            url,
            status: status.as_u16(),
            body: body.chars().take(200).collect(),
        });
    }
    if response
        .content_length()
        .is_some_and(|length| length > MAX_BODY_BYTES as u64)
    {
        return Err(ScrapeError::TooLarge { url });
    }
    let body = response.bytes().await.map_err(http)?;
    if body.len() > MAX_BODY_BYTES {
        return Err(ScrapeError::TooLarge { url });
    }
    match target.kind {
        ProfileKind::Heap => {
            keep_sample_types(&body, "inuse_").map_err(|reason| ScrapeError::NotPprof { url, reason })
        }
        ProfileKind::Allocs => {
            keep_sample_types(&body, "alloc_").map_err(|reason| ScrapeError::NotPprof { url, reason })
        }
        _ => {
            // Validate early so that garbage is reported here, against the target, not by the node.
            decode(&body).map_err(|reason| ScrapeError::NotPprof { url, reason })?;
            Ok(body.to_vec())
        }
    }
}

fn decode(bytes: &[u8]) -> Result<wire::Profile, String> {
    let raw = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .take(256 * 1024 * 1024)
            .read_to_end(&mut out)
            .map_err(|error| format!("gunzip: {error}"))?;
        out
    } else {
        bytes.to_vec()
    };
    wire::Profile::decode(raw.as_slice()).map_err(|error| error.to_string())
}

/// Keeps only the sample types whose name starts with `prefix` (and their values), re-encoded. A profile
/// with no such sample type is returned unchanged.
pub fn keep_sample_types(bytes: &[u8], prefix: &str) -> Result<Vec<u8>, String> {
    let mut profile = decode(bytes)?;
    let name_of = |value_type: &wire::ValueType| {
        usize::try_from(value_type.r#type)
            .ok()
            .and_then(|index| profile.string_table.get(index))
            .cloned()
            .unwrap_or_default()
    };
    let keep: Vec<usize> = profile
        .sample_type
        .iter()
        .enumerate()
        .filter(|(_, value_type)| name_of(value_type).starts_with(prefix))
        .map(|(index, _)| index)
        .collect();
    if keep.is_empty() || keep.len() == profile.sample_type.len() {
        return Ok(bytes.to_vec());
    }
    let default_name = usize::try_from(profile.default_sample_type)
        .ok()
        .and_then(|index| profile.string_table.get(index))
        .cloned();
    profile.sample_type = keep.iter().map(|index| profile.sample_type[*index]).collect();
    for sample in &mut profile.sample {
        sample.value = keep
            .iter()
            .map(|index| sample.value.get(*index).copied().unwrap_or(0))
            .collect();
    }
    // The default sample type is a string id; keep it only if that type survived.
    if let Some(name) = default_name {
        if !profile
            .sample_type
            .iter()
            .any(|value_type| name_of_table(&profile.string_table, value_type) == name)
        {
            profile.default_sample_type = 0;
        }
    }
    Ok(crate::profile::encode_gzipped(&profile))
}

fn name_of_table(strings: &[String], value_type: &wire::ValueType) -> String {
    usize::try_from(value_type.r#type)
        .ok()
        .and_then(|index| strings.get(index))
        .cloned()
        .unwrap_or_default()
}

/// The write request of one scraped profile.
pub fn write_request(target: &ScrapeTarget, pprof: Vec<u8>) -> WriteRequest {
    WriteRequest {
        idempotency_key: kiln_client::new_idempotency_key(),
        series: vec![SeriesWrite {
            labels: target
                .labels
                .iter()
                .map(|(name, value)| Label {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            profiles: vec![RawProfile {
                pprof,
                name: target.kind.profile_name().to_string(),
                default_time_unix_nanos: 0,
                delta: Some(target.kind == ProfileKind::Cpu),
            }],
        }],
    }
}

/// Scrapes `target` every interval until `shutdown` is cancelled, spooling each profile.
pub async fn run_loop(
    client: reqwest::Client,
    target: ScrapeTarget,
    outbox: Outbox,
    metrics: Metrics,
    shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(target.config.interval);
    // The CPU request itself lasts an interval; don't burst to catch up after a slow one.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let counter = |result: &str| {
        metrics
            .scrapes
            .get_or_create(&ScrapeLabel {
                job: target.config.job_name.clone(),
                profile: target.kind.as_str().to_string(),
                result: result.to_string(),
            })
            .clone()
    };
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = ticker.tick() => {}
        }
        let result = tokio::select! {
            _ = shutdown.wait() => return,
            result = scrape_once(&client, &target) => result,
        };
        match result {
            Ok(pprof) => {
                counter("ok").inc();
                if let Err(error) = outbox.send(write_request(&target, pprof)).await {
                    tracing::error!(%error, "cannot spool a scraped profile");
                }
            }
            Err(error) => {
                counter("error").inc();
                tracing::warn!(%error, job = %target.config.job_name, "scrape failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap_profile() -> Vec<u8> {
        let strings: Vec<String> = [
            "",
            "alloc_objects",
            "count",
            "alloc_space",
            "bytes",
            "inuse_objects",
            "inuse_space",
            "space",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let profile = wire::Profile {
            sample_type: vec![
                wire::ValueType { r#type: 1, unit: 2 },
                wire::ValueType { r#type: 3, unit: 4 },
                wire::ValueType { r#type: 5, unit: 2 },
                wire::ValueType { r#type: 6, unit: 4 },
            ],
            sample: vec![wire::Sample {
                location_id: vec![],
                value: vec![1, 2, 3, 4],
                label: vec![],
            }],
            string_table: strings,
            period_type: Some(wire::ValueType { r#type: 7, unit: 4 }),
            default_sample_type: 6,
            ..Default::default()
        };
        profile.encode_to_vec()
    }

    #[test]
    fn heap_keeps_inuse_and_allocs_keeps_alloc() {
        let inuse = decode(&keep_sample_types(&heap_profile(), "inuse_").expect("filter")).expect("decode");
        assert_eq!(inuse.sample_type.len(), 2);
        assert_eq!(inuse.sample[0].value, vec![3, 4]);
        assert_eq!(inuse.default_sample_type, 6);
        let alloc = decode(&keep_sample_types(&heap_profile(), "alloc_").expect("filter")).expect("decode");
        assert_eq!(alloc.sample[0].value, vec![1, 2]);
        assert_eq!(alloc.default_sample_type, 0, "inuse_space is gone");
        assert!(keep_sample_types(b"not a profile at all \xff\xff", "x").is_err());
    }

    #[test]
    fn targets_get_job_instance_and_cpu_seconds() {
        let config: crate::config::Config = toml::from_str(
            "[[scrape_configs]]\njob_name='go'\ntargets=['127.0.0.1:6060','10.0.0.1:1']\ninterval='15s'\nprofiles=['cpu','heap']\n[scrape_configs.labels]\nteam='a'\n\
             [[relabel_configs]]\naction='drop'\nsource_labels=['instance']\nregex='10\\..*'\n",
        )
        .expect("parse");
        let rules = relabel::compile(&config.relabel_configs).expect("rules");
        let mut statics = BTreeMap::new();
        statics.insert("env".to_string(), "dev".to_string());
        let targets = targets(&config.scrape_configs, &statics, &rules);
        assert_eq!(targets.len(), 2);
        assert_eq!(
            targets[0].url(),
            "http://127.0.0.1:6060/debug/pprof/profile?seconds=15"
        );
        assert_eq!(targets[1].url(), "http://127.0.0.1:6060/debug/pprof/heap");
        assert_eq!(targets[0].labels.get("job").map(String::as_str), Some("go"));
        assert_eq!(targets[0].labels.get("env").map(String::as_str), Some("dev"));
        assert_eq!(targets[0].labels.get("team").map(String::as_str), Some("a"));
        // Default timeout: the interval (15 s), plus the 15 s the CPU profile takes.
        assert_eq!(targets[0].timeout(), Duration::from_secs(30));
    }
}
