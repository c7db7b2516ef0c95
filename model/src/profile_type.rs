//! Profile types: `name:sample_type:sample_unit:period_type:period_unit[:delta]`, as
//! Parca writes them. A pprof with several sample types is several profile types.

use std::fmt;

/// Why a profile type text was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileTypeError {
    /// Not five or six `:`-separated parts, or a part is empty, or the sixth is not `delta`.
    #[error(
        "invalid profile type {0:?}: expected name:sample_type:sample_unit:period_type:period_unit[:delta] \
         or an alias (cpu, samples, heap, inuse_objects, allocs, alloc_objects, goroutine, mutex, block)"
    )]
    Malformed(String),
}

/// One profile type. `delta` profiles (CPU) add up over time; the others are
/// snapshots of a state (in-use heap) or counters since process start, and a merge
/// over time takes each series' latest snapshot instead of adding them up.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ProfileType {
    /// First part, what was profiled: `process_cpu`, `memory`, `goroutine`, ...
    pub name: String,
    /// The sample value's type, e.g. `cpu`, `samples`, `inuse_space`.
    pub sample_type: String,
    /// The sample value's unit, e.g. `nanoseconds`, `count`, `bytes`.
    pub sample_unit: String,
    /// The pprof period type, e.g. `cpu`, `space`.
    pub period_type: String,
    /// The pprof period unit.
    pub period_unit: String,
    /// Values are deltas over the profile's duration and add up over time.
    pub delta: bool,
}

/// Short names accepted wherever a profile type is, and what they stand for.
pub const ALIASES: &[(&str, &str)] = &[
    ("cpu", "process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta"),
    ("samples", "process_cpu:samples:count:cpu:nanoseconds:delta"),
    ("heap", "memory:inuse_space:bytes:space:bytes"),
    ("inuse_space", "memory:inuse_space:bytes:space:bytes"),
    ("inuse_objects", "memory:inuse_objects:count:space:bytes"),
    ("allocs", "memory:alloc_space:bytes:space:bytes"),
    ("alloc_space", "memory:alloc_space:bytes:space:bytes"),
    ("alloc_objects", "memory:alloc_objects:count:space:bytes"),
    ("goroutine", "goroutine:goroutine:count:goroutine:count"),
    ("mutex", "mutex:delay:nanoseconds:contentions:count"),
    ("block", "block:delay:nanoseconds:contentions:count"),
];

impl ProfileType {
    /// Parses a canonical id or an alias from [`ALIASES`].
    pub fn parse(text: &str) -> Result<Self, ProfileTypeError> {
        let text = text.trim();
        let canonical = ALIASES
            .iter()
            .find(|(alias, _)| *alias == text)
            .map(|(_, canonical)| *canonical)
            .unwrap_or(text);
        let parts: Vec<&str> = canonical.split(':').collect();
        let malformed = || ProfileTypeError::Malformed(text.to_string());
        if !(parts.len() == 5 || parts.len() == 6) || parts[..5].iter().any(|part| part.is_empty()) {
            return Err(malformed());
        }
        let delta = match parts.get(5) {
            None => false,
            Some(&"delta") => true,
            Some(_) => return Err(malformed()),
        };
        Ok(ProfileType {
            name: parts[0].to_string(),
            sample_type: parts[1].to_string(),
            sample_unit: parts[2].to_string(),
            period_type: parts[3].to_string(),
            period_unit: parts[4].to_string(),
            delta,
        })
    }

    /// The canonical id, `name:sample_type:sample_unit:period_type:period_unit[:delta]`.
    pub fn id(&self) -> String {
        let mut id = format!(
            "{}:{}:{}:{}:{}",
            self.name, self.sample_type, self.sample_unit, self.period_type, self.period_unit
        );
        if self.delta {
            id.push_str(":delta");
        }
        id
    }
}

impl fmt::Display for ProfileType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_canonical_ids() {
        for id in [
            "process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta",
            "memory:inuse_space:bytes:space:bytes",
        ] {
            assert_eq!(ProfileType::parse(id).unwrap().id(), id);
        }
    }

    #[test]
    fn aliases_resolve() {
        assert_eq!(
            ProfileType::parse("cpu").unwrap().id(),
            "process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta"
        );
        assert!(ProfileType::parse("heap").is_ok_and(|profile_type| !profile_type.delta));
    }

    #[test]
    fn malformed_is_rejected() {
        for bad in ["", "cpu:x", "a:b:c:d:e:f", "a::c:d:e", "nope"] {
            assert!(ProfileType::parse(bad).is_err(), "{bad}");
        }
    }
}
