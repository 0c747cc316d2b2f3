//! The shipped dashboard and alerting rules: valid for promtool, their unit tests pass, and
//! every metric they use is exported by a running edge (a renamed metric fails here, not on
//! an operator's dashboard).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const DASHBOARD: &str = "deploy/grafana/epochgate.json";
const ALERTS: &str = "deploy/prometheus/alerts.yaml";
const ALERT_TESTS: &str = "deploy/prometheus/alerts_test.yaml";

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect(
            "promtool is needed for this test: apt-get install -y prometheus (./dev.sh test installs it)",
        );
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every identifier in `text` that starts with `epochgate_`: the metric names of the PromQL
/// expressions in it (label names and values never start so).
fn metric_names(text: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("epochgate_") {
        let preceded_by_ident = rest[..at].chars().next_back().is_some_and(is_ident);
        let tail = &rest[at..];
        let end = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        if !preceded_by_ident {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Sample names in a Prometheus text exposition (histograms as `_bucket`, `_sum`, `_count`).
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn alerting_rules_pass_promtool_check() {
    let (ok, out) = promtool(&["check", "rules", ALERTS]);
    assert!(ok, "promtool check rules:\n{out}");
}

#[test]
fn alerting_rules_pass_their_unit_tests() {
    let (ok, out) = promtool(&["test", "rules", ALERT_TESTS]);
    assert!(ok, "promtool test rules:\n{out}");
}

#[test]
fn every_alert_has_a_unit_test() {
    let rules = std::fs::read_to_string(repo_file(ALERTS)).unwrap();
    let tests = std::fs::read_to_string(repo_file(ALERT_TESTS)).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 4, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no test in {ALERT_TESTS}"
        );
    }
}

#[test]
fn the_name_tokenizer_finds_metric_names_in_promql() {
    let names = metric_names(
        r#"sum by (le) (rate(epochgate_gate_duration_seconds_bucket{decision="allowed"}[5m])) / epochgate_jwks_keys and not_epochgate_x"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "epochgate_gate_duration_seconds_bucket",
            "epochgate_jwks_keys"
        ]
    );
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_use_is_exported() {
    let dashboard = std::fs::read_to_string(repo_file(DASHBOARD)).unwrap();
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    let rules = std::fs::read_to_string(repo_file(ALERTS)).unwrap();
    let used: BTreeSet<String> = metric_names(&dashboard)
        .into_iter()
        .chain(metric_names(&rules))
        .collect();
    // The dashboard covers decisions, the origin, the feed, staleness, caches and latency.
    for expected in [
        "epochgate_requests_total",
        "epochgate_origin_requests_total",
        "epochgate_feed_connected",
        "epochgate_decision_record_age_seconds_bucket",
        "epochgate_verified_cache_entries",
        "epochgate_request_duration_seconds_bucket",
    ] {
        assert!(used.contains(expected), "{expected} not found in {used:?}");
    }

    let (_origin, _upstream, edge) = started().await;
    let exported = exported_names(&edge.metrics().await);
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used by {DASHBOARD} or {ALERTS} but not exported: {missing:?}\nexported: {exported:?}"
    );
}
