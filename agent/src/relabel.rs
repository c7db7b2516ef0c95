//! Prometheus-style relabeling: `keep`, `drop`, `replace`, `labeldrop`, `labelkeep`, with Prometheus'
//! defaults (separator `;`, regex `(.*)`, replacement `$1`, action `replace`) and fully anchored regexes.

use std::collections::BTreeMap;

use regex::Regex;
use serde::Deserialize;

/// A label set being relabelled: name → value, sorted.
pub type Labels = BTreeMap<String, String>;

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Set `target_label` to the expanded `replacement` when `regex` matches (remove it when that is empty).
    #[default]
    Replace,
    /// Drop the series unless `regex` matches the joined source values.
    Keep,
    /// Drop the series when `regex` matches the joined source values.
    Drop,
    /// Remove every label whose name matches `regex`.
    Labeldrop,
    /// Remove every label whose name does not match `regex`.
    Labelkeep,
}

fn default_separator() -> String {
    ";".to_string()
}
fn default_regex() -> String {
    "(.*)".to_string()
}
fn default_replacement() -> String {
    "$1".to_string()
}

/// One rule as written in the config file (`[[relabel_configs]]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Labels whose values are joined with `separator` and matched against `regex`.
    #[serde(default)]
    pub source_labels: Vec<String>,
    /// Joins the source values.
    #[serde(default = "default_separator")]
    pub separator: String,
    /// Anchored at both ends.
    #[serde(default = "default_regex")]
    pub regex: String,
    /// The label `replace` writes.
    #[serde(default)]
    pub target_label: Option<String>,
    /// `$1`, `${name}` refer to the regex's groups.
    #[serde(default = "default_replacement")]
    pub replacement: String,
    /// What to do.
    #[serde(default)]
    pub action: Action,
}

/// A rule that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RelabelError {
    /// The regex does not compile.
    #[error("relabel rule {index}: invalid regex {regex:?}: {source}")]
    Regex {
        /// Position of the rule (0-based).
        index: usize,
        /// The regex as written.
        regex: String,
        /// Why it does not compile.
        source: regex::Error,
    },
    /// `replace` without `target_label`.
    #[error("relabel rule {index}: action replace needs target_label")]
    MissingTarget {
        /// Position of the rule (0-based).
        index: usize,
    },
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    config: RuleConfig,
    regex: Regex,
}

/// Compiles rules, checking every regex and required field up front.
pub fn compile(rules: &[RuleConfig]) -> Result<Vec<Rule>, RelabelError> {
    rules
        .iter()
        .enumerate()
        .map(|(index, config)| {
            let regex =
                Regex::new(&format!("^(?:{})$", config.regex)).map_err(|source| RelabelError::Regex {
                    index,
                    regex: config.regex.clone(),
                    source,
                })?;
            if config.action == Action::Replace && config.target_label.is_none() {
                return Err(RelabelError::MissingTarget { index });
            }
            Ok(Rule {
                config: config.clone(),
                regex,
            })
        })
        .collect()
}

/// Applies `rules` in order. Returns `None` when a `keep` or `drop` rule drops the series. A missing label
/// reads as the empty string, as in Prometheus.
pub fn apply(rules: &[Rule], mut labels: Labels) -> Option<Labels> {
    for rule in rules {
        let config = &rule.config;
        let joined = || {
            config
                .source_labels
                .iter()
                .map(|name| labels.get(name).map(String::as_str).unwrap_or(""))
                .collect::<Vec<_>>()
                .join(&config.separator)
        };
        match config.action {
            Action::Keep => {
                if !rule.regex.is_match(&joined()) {
                    return None;
                }
            }
            Action::Drop => {
                if rule.regex.is_match(&joined()) {
                    return None;
                }
            }
            Action::Replace => {
                let value = joined();
                let Some(captures) = rule.regex.captures(&value) else {
                    continue;
                };
                let Some(target_template) = &config.target_label else {
                    continue;
                };
                let mut target = String::new();
                captures.expand(target_template, &mut target);
                let mut replaced = String::new();
                captures.expand(&config.replacement, &mut replaced);
                if target.is_empty() {
                    continue;
                }
                if replaced.is_empty() {
                    labels.remove(&target);
                } else {
                    labels.insert(target, replaced);
                }
            }
            Action::Labeldrop => labels.retain(|name, _| !rule.regex.is_match(name)),
            Action::Labelkeep => labels.retain(|name, _| rule.regex.is_match(name)),
        }
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str) -> Vec<Rule> {
        #[derive(Deserialize)]
        struct File {
            relabel_configs: Vec<RuleConfig>,
        }
        let file: File = toml::from_str(toml_text).expect("toml");
        compile(&file.relabel_configs).expect("compile")
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keep_and_drop() {
        let keep = rules("[[relabel_configs]]\naction='keep'\nsource_labels=['comm']\nregex='burn.*'\n");
        assert!(apply(&keep, labels(&[("comm", "burner")])).is_some());
        assert!(
            apply(&keep, labels(&[("comm", "xburner")])).is_none(),
            "regex is anchored"
        );
        assert!(apply(&keep, labels(&[])).is_none());
        let drop = rules("[[relabel_configs]]\naction='drop'\nsource_labels=['comm']\nregex='kworker.*'\n");
        assert!(apply(&drop, labels(&[("comm", "kworker/0:1")])).is_none());
        assert!(apply(&drop, labels(&[("comm", "bash")])).is_some());
    }

    #[test]
    fn replace_with_groups_and_defaults() {
        let rules = rules(
            "[[relabel_configs]]\nsource_labels=['executable','comm']\nregex='(.*)/([^/]*);(.*)'\ntarget_label='app'\nreplacement='${2}-$3'\n\
             [[relabel_configs]]\nsource_labels=['comm']\ntarget_label='copy'\n",
        );
        let out = apply(&rules, labels(&[("executable", "/usr/bin/app"), ("comm", "w")])).expect("kept");
        assert_eq!(out.get("app").map(String::as_str), Some("app-w"));
        assert_eq!(out.get("copy").map(String::as_str), Some("w"));
    }

    #[test]
    fn replace_to_empty_removes_label() {
        let rules = rules(
            "[[relabel_configs]]\nsource_labels=['x']\nregex='.*'\ntarget_label='cgroup'\nreplacement=''\n",
        );
        let out = apply(&rules, labels(&[("cgroup", "/a")])).expect("kept");
        assert!(!out.contains_key("cgroup"));
    }

    #[test]
    fn labeldrop_and_labelkeep() {
        let drop = rules("[[relabel_configs]]\naction='labeldrop'\nregex='container_.*|cgroup'\n");
        let out = apply(
            &drop,
            labels(&[("cgroup", "/a"), ("container_id", "x"), ("comm", "c")]),
        )
        .expect("kept");
        assert_eq!(out.keys().collect::<Vec<_>>(), vec!["comm"]);
        let keep = rules("[[relabel_configs]]\naction='labelkeep'\nregex='comm|node'\n");
        let out = apply(&keep, labels(&[("cgroup", "/a"), ("node", "n"), ("comm", "c")])).expect("kept");
        assert_eq!(out.keys().collect::<Vec<_>>(), vec!["comm", "node"]);
    }

    #[test]
    fn bad_rules_are_refused() {
        let bad_regex = RuleConfig {
            source_labels: vec![],
            separator: ";".into(),
            regex: "(".into(),
            target_label: Some("a".into()),
            replacement: "$1".into(),
            action: Action::Replace,
        };
        assert!(matches!(
            compile(&[bad_regex]),
            Err(RelabelError::Regex { index: 0, .. })
        ));
        let no_target = RuleConfig {
            regex: ".*".into(),
            target_label: None,
            ..RuleConfig {
                source_labels: vec![],
                separator: ";".into(),
                regex: String::new(),
                target_label: None,
                replacement: "$1".into(),
                action: Action::Replace,
            }
        };
        assert!(matches!(
            compile(&[no_target]),
            Err(RelabelError::MissingTarget { index: 0 })
        ));
    }
}
