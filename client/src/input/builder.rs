//! A small helper that builds a pprof [`Profile`] with interned strings and deduplicated functions and
//! locations, so converters only say what a stack is.

use std::collections::HashMap;

use kiln_proto::pprof::{Function, Line, Location, Profile, Sample, ValueType};

/// Builds a well-formed pprof: `string_table[0]` is `""`, ids start at 1, every id a sample or a line
/// refers to exists.
#[derive(Debug, Default)]
pub(crate) struct PprofBuilder {
    profile: Profile,
    string_ids: HashMap<String, i64>,
    function_ids: HashMap<(i64, i64), u64>,
    location_ids: HashMap<(u64, i64), u64>,
}

impl PprofBuilder {
    /// Starts a profile with the given sample types (`(type, unit)` pairs) and period type.
    pub(crate) fn new(sample_types: &[(&str, &str)], period_type: (&str, &str)) -> Self {
        let mut builder = PprofBuilder::default();
        builder.profile.string_table.push(String::new());
        builder.string_ids.insert(String::new(), 0);
        let sample_types: Vec<ValueType> = sample_types
            .iter()
            .map(|(kind, unit)| builder.value_type(kind, unit))
            .collect();
        builder.profile.sample_type = sample_types;
        builder.profile.period_type = Some(builder.value_type(period_type.0, period_type.1));
        builder
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> ValueType {
        ValueType {
            r#type: self.intern(kind),
            unit: self.intern(unit),
        }
    }

    /// The string table index of `text`, adding it when new.
    pub(crate) fn intern(&mut self, text: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(text) {
            return id;
        }
        let id = i64::try_from(self.profile.string_table.len()).unwrap_or(i64::MAX);
        self.profile.string_table.push(text.to_string());
        self.string_ids.insert(text.to_string(), id);
        id
    }

    /// The id of the function named `name` in source file `filename` (empty when unknown), adding it when new.
    pub(crate) fn function_id(&mut self, name: &str, filename: &str) -> u64 {
        let key = (self.intern(name), self.intern(filename));
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        self.profile.function.push(Function {
            id,
            name: key.0,
            system_name: key.0,
            filename: key.1,
            start_line: 0,
        });
        self.function_ids.insert(key, id);
        id
    }

    /// The id of the location that is `line` of function `function_id` (0 when the line is unknown), adding
    /// it when new.
    pub(crate) fn location_id(&mut self, function_id: u64, line: i64) -> u64 {
        let key = (function_id, line);
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id,
            mapping_id: 0,
            address: 0,
            line: vec![Line {
                function_id,
                line,
                column: 0,
            }],
            is_folded: false,
        });
        self.location_ids.insert(key, id);
        id
    }

    /// Adds a sample; `leaf_first_location_ids` is the stack with the leaf first, as pprof wants it, and
    /// `values` has one entry per sample type.
    pub(crate) fn add_sample(&mut self, leaf_first_location_ids: Vec<u64>, values: Vec<i64>) {
        self.profile.sample.push(Sample {
            location_id: leaf_first_location_ids,
            value: values,
            label: vec![],
        });
    }

    /// Sets the sample type go tool pprof and Kiln show by default, by its type name.
    pub(crate) fn set_default_sample_type(&mut self, kind: &str) {
        self.profile.default_sample_type = self.intern(kind);
    }

    /// Sets how long the profile covers.
    pub(crate) fn set_duration_nanos(&mut self, duration_nanos: i64) {
        self.profile.duration_nanos = duration_nanos;
    }

    /// The finished profile.
    pub(crate) fn finish(self) -> Profile {
        self.profile
    }
}
