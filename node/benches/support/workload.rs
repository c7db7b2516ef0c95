//! The workload both benchmarks send: generated profiles grouped into write
//! requests as agents send them, their totals, and the merge both time.

use kiln_proto::kiln::v1 as api;

use super::generator::{Fleet, FleetSpec, GeneratedProfile};

/// What one generated profile holds, once its bytes went into a request.
#[derive(Debug, Clone, Copy)]
pub struct ProfileMeta {
    /// Index of the series in the fleet.
    pub series: u32,
    /// Distinct (stack, value) samples in the pprof.
    pub samples: u32,
    /// CPU ticks (10 ms each) the profile covers.
    pub ticks: u32,
    /// Frames over all samples.
    pub frames: u64,
    /// Encoded pprof size before gzip.
    pub raw_bytes: u32,
    /// Gzipped pprof size, as sent.
    pub gzipped_bytes: u32,
}

/// Totals of a set of profiles.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    /// Profiles.
    pub profiles: u64,
    /// Distinct (stack, value) samples.
    pub samples: u64,
    /// CPU ticks.
    pub ticks: u64,
    /// Frames over all samples.
    pub frames: u64,
    /// pprof bytes before gzip.
    pub raw_bytes: u64,
    /// Gzipped pprof bytes.
    pub gzipped_bytes: u64,
}

impl Totals {
    pub fn of<'a>(profiles: impl IntoIterator<Item = &'a ProfileMeta>) -> Totals {
        let mut totals = Totals::default();
        for profile in profiles {
            totals.profiles += 1;
            totals.samples += u64::from(profile.samples);
            totals.ticks += u64::from(profile.ticks);
            totals.frames += profile.frames;
            totals.raw_bytes += u64::from(profile.raw_bytes);
            totals.gzipped_bytes += u64::from(profile.gzipped_bytes);
        }
        totals
    }
}

/// Groups profiles (sorted by tick, then series) into write requests of at most
/// `batch` profiles of one tick, as an agent sends the profiles of its host's
/// processes every interval.
pub fn build_requests(
    fleet: &Fleet,
    profiles: Vec<GeneratedProfile>,
    batch: usize,
) -> (Vec<api::WriteRequest>, Vec<ProfileMeta>) {
    let mut requests: Vec<api::WriteRequest> = Vec::new();
    let mut metas = Vec::with_capacity(profiles.len());
    let mut current_tick = u32::MAX;
    for profile in profiles {
        metas.push(ProfileMeta {
            series: profile.series,
            samples: profile.samples,
            ticks: profile.ticks,
            frames: profile.frames,
            raw_bytes: profile.raw_bytes,
            gzipped_bytes: profile.gzipped.len() as u32,
        });
        let full = requests
            .last()
            .is_none_or(|request| request.series.len() >= batch.max(1));
        if profile.tick != current_tick || full {
            current_tick = profile.tick;
            requests.push(api::WriteRequest {
                idempotency_key: format!("fleet-bench-{}-{}", profile.tick, requests.len()),
                series: Vec::new(),
            });
        }
        let labels = fleet.series[profile.series as usize]
            .labels
            .iter()
            .map(|(name, value)| api::Label {
                name: name.clone(),
                value: value.clone(),
            })
            .collect();
        let request = requests.last_mut().expect("a request was just pushed");
        request.series.push(api::SeriesWrite {
            labels,
            profiles: vec![api::RawProfile {
                pprof: profile.gzipped,
                name: "process_cpu".into(),
                default_time_unix_nanos: 0,
                delta: None,
            }],
        });
    }
    (requests, metas)
}

/// The merge both benchmarks time: one zone (a third of the series) over the
/// whole simulated range, as a full stack tree.
pub fn merge_request(spec: &FleetSpec) -> api::MergeRequest {
    let start_unix_ms = spec.start_unix_nanos / 1_000_000;
    api::MergeRequest {
        selection: Some(api::Selection {
            selector: format!(
                "process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta{{zone=\"{}\"}}",
                FleetSpec::zone_name(0)
            ),
            start_unix_ms,
            end_unix_ms: start_unix_ms + spec.duration_secs as i64 * 1000,
        }),
        format: api::MergeFormat::Tree as i32,
        ..Default::default()
    }
}
