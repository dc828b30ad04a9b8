//! The server's `GET /metrics`, scraped and parsed, so that a test asks for
//! one sample by name and labels instead of searching the text itself.

use std::fmt;

/// One scrape of `/metrics`: every sample, and the text it came from (for
/// failure messages).
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

/// One line of the exposition: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// `GET {base_url}/metrics` (`base_url` as in `TestServer::base_url`), parsed;
/// panics unless the server answers 200.
pub async fn scrape_metrics(base_url: &str) -> Metrics {
    let response = crate::http::get(&format!("{base_url}/metrics")).await;
    assert_eq!(response.status, 200, "GET {base_url}/metrics: {}", response.text());
    Metrics::parse(&response.text())
}

impl Metrics {
    /// Parses the Prometheus/OpenMetrics text format (comments skipped).
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                parse_sample(line).unwrap_or_else(|| panic!("not a metrics sample: {line:?}"))
            })
            .collect();
        Metrics { samples, text: text.to_string() }
    }

    /// The value of the sample named `name` whose labels are exactly `labels`
    /// (in any order); `None` when there is none.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.label(k) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// The same, but 0 when the sample is not there (a labelled counter that
    /// has not been incremented yet is absent).
    pub fn value_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The same, but panicking with the whole scrape when it is not there.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{}", self.text))
    }
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    // A value, then an optional timestamp.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample { name, labels, value })
}

/// `a="x",b="y\"z"}` -> the labels and what follows the closing brace.
fn parse_labels(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches(',');
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_string(), value));
        text = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_labels_and_values() {
        let metrics = Metrics::parse(
            "# HELP x y\n\
             nextchat_connections{transport=\"WebSockets\",protocol=\"json\"} 1\n\
             nextchat_messages_delivered_total 42\n\
             odd{a=\"q\\\"u,o}te\",b=\"\"} 2.5\n\
             # EOF\n",
        );
        assert_eq!(metrics.samples.len(), 3);
        assert_eq!(
            metrics
                .get("nextchat_connections", &[("protocol", "json"), ("transport", "WebSockets")]),
            Some(1.0)
        );
        assert_eq!(metrics.get("nextchat_connections", &[("protocol", "json")]), None);
        assert_eq!(metrics.value("nextchat_messages_delivered_total", &[]), 42.0);
        assert_eq!(metrics.get("odd", &[("a", "q\"u,o}te"), ("b", "")]), Some(2.5));
        assert_eq!(metrics.value_or_zero("absent", &[]), 0.0);
    }
}
