//! [`Metrics`]: what `GET /metrics` says, as samples that a test can look up by name and labels.
//!
//! ```no_run
//! # let mediary = mediary_e2e::Mediary::with_config("").start();
//! let metrics = mediary.api().metrics();
//! let ok = metrics.value("mediary_channel_responses_total", &[("channel", "echo"), ("class", "2xx")]);
//! ```

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one Prometheus text exposition (comments left out).
#[derive(Clone, Debug)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    /// The text as served, for failure messages.
    pub text: String,
}

impl Metrics {
    /// Parses the text exposition format (the subset Mediary writes: no timestamps, label values
    /// with `\"`, `\\` and `\n` escapes). Panics on a line it cannot read.
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| parse_sample(line).unwrap_or_else(|| panic!("not a sample: {line:?}")))
            .collect();
        Metrics {
            samples,
            text: text.to_owned(),
        }
    }

    /// The samples named `name` that carry every label of `labels` (and maybe others).
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(k, v)| sample.labels.get(*k).is_some_and(|have| have == v))
        })
    }

    /// The value of the one sample named `name` with `labels`; panics (showing every sample) if
    /// there is none or more than one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert_eq!(
            found.len(),
            1,
            "expected one sample {name} with {labels:?}, found {found:?}; the metrics:\n{}",
            self.text
        );
        found[0].value
    }

    /// The sum of every sample named `name` with `labels` (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    let (name, labels) = match head.split_once('{') {
        None => (head, BTreeMap::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `a="1",b="x\"y"` into a map.
fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut name = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            name.push(c);
        }
        if name.is_empty() {
            return Some(labels);
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        }
        labels.insert(name.trim().to_owned(), value);
        match chars.next() {
            None => return Some(labels),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn reads_samples_and_labels() {
        let metrics = Metrics::parse(
            "# HELP x y\n# TYPE x counter\nx{channel=\"a \\\"b\\\"\",class=\"2xx\"} 3\n\
             h_bucket{le=\"+Inf\"} 4\ntotal 7\n",
        );
        assert_eq!(metrics.value("x", &[("channel", "a \"b\"")]), 3.0);
        assert_eq!(metrics.value("h_bucket", &[("le", "+Inf")]), 4.0);
        assert_eq!(metrics.value("total", &[]), 7.0);
        assert_eq!(metrics.sum("x", &[("class", "5xx")]), 0.0);
    }
}
