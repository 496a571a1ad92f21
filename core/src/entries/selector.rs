//! Kubernetes label selectors (`metav1.LabelSelector`): validation as `LabelSelectorAsSelector`
//! does it, and matching exactly as the API server and client-go match.

use std::collections::BTreeMap;

use super::EntryError;

/// `matchLabels` plus `matchExpressions`; all of them must hold (an empty selector matches all).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: LabelSelectorOperator,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelSelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelectorOperator {
    /// Parses the operator as written in YAML; the names are case-sensitive, as in Kubernetes.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "In" => Some(Self::In),
            "NotIn" => Some(Self::NotIn),
            "Exists" => Some(Self::Exists),
            "DoesNotExist" => Some(Self::DoesNotExist),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "In",
            Self::NotIn => "NotIn",
            Self::Exists => "Exists",
            Self::DoesNotExist => "DoesNotExist",
        }
    }
}

impl LabelSelector {
    /// True when `labels` satisfy every `matchLabels` pair and every expression.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
            && self
                .match_expressions
                .iter()
                .all(|requirement| requirement.matches(labels))
    }

    /// The checks `LabelSelectorAsSelector` makes: label key and value syntax, values present
    /// for `In`/`NotIn` and absent for `Exists`/`DoesNotExist`. `field` names the selector in the
    /// error (e.g. `podSelector`).
    pub fn validate(&self, field: &str) -> Result<(), EntryError> {
        let invalid = |reason: String| EntryError::InvalidLabelSelector {
            field: field.to_owned(),
            reason,
        };
        for (key, value) in &self.match_labels {
            check_label_key(key).map_err(|r| invalid(format!("key {key:?}: {r}")))?;
            check_label_value(value)
                .map_err(|r| invalid(format!("value {value:?} of {key:?}: {r}")))?;
        }
        for requirement in &self.match_expressions {
            let key = &requirement.key;
            check_label_key(key).map_err(|r| invalid(format!("key {key:?}: {r}")))?;
            match requirement.operator {
                LabelSelectorOperator::In | LabelSelectorOperator::NotIn => {
                    if requirement.values.is_empty() {
                        return Err(invalid(format!(
                            "{key:?}: for 'in', 'notin' operators, values set can't be empty"
                        )));
                    }
                }
                LabelSelectorOperator::Exists | LabelSelectorOperator::DoesNotExist => {
                    if !requirement.values.is_empty() {
                        return Err(invalid(format!(
                            "{key:?}: values set must be empty for exists and does not exist"
                        )));
                    }
                }
            }
            for value in &requirement.values {
                check_label_value(value)
                    .map_err(|r| invalid(format!("value {value:?} of {key:?}: {r}")))?;
            }
        }
        Ok(())
    }
}

impl LabelSelectorRequirement {
    pub fn new(key: &str, operator: LabelSelectorOperator, values: &[&str]) -> Self {
        Self {
            key: key.to_owned(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    /// `NotIn` matches when the label is absent, as in Kubernetes.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            LabelSelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            LabelSelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            LabelSelectorOperator::Exists => value.is_some(),
            LabelSelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

/// A qualified name with an optional DNS-subdomain prefix: `[prefix/]name`.
fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err("prefix part must be non-empty".to_owned());
        }
        check_dns_subdomain(prefix).map_err(|r| format!("prefix part {r}"))?;
    }
    if name.is_empty() {
        return Err("name part must be non-empty".to_owned());
    }
    if name.len() > 63 {
        return Err("name part must be no more than 63 characters".to_owned());
    }
    check_name_chars(name).map_err(|r| format!("name part {r}"))
}

/// Empty, or at most 63 characters of the qualified-name alphabet.
fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 63 {
        return Err("must be no more than 63 characters".to_owned());
    }
    check_name_chars(value)
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn check_name_chars(s: &str) -> Result<(), String> {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let ok = s.chars().next().is_some_and(alnum)
        && s.chars().last().is_some_and(alnum)
        && s.chars()
            .all(|c| alnum(c) || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".to_owned())
    }
}

/// RFC 1123 subdomain: lowercase labels of `[a-z0-9-]` joined by dots, at most 253 characters.
fn check_dns_subdomain(s: &str) -> Result<(), String> {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if s.len() > 253 || !s.split('.').all(label_ok) {
        return Err("must be a lowercase RFC 1123 subdomain".to_owned());
    }
    Ok(())
}
