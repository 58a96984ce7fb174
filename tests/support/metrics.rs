//! One reader of the Prometheus exposition: parse it, find the value of a
//! series by its labels.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text exposition (enough of it for our output).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value.parse().expect("sample value");
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                let mut s = rest;
                while !s.is_empty() {
                    let (k, v) = s.split_once("=\"").expect("label");
                    let end = v.find('"').expect("label end");
                    labels.insert(k.trim_start_matches(',').to_owned(), v[..end].to_owned());
                    s = v[end + 1..].trim_start_matches(',');
                }
                (name.to_owned(), labels)
            }
        };
        out.push(Sample { name, labels, value });
    }
    out
}

/// The value of `name{labels}` (labels exactly), if present.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    samples.iter().find(|s| s.name == name && s.labels == want).map(|s| s.value)
}

/// The value of one sample line of `text` (`name{labels}` exactly as rendered).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The Prometheus text of an admin listener.
pub async fn metrics_text(admin: SocketAddr) -> String {
    let got = super::admin_get(admin, "/metrics").await;
    assert_eq!(got.status, 200, "GET /metrics");
    String::from_utf8_lossy(&got.body).into_owned()
}

/// The parsed samples of an admin listener.
pub async fn scrape(admin: SocketAddr) -> Vec<Sample> {
    parse_metrics(&metrics_text(admin).await)
}

/// `name{labels}` on an admin listener, 0 when the series does not exist yet
/// (a counter is born at its first increment).
pub async fn counter(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(&scrape(admin).await, name, labels).unwrap_or(0.0)
}

/// Runs `promtool check metrics` (Prometheus's own parser and linter) on
/// `text`; `None` when promtool is not installed (the test then returns),
/// unless `DESKGATE_REQUIRE_REDIS=1` (CI), which requires every real part.
pub fn promtool_check(text: &str) -> Option<(bool, String)> {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(_) if std::env::var("DESKGATE_REQUIRE_REDIS").is_ok_and(|v| v == "1") => {
            panic!("promtool is not on PATH (Debian package `prometheus`) and DESKGATE_REQUIRE_REDIS=1")
        }
        Err(_) => return None,
    };
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some((out.status.success(), said))
}
