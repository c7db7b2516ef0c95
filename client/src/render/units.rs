//! Value scaling and percentages exactly as `go tool pprof` prints them (the `measurement` package of
//! github.com/google/pprof, as vendored in Go 1.19), so that Kiln's text output and go tool pprof's can
//! be read by the same parser and compared number for number.
//!
//! - time units (`nanoseconds`, `microseconds`, `milliseconds`, `seconds`, `hours`) scale to
//!   `ns`, `us`, `ms`, `s`, `hrs`; bytes to `B`, `kB`, `MB`, `GB`, `TB`, `PB` (powers of 1024);
//!   counts and unknown units print as plain numbers;
//! - a value prints with two decimals, `.00` dropped: `1.02s`, `0.64s`, `10ms`, `512.17kB`, `4098kB`, `9`;
//!   zero prints as `0`;
//! - percentages print as `%5.2f%%` (`29.65%`), `  100%` between 99.95 and 100.05, and Go's `%5.2g%%`
//!   below 1 (`0.87%`, `    0%`, `0.058%`, `1.2e-05%`).

/// One unit of a [`UnitFamily`].
struct Unit {
    canonical_name: &'static str,
    aliases: &'static [&'static str],
    factor: f64,
}

/// A family of convertible units (memory, time, GCU), with the unit used when nothing better fits.
struct UnitFamily {
    units: &'static [Unit],
    default_unit: Unit,
}

const UNIT_FAMILIES: &[UnitFamily] = &[
    UnitFamily {
        units: &[
            Unit {
                canonical_name: "B",
                aliases: &["b", "byte"],
                factor: 1.0,
            },
            Unit {
                canonical_name: "kB",
                aliases: &["kb", "kbyte", "kilobyte"],
                factor: 1024.0,
            },
            Unit {
                canonical_name: "MB",
                aliases: &["mb", "mbyte", "megabyte"],
                factor: 1048576.0,
            },
            Unit {
                canonical_name: "GB",
                aliases: &["gb", "gbyte", "gigabyte"],
                factor: 1073741824.0,
            },
            Unit {
                canonical_name: "TB",
                aliases: &["tb", "tbyte", "terabyte"],
                factor: 1099511627776.0,
            },
            Unit {
                canonical_name: "PB",
                aliases: &["pb", "pbyte", "petabyte"],
                factor: 1125899906842624.0,
            },
        ],
        default_unit: Unit {
            canonical_name: "B",
            aliases: &["b", "byte"],
            factor: 1.0,
        },
    },
    UnitFamily {
        units: &[
            Unit {
                canonical_name: "ns",
                aliases: &["ns", "nanosecond"],
                factor: 1.0,
            },
            Unit {
                canonical_name: "us",
                aliases: &["μs", "us", "microsecond"],
                factor: 1e3,
            },
            Unit {
                canonical_name: "ms",
                aliases: &["ms", "millisecond"],
                factor: 1e6,
            },
            Unit {
                canonical_name: "s",
                aliases: &["s", "sec", "second"],
                factor: 1e9,
            },
            Unit {
                canonical_name: "hrs",
                aliases: &["hour", "hr"],
                factor: 3600e9,
            },
        ],
        default_unit: Unit {
            canonical_name: "s",
            aliases: &[],
            factor: 1e9,
        },
    },
    UnitFamily {
        units: &[
            Unit {
                canonical_name: "n*GCU",
                aliases: &["nanogcu"],
                factor: 1e-9,
            },
            Unit {
                canonical_name: "u*GCU",
                aliases: &["microgcu"],
                factor: 1e-6,
            },
            Unit {
                canonical_name: "m*GCU",
                aliases: &["milligcu"],
                factor: 1e-3,
            },
            Unit {
                canonical_name: "GCU",
                aliases: &["gcu"],
                factor: 1.0,
            },
            Unit {
                canonical_name: "k*GCU",
                aliases: &["kilogcu"],
                factor: 1e3,
            },
            Unit {
                canonical_name: "M*GCU",
                aliases: &["megagcu"],
                factor: 1e6,
            },
            Unit {
                canonical_name: "G*GCU",
                aliases: &["gigagcu"],
                factor: 1e9,
            },
            Unit {
                canonical_name: "T*GCU",
                aliases: &["teragcu"],
                factor: 1e12,
            },
            Unit {
                canonical_name: "P*GCU",
                aliases: &["petagcu"],
                factor: 1e15,
            },
        ],
        default_unit: Unit {
            canonical_name: "GCU",
            aliases: &[],
            factor: 1.0,
        },
    },
];

impl UnitFamily {
    /// Finds a unit by name the way pprof does: lowercased, one trailing `s` dropped from names longer
    /// than two bytes (`nanoseconds` -> `nanosecond`, `bytes` -> `byte`).
    fn sniff_unit(&self, unit_name: &str) -> Option<&Unit> {
        let lowered = unit_name.to_lowercase();
        let simplified = if lowered.len() > 2 {
            lowered.strip_suffix('s').unwrap_or(&lowered)
        } else {
            &lowered
        };
        self.units.iter().find(|unit| unit.aliases.contains(&simplified))
    }

    fn auto_scale(&self, value_in_base: f64) -> Option<(f64, &'static str)> {
        let mut chosen: Option<(f64, &'static str)> = None;
        for unit in self.units {
            let best_factor = chosen.map_or(0.0, |(factor, _)| factor);
            if unit.factor >= best_factor && value_in_base / unit.factor >= 1.0 {
                chosen = Some((unit.factor, unit.canonical_name));
            }
        }
        chosen.map(|(factor, name)| (value_in_base / factor, name))
    }

    fn convert(&self, value: i64, from_unit: &str, to_unit: &str) -> Option<(f64, String)> {
        let from = self.sniff_unit(from_unit)?;
        let value_in_base = value as f64 * from.factor;
        if to_unit == "minimum" || to_unit == "auto" {
            if let Some((scaled, name)) = self.auto_scale(value_in_base) {
                return Some((scaled, name.to_string()));
            }
            return Some((
                value_in_base / self.default_unit.factor,
                self.default_unit.canonical_name.to_string(),
            ));
        }
        match self.sniff_unit(to_unit) {
            Some(to) => Some((value_in_base / to.factor, to.canonical_name.to_string())),
            None => Some((
                value_in_base / self.default_unit.factor,
                self.default_unit.canonical_name.to_string(),
            )),
        }
    }
}

/// Scales `value`, measured in `from_unit`, to `to_unit` (`"minimum"`/`"auto"` pick the largest unit in
/// which the value is at least 1). Returns the scaled value and the unit's short name, which is empty
/// for counts and other units that are not worth printing. Same results as pprof's `measurement.Scale`.
pub fn scale(value: i64, from_unit: &str, to_unit: &str) -> (f64, String) {
    if value < 0 {
        if let Some(positive) = value.checked_neg() {
            let (scaled, unit) = scale(positive, from_unit, to_unit);
            return (-scaled, unit);
        }
    }
    for family in UNIT_FAMILIES {
        if let Some(converted) = family.convert(value, from_unit, to_unit) {
            return converted;
        }
    }
    match to_unit {
        "count" | "sample" | "unit" | "minimum" | "auto" => (value as f64, String::new()),
        _ => (value as f64, to_unit.to_string()),
    }
}

/// `value` in `from_unit` as text in `to_unit`: two decimals with `.00` dropped, then the unit (`1.02s`,
/// `4098kB`, `9`); zero is `0`. Same as pprof's `measurement.ScaledLabel`.
pub fn scaled_label(value: i64, from_unit: &str, to_unit: &str) -> String {
    let (scaled, unit) = scale(value, from_unit, to_unit);
    let number = format!("{scaled:.2}");
    let number = number.strip_suffix(".00").unwrap_or(&number);
    if number == "0" || number == "-0" {
        return "0".to_string();
    }
    format!("{number}{unit}")
}

/// `value` as a percentage of `total`, formatted as pprof's `measurement.Percentage` does: always at
/// least 6 characters wide (`29.65%`, ` 0.87%`, `  100%`, `    0%`). A zero total gives `    0%`.
pub fn percentage(value: i64, total: i64) -> String {
    let ratio = if total != 0 {
        (value as f64 / total as f64).abs() * 100.0
    } else {
        0.0
    };
    if (99.95..=100.05).contains(&ratio) {
        return "  100%".to_string();
    }
    if ratio >= 1.0 {
        return format!("{ratio:5.2}%");
    }
    format!("{:>5}%", format_go_g(ratio, 2))
}

/// Go's `%.{precision}g` for a finite non-negative number: `precision` significant digits, trailing zeros
/// dropped, exponent form (`1.2e-05`) when the exponent is below -4 or at least the precision.
fn format_go_g(value: f64, precision: usize) -> String {
    if value == 0.0 || !value.is_finite() {
        return if value.is_finite() {
            "0".to_string()
        } else {
            value.to_string()
        };
    }
    let precision = precision.max(1);
    // Rust rounds to `precision` significant digits exactly like Go's strconv does.
    let scientific = format!("{:.*e}", precision - 1, value.abs());
    let Some((mantissa, exponent_text)) = scientific.split_once('e') else {
        return scientific;
    };
    let Ok(exponent) = exponent_text.parse::<i32>() else {
        return scientific;
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let digit_count = digits.len() as i32;
    let decimal_point = exponent + 1; // value = 0.DIGITS * 10^decimal_point
    let mut exponent_precision = precision as i32;
    if exponent_precision > digit_count && digit_count >= decimal_point {
        exponent_precision = digit_count;
    }
    let sign = if value < 0.0 { "-" } else { "" };
    if exponent < -4 || exponent >= exponent_precision {
        let shown_digits = (precision as i32).min(digit_count) as usize;
        let mut text = format!("{sign}{}", &digits[..1]);
        if shown_digits > 1 {
            text.push('.');
            text.push_str(&digits[1..shown_digits]);
        }
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        text.push_str(&format!("e{exponent_sign}{:02}", exponent.abs()));
        return text;
    }
    let shown_precision = if precision as i32 > decimal_point {
        digit_count
    } else {
        precision as i32
    };
    let decimals = (shown_precision - decimal_point).max(0);
    let digit_at = |index: i32| -> char {
        usize::try_from(index)
            .ok()
            .and_then(|index| digits.as_bytes().get(index))
            .map_or('0', |&b| char::from(b))
    };
    let mut text = sign.to_string();
    if decimal_point <= 0 {
        text.push('0');
    } else {
        for index in 0..decimal_point {
            text.push(digit_at(index));
        }
    }
    if decimals > 0 {
        text.push('.');
        for index in 0..decimals {
            text.push(digit_at(decimal_point + index));
        }
    }
    text
}

/// The output unit of a report, chosen as pprof's `selectOutputUnit` does, and the formatting of values
/// in it. One formatter serves a whole report, so every number in it uses the same unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueFormatter {
    sample_unit: String,
    output_unit: String,
}

impl ValueFormatter {
    /// Picks the output unit for a report whose rows have these `(flat, cum)` values and whose total is
    /// `total`, all in `sample_unit`: the unit of the smallest non-zero row value (a row's flat, or its cum
    /// when flat is zero); when that unit differs from the total's and the smallest value is below 1% of
    /// the total, the unit of 100 times the smallest value, so small values print as `0.01s` rather than
    /// big ones as `3440ms`.
    pub fn for_rows(sample_unit: &str, total: i64, rows: impl IntoIterator<Item = (i64, i64)>) -> Self {
        let mut minimum: i64 = 0;
        for (flat, cum) in rows {
            let mut row_minimum = flat.unsigned_abs();
            if row_minimum == 0 {
                row_minimum = cum.unsigned_abs();
            }
            let row_minimum = i64::try_from(row_minimum).unwrap_or(i64::MAX);
            if row_minimum > 0 && (minimum == 0 || row_minimum < minimum) {
                minimum = row_minimum;
            }
        }
        Self::for_range(sample_unit, minimum, total)
    }

    /// Picks the output unit for values between `minimum` (the smallest non-zero magnitude, 0 if none) and
    /// `maximum`, with the rule of [`ValueFormatter::for_rows`].
    pub fn for_range(sample_unit: &str, minimum: i64, maximum: i64) -> Self {
        let maximum = maximum.checked_abs().unwrap_or(i64::MAX);
        let minimum = if minimum == 0 {
            maximum
        } else {
            minimum.checked_abs().unwrap_or(i64::MAX)
        };
        let (_, minimum_unit) = scale(minimum, sample_unit, "minimum");
        let (_, maximum_unit) = scale(maximum, sample_unit, "minimum");
        let mut unit = minimum_unit.clone();
        if minimum_unit != maximum_unit && minimum.saturating_mul(100) < maximum {
            unit = scale(minimum.saturating_mul(100), sample_unit, "minimum").1;
        }
        let output_unit = if unit.is_empty() {
            sample_unit.to_string()
        } else {
            unit
        };
        ValueFormatter {
            sample_unit: sample_unit.to_string(),
            output_unit,
        }
    }

    /// Picks the output unit for a set of values (their smallest non-zero and largest magnitude).
    pub fn for_values(sample_unit: &str, values: impl IntoIterator<Item = i64>) -> Self {
        let mut minimum: i64 = 0;
        let mut maximum: i64 = 0;
        for value in values {
            let magnitude = value.checked_abs().unwrap_or(i64::MAX);
            maximum = maximum.max(magnitude);
            if magnitude > 0 && (minimum == 0 || magnitude < minimum) {
                minimum = magnitude;
            }
        }
        Self::for_range(sample_unit, minimum, maximum)
    }

    /// The chosen output unit (e.g. `s`, `kB`; the sample unit itself, e.g. `count`, when it does not scale).
    pub fn output_unit(&self) -> &str {
        &self.output_unit
    }

    /// Formats one value in the output unit, like pprof's report `formatValue`.
    pub fn format(&self, value: i64) -> String {
        scaled_label(value, &self.sample_unit, &self.output_unit)
    }

    /// Formats a change with an explicit sign: `+1.02s`, `-10ms`, `0`.
    pub fn format_signed(&self, value: i64) -> String {
        let text = self.format(value);
        if value > 0 {
            return format!("+{text}");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_values_scale_like_go_tool_pprof() {
        let report = ValueFormatter::for_rows("nanoseconds", 3_440_000_000, [(10_000_000, 10_000_000)]);
        assert_eq!(report.output_unit(), "s");
        assert_eq!(report.format(1_020_000_000), "1.02s");
        assert_eq!(report.format(640_000_000), "0.64s");
        assert_eq!(report.format(10_000_000), "0.01s");
        assert_eq!(report.format(0), "0");
        assert_eq!(report.format(3_440_000_000), "3.44s");

        let delay = ValueFormatter::for_rows("nanoseconds", 568_150_000, [(9_340_000, 9_340_000)]);
        assert_eq!(delay.output_unit(), "ms");
        assert_eq!(delay.format(558_810_000), "558.81ms");
        assert_eq!(delay.format(10_000_000), "10ms");

        assert_eq!(scaled_label(1_500, "nanoseconds", "auto"), "1.50us");
        assert_eq!(scaled_label(7_200_000_000_000, "nanoseconds", "auto"), "2hrs");
        assert_eq!(scaled_label(90_000_000_000, "nanoseconds", "auto"), "90s");
        assert_eq!(scaled_label(2, "seconds", "auto"), "2s");
        assert_eq!(scaled_label(-10_000_000, "nanoseconds", "ms"), "-10ms");
    }

    #[test]
    fn byte_values_scale_like_go_tool_pprof() {
        let heap = ValueFormatter::for_rows("bytes", 6_297_856, [(524_493, 524_493), (4_196_352, 4_196_352)]);
        assert_eq!(heap.output_unit(), "kB");
        assert_eq!(heap.format(4_196_352), "4098kB");
        assert_eq!(heap.format(524_493), "512.20kB");
        assert_eq!(heap.format(6_297_856), "6150.25kB");

        let allocs = ValueFormatter::for_rows("bytes", 468_180_000, [(60_000_000, 60_000_000)]);
        assert_eq!(allocs.output_unit(), "MB");
        assert_eq!(allocs.format(1_572_864), "1.50MB");
        assert_eq!(scaled_label(524_462, "bytes", "auto"), "512.17kB");
        assert_eq!(scaled_label(512, "bytes", "auto"), "512B");
    }

    #[test]
    fn counts_print_as_integers() {
        let goroutines = ValueFormatter::for_rows("count", 9, [(6, 6), (1, 1), (0, 2)]);
        assert_eq!(goroutines.output_unit(), "count");
        assert_eq!(goroutines.format(6), "6");
        assert_eq!(goroutines.format(0), "0");
        assert_eq!(goroutines.format(123_456_789), "123456789");
        assert_eq!(scaled_label(5, "objects", "objects"), "5objects");
    }

    #[test]
    fn percentages_match_go_formatting() {
        assert_eq!(percentage(1_020, 3_440), "29.65%");
        assert_eq!(percentage(3_440, 3_440), "  100%");
        assert_eq!(percentage(30, 3_440), " 0.87%");
        assert_eq!(percentage(0, 3_440), "    0%");
        assert_eq!(percentage(0, 0), "    0%");
        assert_eq!(percentage(1, 9), "11.11%");
        assert_eq!(percentage(8, 9), "88.89%");
        assert_eq!(percentage(5, 1_000), "  0.5%");
        assert_eq!(percentage(58, 100_000), "0.058%");
        assert_eq!(percentage(996, 100_000), "    1%");
        assert_eq!(percentage(1, 10_000_000), "1e-05%");
        assert_eq!(percentage(12, 100_000_000), "1.2e-05%");
        assert_eq!(percentage(-1_020, 3_440), "29.65%");
    }

    #[test]
    fn signed_values() {
        let report = ValueFormatter::for_values("nanoseconds", [10_000_000, -300_000_000, 3_000_000_000]);
        assert_eq!(report.output_unit(), "s");
        assert_eq!(report.format_signed(10_000_000), "+0.01s");
        assert_eq!(report.format_signed(-300_000_000), "-0.30s");
        assert_eq!(report.format_signed(0), "0");
    }
}
