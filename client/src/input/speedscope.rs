//! Speedscope JSON (<https://www.speedscope.app/file-format-schema.json>), as py-spy, rbspy and others
//! write it: `sampled` profiles (`samples` + `weights`) and `evented` profiles (`O`/`C` events).

use std::collections::BTreeMap;

use kiln_proto::pprof::Profile;
use serde::Deserialize;

use super::builder::PprofBuilder;
use super::InputError;

#[derive(Debug, Deserialize)]
struct SpeedscopeFile {
    #[serde(rename = "$schema")]
    schema: String,
    shared: SpeedscopeShared,
    profiles: Vec<SpeedscopeProfile>,
}

#[derive(Debug, Deserialize)]
struct SpeedscopeShared {
    frames: Vec<SpeedscopeFrame>,
}

#[derive(Debug, Deserialize)]
struct SpeedscopeFrame {
    name: String,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    line: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
enum SpeedscopeProfile {
    #[serde(rename = "sampled")]
    Sampled {
        unit: String,
        #[serde(rename = "startValue", default)]
        start_value: f64,
        #[serde(rename = "endValue", default)]
        end_value: f64,
        samples: Vec<Vec<usize>>,
        weights: Vec<f64>,
    },
    #[serde(rename = "evented")]
    Evented {
        unit: String,
        #[serde(rename = "startValue", default)]
        start_value: f64,
        #[serde(rename = "endValue", default)]
        end_value: f64,
        events: Vec<SpeedscopeEvent>,
    },
}

#[derive(Debug, Deserialize)]
struct SpeedscopeEvent {
    #[serde(rename = "type")]
    kind: String,
    frame: usize,
    at: f64,
}

/// What the weights of a speedscope profile measure, and how they become pprof values.
#[derive(Debug, Clone, Copy, PartialEq)]
enum WeightKind {
    /// Time; the factor turns the speedscope unit into nanoseconds.
    Time { nanos_per_unit: f64 },
    /// Bytes.
    Bytes,
    /// Unitless weights: they are sample counts.
    Count,
}

impl WeightKind {
    fn from_unit(unit: &str) -> Result<Self, InputError> {
        let kind = match unit {
            "nanoseconds" => WeightKind::Time { nanos_per_unit: 1.0 },
            "microseconds" => WeightKind::Time { nanos_per_unit: 1e3 },
            "milliseconds" => WeightKind::Time { nanos_per_unit: 1e6 },
            "seconds" => WeightKind::Time { nanos_per_unit: 1e9 },
            "bytes" => WeightKind::Bytes,
            "none" => WeightKind::Count,
            other => return Err(InputError::Speedscope(format!("unknown unit {other:?}"))),
        };
        Ok(kind)
    }

    /// Multiplier from the profile's unit to the pprof unit.
    fn scale(self) -> f64 {
        match self {
            WeightKind::Time { nanos_per_unit } => nanos_per_unit,
            WeightKind::Bytes | WeightKind::Count => 1.0,
        }
    }

    fn same_dimension(self, other: WeightKind) -> bool {
        matches!(
            (self, other),
            (WeightKind::Time { .. }, WeightKind::Time { .. })
                | (WeightKind::Bytes, WeightKind::Bytes)
                | (WeightKind::Count, WeightKind::Count)
        )
    }
}

/// Samples per stack: how many samples (or evented intervals) and their summed weight in pprof units.
#[derive(Debug, Default, Clone, Copy)]
struct StackTotals {
    samples: i64,
    weight: f64,
}

/// Converts a speedscope file into one pprof profile, merging all of its profiles.
///
/// - Sample types: `samples:count`, then the weight: `cpu:nanoseconds` for time units (seconds,
///   milliseconds, microseconds, nanoseconds), `space:bytes` for bytes; unit `none` gives only
///   `samples:count`, whose values are then the (unitless) weights.
/// - For `sampled` profiles each sample counts 1; for `evented` profiles each stretch of time during which
///   a stack was on top counts 1 and its length is the weight.
/// - A frame's name becomes the function name, its file the function's filename, its line the location's
///   line. Weights are summed per distinct stack and rounded to whole units once, so totals are exact to
///   within one unit per distinct stack.
///
/// Fails when the file is not speedscope JSON, mixes time with bytes, refers to frames that do not exist,
/// has a different number of weights than samples, or closes a frame that is not the innermost open one.
pub fn speedscope_to_pprof(json_text: &str) -> Result<Profile, InputError> {
    let file: SpeedscopeFile = serde_json::from_str(json_text).map_err(InputError::SpeedscopeJson)?;
    if !file.schema.contains("speedscope") {
        return Err(InputError::Speedscope(format!(
            "$schema {:?} is not speedscope's",
            file.schema
        )));
    }
    if file.profiles.is_empty() {
        return Err(InputError::Empty(
            "the speedscope file holds no profile".to_string(),
        ));
    }
    let frame_count = file.shared.frames.len();
    let mut weight_kind: Option<WeightKind> = None;
    let mut duration_units_max: f64 = 0.0;
    let mut totals_by_stack: BTreeMap<Vec<usize>, StackTotals> = BTreeMap::new();

    for (profile_index, profile) in file.profiles.iter().enumerate() {
        let (unit, start_value, end_value) = match profile {
            SpeedscopeProfile::Sampled {
                unit,
                start_value,
                end_value,
                ..
            }
            | SpeedscopeProfile::Evented {
                unit,
                start_value,
                end_value,
                ..
            } => (unit, *start_value, *end_value),
        };
        let kind = WeightKind::from_unit(unit)?;
        match weight_kind {
            None => weight_kind = Some(kind),
            Some(first_kind) if !first_kind.same_dimension(kind) => {
                return Err(InputError::Speedscope(format!(
                    "profile {profile_index} has unit {unit:?}, which cannot be merged with the first profile's"
                )));
            }
            Some(_) => {}
        }
        let scale = kind.scale();
        if end_value > start_value {
            duration_units_max = duration_units_max.max((end_value - start_value) * scale);
        }
        match profile {
            SpeedscopeProfile::Sampled { samples, weights, .. } => {
                add_sampled(
                    profile_index,
                    samples,
                    weights,
                    frame_count,
                    scale,
                    &mut totals_by_stack,
                )?;
            }
            SpeedscopeProfile::Evented {
                events, end_value, ..
            } => {
                add_evented(
                    profile_index,
                    events,
                    *end_value,
                    frame_count,
                    scale,
                    &mut totals_by_stack,
                )?;
            }
        }
    }

    let weight_kind = weight_kind.unwrap_or(WeightKind::Count);
    let mut builder = match weight_kind {
        WeightKind::Time { .. } => PprofBuilder::new(
            &[("samples", "count"), ("cpu", "nanoseconds")],
            ("cpu", "nanoseconds"),
        ),
        WeightKind::Bytes => {
            PprofBuilder::new(&[("samples", "count"), ("space", "bytes")], ("space", "bytes"))
        }
        WeightKind::Count => PprofBuilder::new(&[("samples", "count")], ("cpu", "nanoseconds")),
    };
    match weight_kind {
        WeightKind::Time { .. } => builder.set_default_sample_type("cpu"),
        WeightKind::Bytes => builder.set_default_sample_type("space"),
        WeightKind::Count => {}
    }
    if matches!(weight_kind, WeightKind::Time { .. }) {
        builder.set_duration_nanos(round_to_i64(duration_units_max));
    }

    let mut location_by_frame: Vec<Option<u64>> = vec![None; frame_count];
    for (root_first_stack, totals) in &totals_by_stack {
        let mut leaf_first = Vec::with_capacity(root_first_stack.len());
        for &frame_index in root_first_stack.iter().rev() {
            // Frame indices were checked against `frame_count` when the stacks were collected.
            let Some(slot) = location_by_frame.get_mut(frame_index) else {
                return Err(frame_out_of_range(frame_index, frame_count));
            };
            let location_id = match slot {
                Some(location_id) => *location_id,
                None => {
                    let frame = &file.shared.frames[frame_index];
                    let function_id = builder.function_id(&frame.name, frame.file.as_deref().unwrap_or(""));
                    let line = frame.line.map(round_to_i64).unwrap_or(0);
                    let location_id = builder.location_id(function_id, line);
                    *slot = Some(location_id);
                    location_id
                }
            };
            leaf_first.push(location_id);
        }
        let values = match weight_kind {
            WeightKind::Count => vec![round_to_i64(totals.weight)],
            WeightKind::Time { .. } | WeightKind::Bytes => vec![totals.samples, round_to_i64(totals.weight)],
        };
        builder.add_sample(leaf_first, values);
    }
    Ok(builder.finish())
}

fn round_to_i64(value: f64) -> i64 {
    // `as` saturates at the i64 bounds and maps NaN to 0, which is what a profile value should become.
    value.round() as i64
}

fn frame_out_of_range(frame_index: usize, frame_count: usize) -> InputError {
    InputError::Speedscope(format!(
        "frame index {frame_index} is out of range (the file has {frame_count} frames)"
    ))
}

fn add_sampled(
    profile_index: usize,
    samples: &[Vec<usize>],
    weights: &[f64],
    frame_count: usize,
    scale: f64,
    totals_by_stack: &mut BTreeMap<Vec<usize>, StackTotals>,
) -> Result<(), InputError> {
    if samples.len() != weights.len() {
        return Err(InputError::Speedscope(format!(
            "profile {profile_index} has {} samples but {} weights",
            samples.len(),
            weights.len()
        )));
    }
    for (stack, &weight) in samples.iter().zip(weights) {
        if let Some(&bad_index) = stack.iter().find(|&&frame_index| frame_index >= frame_count) {
            return Err(frame_out_of_range(bad_index, frame_count));
        }
        if stack.is_empty() || !weight.is_finite() {
            continue;
        }
        let totals = totals_by_stack.entry(stack.clone()).or_default();
        totals.samples += 1;
        totals.weight += weight * scale;
    }
    Ok(())
}

fn add_evented(
    profile_index: usize,
    events: &[SpeedscopeEvent],
    end_value: f64,
    frame_count: usize,
    scale: f64,
    totals_by_stack: &mut BTreeMap<Vec<usize>, StackTotals>,
) -> Result<(), InputError> {
    let mut open_stack: Vec<usize> = Vec::new();
    let mut last_at: Option<f64> = None;
    let mut credit_top = |open_stack: &[usize], from: Option<f64>, to: f64| {
        let Some(from) = from else { return };
        if open_stack.is_empty() || to <= from {
            return;
        }
        let totals = totals_by_stack.entry(open_stack.to_vec()).or_default();
        totals.samples += 1;
        totals.weight += (to - from) * scale;
    };
    for (event_index, event) in events.iter().enumerate() {
        if event.frame >= frame_count {
            return Err(frame_out_of_range(event.frame, frame_count));
        }
        if !event.at.is_finite() || last_at.is_some_and(|last| event.at < last) {
            return Err(InputError::Speedscope(format!(
                "profile {profile_index}, event {event_index}: time {} goes backwards",
                event.at
            )));
        }
        credit_top(&open_stack, last_at, event.at);
        last_at = Some(event.at);
        match event.kind.as_str() {
            "O" => open_stack.push(event.frame),
            "C" => {
                if open_stack.last() != Some(&event.frame) {
                    return Err(InputError::Speedscope(format!(
                        "profile {profile_index}, event {event_index}: closes frame {} but the innermost \
                         open frame is {:?}",
                        event.frame,
                        open_stack.last()
                    )));
                }
                open_stack.pop();
            }
            other => {
                return Err(InputError::Speedscope(format!(
                    "profile {profile_index}, event {event_index}: unknown event type {other:?}"
                )));
            }
        }
    }
    // Frames still open at the end run until the profile's end.
    credit_top(&open_stack, last_at, end_value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::folded::pprof_to_folded_lines;

    fn string(profile: &Profile, index: i64) -> &str {
        &profile.string_table[index as usize]
    }

    #[test]
    fn shared_testdata_keeps_sample_count_and_total_weight() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/testdata/speedscope/python-pyspy.speedscope.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let profile = speedscope_to_pprof(&text).unwrap();

        // Independent totals, straight from the JSON.
        let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut expected_samples = 0_i64;
        let mut expected_seconds = 0.0_f64;
        for raw_profile in raw["profiles"].as_array().unwrap() {
            assert_eq!(raw_profile["unit"], "seconds");
            expected_samples += raw_profile["samples"].as_array().unwrap().len() as i64;
            expected_seconds += raw_profile["weights"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_f64().unwrap())
                .sum::<f64>();
        }
        assert_eq!(expected_samples, 568);

        let types: Vec<(&str, &str)> = profile
            .sample_type
            .iter()
            .map(|value_type| {
                (
                    string(&profile, value_type.r#type),
                    string(&profile, value_type.unit),
                )
            })
            .collect();
        assert_eq!(types, vec![("samples", "count"), ("cpu", "nanoseconds")]);
        assert_eq!(string(&profile, profile.default_sample_type), "cpu");

        let total_samples: i64 = profile.sample.iter().map(|sample| sample.value[0]).sum();
        let total_nanos: i64 = profile.sample.iter().map(|sample| sample.value[1]).sum();
        assert_eq!(total_samples, expected_samples);
        let expected_nanos = expected_seconds * 1e9;
        let tolerance = profile.sample.len() as f64; // at most half a nanosecond of rounding per stack
        assert!(
            (total_nanos as f64 - expected_nanos).abs() <= tolerance,
            "{total_nanos} ns vs {expected_nanos} ns"
        );
        assert!(profile.duration_nanos > 5_000_000_000);

        // Frames keep name, file and line.
        let checksum = profile
            .function
            .iter()
            .find(|function| string(&profile, function.name) == "checksum")
            .unwrap();
        assert_eq!(string(&profile, checksum.filename), "/srv/app/work.py");
        let lines: Vec<i64> = profile
            .location
            .iter()
            .filter(|location| location.line[0].function_id == checksum.id)
            .map(|location| location.line[0].line)
            .collect();
        assert!(lines.contains(&10), "{lines:?}");

        // Every stack starts at <module> (root) in folded form.
        for line in pprof_to_folded_lines(&profile, 0).unwrap() {
            assert!(line.starts_with("<module>;main"), "{line}");
        }
    }

    #[test]
    fn evented_profiles_are_credited_to_the_top_of_stack_and_merged_with_sampled() {
        let text = r#"{
          "$schema": "https://www.speedscope.app/file-format-schema.json",
          "shared": {"frames": [{"name": "main"}, {"name": "work", "file": "w.rs", "line": 7}]},
          "profiles": [
            {"type": "evented", "name": "e", "unit": "milliseconds", "startValue": 0, "endValue": 10,
             "events": [{"type": "O", "frame": 0, "at": 0}, {"type": "O", "frame": 1, "at": 2},
                        {"type": "C", "frame": 1, "at": 5}, {"type": "C", "frame": 0, "at": 10}]},
            {"type": "sampled", "name": "s", "unit": "seconds", "startValue": 0, "endValue": 1,
             "samples": [[0, 1]], "weights": [0.001]}
          ]
        }"#;
        let profile = speedscope_to_pprof(text).unwrap();
        let mut folded_nanos = pprof_to_folded_lines(&profile, 1).unwrap();
        folded_nanos.sort();
        // main alone: 0-2 ms and 5-10 ms = 7 ms; main;work: 3 ms evented + 1 ms sampled.
        assert_eq!(folded_nanos, vec!["main 7000000", "main;work 4000000"]);
        let mut folded_counts = pprof_to_folded_lines(&profile, 0).unwrap();
        folded_counts.sort();
        assert_eq!(folded_counts, vec!["main 2", "main;work 2"]);
        assert_eq!(profile.duration_nanos, 1_000_000_000);
    }

    #[test]
    fn bytes_and_unitless_profiles() {
        let bytes = r#"{"$schema": "https://www.speedscope.app/file-format-schema.json",
          "shared": {"frames": [{"name": "alloc"}]},
          "profiles": [{"type": "sampled", "name": "m", "unit": "bytes", "startValue": 0, "endValue": 0,
                        "samples": [[0], [0]], "weights": [100, 28]}]}"#;
        let profile = speedscope_to_pprof(bytes).unwrap();
        assert_eq!(string(&profile, profile.sample_type[1].r#type), "space");
        assert_eq!(string(&profile, profile.sample_type[1].unit), "bytes");
        assert_eq!(profile.sample[0].value, vec![2, 128]);

        let unitless = bytes.replace("\"bytes\"", "\"none\"");
        let profile = speedscope_to_pprof(&unitless).unwrap();
        assert_eq!(profile.sample_type.len(), 1);
        assert_eq!(profile.sample[0].value, vec![128]);
    }

    #[test]
    fn malformed_files_are_rejected() {
        let base = |profiles: &str| {
            format!(
                r#"{{"$schema": "https://www.speedscope.app/file-format-schema.json",
                   "shared": {{"frames": [{{"name": "a"}}, {{"name": "b"}}]}}, "profiles": [{profiles}]}}"#
            )
        };
        let cases = [
            base(r#"{"type": "sampled", "unit": "seconds", "samples": [[0, 5]], "weights": [1]}"#),
            base(r#"{"type": "sampled", "unit": "seconds", "samples": [[0]], "weights": []}"#),
            base(r#"{"type": "sampled", "unit": "parsecs", "samples": [[0]], "weights": [1]}"#),
            base(
                r#"{"type": "evented", "unit": "seconds", "endValue": 2,
                   "events": [{"type": "O", "frame": 0, "at": 0}, {"type": "C", "frame": 1, "at": 1}]}"#,
            ),
            base(
                r#"{"type": "sampled", "unit": "seconds", "samples": [[0]], "weights": [1]},
                   {"type": "sampled", "unit": "bytes", "samples": [[0]], "weights": [1]}"#,
            ),
            base(""),
            r#"{"$schema": "https://example.com/other.json", "shared": {"frames": []}, "profiles": []}"#
                .to_string(),
            "{\"profiles\": 3}".to_string(),
        ];
        for case in cases {
            assert!(speedscope_to_pprof(&case).is_err(), "accepted: {case}");
        }
    }
}
