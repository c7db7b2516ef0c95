//! Folded stacks (Brendan Gregg's collapsed format, as `py-spy record -f raw`, `stackcollapse-*.pl` and
//! inferno write it): one `frame;frame;...;leaf COUNT` line per stack, root first.

use std::collections::HashMap;

use kiln_proto::pprof::Profile;

use super::builder::PprofBuilder;
use super::InputError;

/// One line of a folded file: the frames root first, and the count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldedStack<'text> {
    /// The frames, root first; each is the whole text between two `;`.
    pub frames: Vec<&'text str>,
    /// The count after the last space of the line.
    pub count: i64,
}

/// Parses folded text. Blank lines are skipped; every other line must be `STACK COUNT` where the count
/// (a non-negative integer) follows the line's last space, so frames may themselves contain spaces. A
/// line that is only ` COUNT` is a sample with no frames. Errors name the 1-based line number.
pub fn parse_folded(text: &str) -> Result<Vec<FoldedStack<'_>>, InputError> {
    let mut stacks = Vec::new();
    for (line_index, raw_line) in text.lines().enumerate() {
        let line_number = line_index + 1;
        let line = raw_line.trim_end();
        if line.trim_start().is_empty() {
            continue;
        }
        let bad_line = |reason: &str| InputError::FoldedLine {
            line_number,
            reason: reason.to_string(),
        };
        let Some((stack_text, count_text)) = line.rsplit_once(' ') else {
            return Err(bad_line(
                "expected `frame;frame;...;leaf COUNT`, found no space before a count",
            ));
        };
        let count: i64 = count_text
            .parse()
            .map_err(|_| bad_line(&format!("the count {count_text:?} is not a whole number")))?;
        if count < 0 {
            return Err(bad_line(&format!("the count {count} is negative")));
        }
        let stack_text = stack_text.trim_end();
        // A line with only a count (py-spy writes ` 1` for a sample without frames) is a sample with an
        // empty stack: it counts toward the total and belongs to no function.
        let frames = if stack_text.is_empty() {
            Vec::new()
        } else {
            stack_text.split(';').collect()
        };
        stacks.push(FoldedStack { frames, count });
    }
    Ok(stacks)
}

/// Converts folded text into a pprof profile: sample type `samples:count`, period type `cpu:nanoseconds`,
/// one function per distinct frame text (the whole frame is the function name), one location per
/// function, one sample per line with its stack leaf first. Fails on a malformed line or when the text
/// holds no stack at all.
pub fn folded_to_pprof(text: &str) -> Result<Profile, InputError> {
    let stacks = parse_folded(text)?;
    if stacks.is_empty() {
        return Err(InputError::Empty("the folded file holds no stack".to_string()));
    }
    let mut builder = PprofBuilder::new(&[("samples", "count")], ("cpu", "nanoseconds"));
    let mut location_by_frame: HashMap<&str, u64> = HashMap::new();
    for stack in &stacks {
        let mut leaf_first = Vec::with_capacity(stack.frames.len());
        for &frame in stack.frames.iter().rev() {
            let location_id = match location_by_frame.get(frame) {
                Some(&location_id) => location_id,
                None => {
                    let function_id = builder.function_id(frame, "");
                    let location_id = builder.location_id(function_id, 0);
                    location_by_frame.insert(frame, location_id);
                    location_id
                }
            };
            leaf_first.push(location_id);
        }
        builder.add_sample(leaf_first, vec![stack.count]);
    }
    Ok(builder.finish())
}

/// Folds a pprof profile back into `root;...;leaf VALUE` lines, one per sample, using value
/// `value_index` of each sample. Inlined frames of a location are expanded (pprof lists the innermost
/// first). Fails when a sample refers to a location or function that does not exist, or has no value at
/// `value_index`.
pub fn pprof_to_folded_lines(profile: &Profile, value_index: usize) -> Result<Vec<String>, InputError> {
    let string_at = |index: i64| -> Result<&str, InputError> {
        usize::try_from(index)
            .ok()
            .and_then(|index| profile.string_table.get(index))
            .map(String::as_str)
            .ok_or_else(|| InputError::InvalidPprof(format!("string index {index} is out of range")))
    };
    let functions: HashMap<u64, &str> = profile
        .function
        .iter()
        .map(|function| Ok((function.id, string_at(function.name)?)))
        .collect::<Result<_, InputError>>()?;
    let locations: HashMap<u64, &kiln_proto::pprof::Location> = profile
        .location
        .iter()
        .map(|location| (location.id, location))
        .collect();
    let mut lines = Vec::with_capacity(profile.sample.len());
    for sample in &profile.sample {
        let value = *sample.value.get(value_index).ok_or_else(|| {
            InputError::InvalidPprof(format!("a sample has no value at index {value_index}"))
        })?;
        let mut leaf_first_names: Vec<&str> = Vec::new();
        for location_id in &sample.location_id {
            let location = locations
                .get(location_id)
                .ok_or_else(|| InputError::InvalidPprof(format!("location {location_id} does not exist")))?;
            for line in &location.line {
                let name = functions.get(&line.function_id).ok_or_else(|| {
                    InputError::InvalidPprof(format!("function {} does not exist", line.function_id))
                })?;
                leaf_first_names.push(name);
            }
        }
        leaf_first_names.reverse();
        lines.push(format!("{} {value}", leaf_first_names.join(";")));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_is_after_the_last_space_and_frames_keep_spaces() {
        let stacks = parse_folded("<module> (work.py:22);main (work.py:20) 9\n\n  \r\nsolo 1\r\n").unwrap();
        assert_eq!(
            stacks,
            vec![
                FoldedStack {
                    frames: vec!["<module> (work.py:22)", "main (work.py:20)"],
                    count: 9
                },
                FoldedStack {
                    frames: vec!["solo"],
                    count: 1
                },
            ]
        );
    }

    #[test]
    fn malformed_lines_name_their_number() {
        for (text, expected_line) in [("a;b 1\nnocount\n", 2), ("a;b x\n", 1), ("a 1\nb -3\n", 2)] {
            match parse_folded(text) {
                Err(InputError::FoldedLine { line_number, .. }) => {
                    assert_eq!(line_number, expected_line, "{text:?}")
                }
                other => panic!("{text:?} gave {other:?}"),
            }
        }
        assert!(matches!(folded_to_pprof("\n\n"), Err(InputError::Empty(_))));
        assert_eq!(
            parse_folded(" 5\n").unwrap(),
            vec![FoldedStack {
                frames: vec![],
                count: 5
            }]
        );
        let profile = folded_to_pprof("a;b 1\n 5\n").unwrap();
        assert!(profile.sample[1].location_id.is_empty());
        assert_eq!(pprof_to_folded_lines(&profile, 0).unwrap(), vec!["a;b 1", " 5"]);
    }

    #[test]
    fn pprof_has_one_function_per_frame_and_leaf_first_samples() {
        let profile = folded_to_pprof("main;work;leaf 3\nmain;work 2\n").unwrap();
        assert_eq!(profile.function.len(), 3);
        assert_eq!(profile.location.len(), 3);
        assert_eq!(profile.sample.len(), 2);
        let name_of_location = |location_id: u64| {
            let location = profile
                .location
                .iter()
                .find(|location| location.id == location_id)
                .unwrap();
            let function = profile
                .function
                .iter()
                .find(|f| f.id == location.line[0].function_id)
                .unwrap();
            profile.string_table[function.name as usize].clone()
        };
        let first: Vec<String> = profile.sample[0]
            .location_id
            .iter()
            .map(|&id| name_of_location(id))
            .collect();
        assert_eq!(first, vec!["leaf", "work", "main"]);
        assert_eq!(profile.sample[0].value, vec![3]);
        let sample_type = &profile.sample_type[0];
        assert_eq!(profile.string_table[sample_type.r#type as usize], "samples");
        assert_eq!(profile.string_table[sample_type.unit as usize], "count");
        let period_type = profile.period_type.as_ref().unwrap();
        assert_eq!(profile.string_table[period_type.r#type as usize], "cpu");
        assert_eq!(profile.string_table[period_type.unit as usize], "nanoseconds");
        assert_eq!(profile.string_table[0], "");
    }

    #[test]
    fn shared_testdata_round_trips_as_a_multiset_with_the_same_total() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/testdata/folded/python-pyspy.folded"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let profile = folded_to_pprof(&text).unwrap();

        let mut original: Vec<String> = text
            .lines()
            .map(str::trim_end)
            .filter(|line| !line.is_empty())
            .map(String::from)
            .collect();
        let mut refolded = pprof_to_folded_lines(&profile, 0).unwrap();
        original.sort();
        refolded.sort();
        assert_eq!(refolded, original);

        let total_of = |lines: &[String]| -> i64 {
            lines
                .iter()
                .map(|line| line.rsplit_once(' ').unwrap().1.parse::<i64>().unwrap())
                .sum()
        };
        assert_eq!(total_of(&refolded), 643);
        assert_eq!(
            profile.sample.iter().map(|sample| sample.value[0]).sum::<i64>(),
            643
        );
    }
}
