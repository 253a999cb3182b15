//! The operator files in `deploy/` against the code they describe: the
//! Grafana dashboard and the Prometheus alerts use only metrics that
//! `actors/src/metrics.rs` registers, every alert is complete, Prometheus
//! scrapes the port of the default `http.listen` in `src/config.rs`, and the
//! systemd files only set real configuration keys. Pure file checks: no
//! NATS, no models. YAML is read line by line (no YAML crate).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{what}:\n  - {}", problems.join("\n  - "));
}

// ---------------------------------------------------------------- metrics

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Metric names registered in metrics.rs: the first string literal of every
/// `register_*!(` call, with the kind taken from the macro name.
fn registered_metrics(src: &str) -> BTreeMap<String, Kind> {
    let mut out = BTreeMap::new();
    let mut rest = src;
    while let Some(at) = rest.find("register_") {
        rest = &rest[at..];
        let Some(bang) = rest.find('!') else { break };
        let mac = &rest[..bang];
        let is_macro = mac.chars().all(|c| c.is_ascii_lowercase() || c == '_') && rest[bang + 1..].starts_with('(');
        if !is_macro {
            rest = &rest["register_".len()..];
            continue;
        }
        let args = rest[bang + 2..].trim_start();
        if let Some(lit) = args.strip_prefix('"') {
            if let Some(end) = lit.find('"') {
                let kind = if mac.contains("histogram") {
                    Kind::Histogram
                } else if mac.contains("counter") {
                    Kind::Counter
                } else {
                    Kind::Gauge
                };
                out.insert(lit[..end].to_string(), kind);
            }
        }
        rest = &rest[bang..];
    }
    out
}

fn registered() -> BTreeMap<String, Kind> {
    let metrics = registered_metrics(&read("actors/src/metrics.rs"));
    // The parser must have found the registry, or every check below is void.
    assert!(metrics.len() >= 10, "found only {metrics:?} in actors/src/metrics.rs");
    assert_eq!(metrics.get("orfeas_job_seconds"), Some(&Kind::Histogram), "{metrics:?}");
    assert_eq!(metrics.get("orfeas_jobs_finished_total"), Some(&Kind::Counter), "{metrics:?}");
    metrics
}

/// Every `orfeas_[a-z0-9_]+` word in `text` (not inside a longer identifier).
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(at) = text[i..].find("orfeas_") {
        let start = i + at;
        let mut end = start + "orfeas_".len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_') {
            end += 1;
        }
        let inside_word = start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !inside_word && end > start + "orfeas_".len() {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// A referenced series name is a registered metric, or a histogram's
/// `_bucket` / `_sum` / `_count` series.
fn check_metric(name: &str, metrics: &BTreeMap<String, Kind>) -> Result<(), String> {
    if metrics.contains_key(name) {
        return Ok(());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            return match metrics.get(base) {
                Some(Kind::Histogram) => Ok(()),
                Some(kind) => Err(format!("{name}: {base} is a {kind:?}, not a histogram")),
                None => Err(format!("{name}: no metric {base} in actors/src/metrics.rs")),
            };
        }
    }
    Err(format!("{name}: not registered in actors/src/metrics.rs"))
}

fn metric_problems(file: &str, text: &str, metrics: &BTreeMap<String, Kind>) -> Vec<String> {
    referenced_metrics(text).iter().filter_map(|n| check_metric(n, metrics).err()).map(|e| format!("{file}: {e}")).collect()
}

// -------------------------------------------------------------- dashboard

const DS: &str = "${DS_PROMETHEUS}";

/// All panels, rows' nested panels included.
fn all_panels(panels: &[Value]) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in panels {
        out.push(p);
        if let Some(inner) = p.get("panels").and_then(Value::as_array) {
            out.extend(all_panels(inner));
        }
    }
    out
}

fn dashboard_problems(text: &str, metrics: &BTreeMap<String, Kind>) -> Vec<String> {
    let mut problems = Vec::new();
    let dash: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return vec![format!("not JSON: {e}")],
    };
    match dash["schemaVersion"].as_u64() {
        Some(v) if v >= 36 => {}
        other => problems.push(format!("schemaVersion {other:?}, want >= 36")),
    }
    let declared_var =
        dash["templating"]["list"].as_array().is_some_and(|l| l.iter().any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"));
    let declared_input = dash["__inputs"].as_array().is_some_and(|l| l.iter().any(|v| v["name"] == "DS_PROMETHEUS"));
    if !declared_var && !declared_input {
        problems.push("no DS_PROMETHEUS datasource variable or input".into());
    }
    let Some(top) = dash["panels"].as_array() else {
        problems.push("no panels".into());
        return problems;
    };
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    let mut shown = 0;
    for p in all_panels(top) {
        let title = p["title"].as_str().unwrap_or("(untitled)");
        if let Some(id) = p["id"].as_u64() {
            if !ids.insert(id) {
                problems.push(format!("panel id {id} ({title}) used twice"));
            }
        }
        if p["gridPos"].get("w").is_none() {
            problems.push(format!("panel {title}: no gridPos"));
        }
        if p["type"] == "row" {
            continue;
        }
        shown += 1;
        if p["datasource"]["uid"] != DS {
            problems.push(format!("panel {title}: datasource is not {DS}"));
        }
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title}: no targets"));
        }
        for t in targets {
            if t["datasource"]["uid"] != DS {
                problems.push(format!("panel {title}: a target's datasource is not {DS}"));
            }
            match t["expr"].as_str() {
                Some(e) if !e.trim().is_empty() => exprs.push((title.to_string(), e.to_string())),
                _ => problems.push(format!("panel {title}: a target has no expr")),
            }
        }
    }
    if shown < 10 {
        problems.push(format!("only {shown} panels"));
    }
    for (title, e) in &exprs {
        if e.contains("histogram_quantile") {
            let by_le = e.contains("by (le") || e.contains(", le)") || e.contains("by(le");
            if !e.contains("_bucket") || !by_le {
                problems.push(format!("panel {title}: histogram_quantile needs a _bucket series summed by le: {e}"));
            }
        }
    }
    // What operators were promised on the dashboard.
    let all: String = exprs.iter().map(|(_, e)| e.as_str()).collect::<Vec<_>>().join("\n");
    for needed in [
        "orfeas_jobs_finished_total",
        "orfeas_job_seconds_bucket",
        "orfeas_queue_depth",
        "orfeas_queue_wait_seconds_bucket",
        "orfeas_batch_size_sum",
        "orfeas_batch_size_count",
        "orfeas_batch_fill_ratio_sum",
        "orfeas_batch_fill_ratio_count",
        "orfeas_device_memory_bytes",
        "orfeas_device_utilization_ratio",
        "orfeas_batch_ceiling",
        "orfeas_device_oom_total",
        "orfeas_errors_total",
        "orfeas_requests_total",
        "orfeas_actor_restarts_total",
        "orfeas_nats_reconnects_total",
        "orfeas_dead_letters_total",
        "orfeas_stage_seconds_bucket",
    ] {
        if !referenced_metrics(&all).contains(needed) {
            problems.push(format!("no panel queries {needed}"));
        }
    }
    for q in ["0.5", "0.9", "0.99"] {
        if !all.contains(&format!("histogram_quantile({q}, sum by (le) (rate(orfeas_job_seconds_bucket")) {
            problems.push(format!("no p{} job latency panel target", &q[2..]));
        }
    }
    problems.extend(metric_problems("dashboard", text, metrics));
    problems
}

#[test]
fn dashboard_parses_and_uses_only_registered_metrics() {
    let problems = dashboard_problems(&read("deploy/grafana/orfeas-dashboard.json"), &registered());
    assert_no_problems("deploy/grafana/orfeas-dashboard.json", &problems);
}

// ----------------------------------------------------------------- alerts

#[derive(Debug, Default)]
struct Rule {
    name: String,
    expr: String,
    severity: Option<String>,
    summary: bool,
    description: bool,
    has_labels: bool,
    has_annotations: bool,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"').and_then(|s| s.strip_suffix('"')).or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\''))).unwrap_or(v)
}

/// Alerting rules of a Prometheus rule file, read line by line: a rule runs
/// from its `- alert:` line to the next line indented as little as it.
fn parse_alerts(text: &str) -> Vec<Rule> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).collect();
    let mut rules = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(name) = lines[i].trim_start().strip_prefix("- alert:") else {
            i += 1;
            continue;
        };
        let base = indent(lines[i]);
        let mut rule = Rule { name: unquote(name).to_string(), ..Rule::default() };
        let mut section = "";
        i += 1;
        while i < lines.len() && indent(lines[i]) > base {
            let line = lines[i].trim();
            let (key, value) = line.split_once(':').map(|(k, v)| (k.trim(), v.trim())).unwrap_or((line, ""));
            match key {
                "expr" if matches!(value, "|" | ">" | "|-" | ">-") => {
                    let own = indent(lines[i]);
                    let mut body = Vec::new();
                    while i + 1 < lines.len() && indent(lines[i + 1]) > own {
                        i += 1;
                        body.push(lines[i].trim());
                    }
                    rule.expr = body.join(" ");
                    section = "";
                }
                "expr" => {
                    rule.expr = unquote(value).to_string();
                    section = "";
                }
                "labels" => {
                    rule.has_labels = true;
                    section = "labels";
                }
                "annotations" => {
                    rule.has_annotations = true;
                    section = "annotations";
                }
                "severity" if section == "labels" => rule.severity = Some(unquote(value).to_string()),
                "summary" if section == "annotations" => rule.summary = !unquote(value).is_empty(),
                "description" if section == "annotations" => rule.description = !unquote(value).is_empty(),
                "for" | "keep_firing_for" => section = "",
                _ => {}
            }
            i += 1;
        }
        rules.push(rule);
    }
    rules
}

fn alert_problems(text: &str, metrics: &BTreeMap<String, Kind>, scrape_job: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let rules = parse_alerts(text);
    let alert_lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.trim_start_matches("- ").trim_start().starts_with("alert:"))
        .count();
    if alert_lines != rules.len() {
        problems.push(format!("{alert_lines} `alert:` lines but {} rules read (each must start a list item: `- alert:`)", rules.len()));
    }
    let mut names = BTreeSet::new();
    for r in &rules {
        if r.name.is_empty() || !names.insert(r.name.clone()) {
            problems.push(format!("alert name {:?} empty or repeated", r.name));
        }
        if r.expr.is_empty() {
            problems.push(format!("{}: no expr", r.name));
        }
        if !r.has_labels {
            problems.push(format!("{}: no labels", r.name));
        }
        match r.severity.as_deref() {
            Some("critical" | "warning" | "info") => {}
            other => problems.push(format!("{}: severity {other:?}, want critical, warning or info", r.name)),
        }
        if !r.has_annotations || !r.summary || !r.description {
            problems.push(format!("{}: needs annotations with summary and description", r.name));
        }
    }
    let up = format!("up{{job=\"{scrape_job}\"}}");
    let expected: [(&str, Box<dyn Fn(&str) -> bool>); 6] = [
        ("queue growing", Box::new(|e| e.contains("deriv(orfeas_queue_depth") && e.contains("orfeas_queue_depth) >"))),
        ("error ratio", Box::new(|e| e.contains("orfeas_errors_total") && e.contains("orfeas_requests_total") && e.contains('/'))),
        ("dead letters", Box::new(|e| e.contains("increase(orfeas_dead_letters_total"))),
        ("node down", Box::new(move |e| e.contains(&up) && e.contains("== 0"))),
        ("device memory", Box::new(|e| e.contains("orfeas_device_memory_bytes{kind=\"used\"}") && e.contains("kind=\"total\""))),
        ("actor restarts", Box::new(|e| e.contains("orfeas_actor_restarts_total"))),
    ];
    for (what, matches) in &expected {
        if !rules.iter().any(|r| matches(&r.expr)) {
            problems.push(format!("no {what} alert"));
        }
    }
    problems.extend(metric_problems("alerts", text, metrics));
    problems
}

// ------------------------------------------------------------- prometheus

/// `http.listen`'s default from the `Default` impl in src/config.rs.
fn default_listen() -> String {
    let src = read("src/config.rs");
    let found = src.match_indices("HttpSection {").find_map(|(at, _)| {
        let block = &src[at..at + src[at..].find('}')?];
        let lit = &block[block.find("listen: \"")? + "listen: \"".len()..];
        Some(lit[..lit.find('"')?].to_string())
    });
    let listen = found.expect("HttpSection { listen: \"…\" } default in src/config.rs");
    assert!(listen.parse::<std::net::SocketAddr>().is_ok(), "default http.listen {listen:?}");
    listen
}

fn default_port() -> u16 {
    default_listen().rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("port of the default http.listen")
}

/// Items of a YAML list value: inline `[a, b]` or the following `- a` lines.
fn yaml_list(lines: &[&str], i: usize, inline: &str) -> Vec<String> {
    let inline = inline.trim();
    if let Some(body) = inline.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        return body.split(',').map(|s| unquote(s).to_string()).filter(|s| !s.is_empty()).collect();
    }
    if !inline.is_empty() {
        return vec![unquote(inline).to_string()];
    }
    let own = indent(lines[i]);
    let mut out = Vec::new();
    for l in &lines[i + 1..] {
        let t = l.trim();
        if indent(l) < own || (indent(l) == own && !t.starts_with("- ")) {
            break;
        }
        match t.strip_prefix("- ") {
            Some(item) if indent(l) >= own => out.push(unquote(item).to_string()),
            _ => break,
        }
    }
    out
}

struct Scrape {
    rule_files: Vec<String>,
    jobs: Vec<String>,
    targets: Vec<String>,
}

fn parse_prometheus(text: &str) -> Scrape {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).collect();
    let mut s = Scrape { rule_files: vec![], jobs: vec![], targets: vec![] };
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim().trim_start_matches("- ");
        let Some((key, value)) = t.split_once(':') else { continue };
        match key.trim() {
            "rule_files" => s.rule_files.extend(yaml_list(&lines, i, value)),
            "job_name" => s.jobs.push(unquote(value).to_string()),
            "targets" => s.targets.extend(yaml_list(&lines, i, value)),
            _ => {}
        }
    }
    s
}

fn prometheus_problems(text: &str, port: u16) -> Vec<String> {
    let mut problems = Vec::new();
    let s = parse_prometheus(text);
    if !s.rule_files.iter().any(|f| f == "alerts.yml") {
        problems.push(format!("rule_files {:?} does not load alerts.yml", s.rule_files));
    }
    for f in &s.rule_files {
        if !root().join("deploy/prometheus").join(f).is_file() {
            problems.push(format!("rule file {f} is not in deploy/prometheus"));
        }
    }
    if !s.jobs.iter().any(|j| j == "orfeas") {
        problems.push(format!("no scrape job named orfeas in {:?}", s.jobs));
    }
    if s.targets.is_empty() {
        problems.push("no static targets".into());
    }
    for t in &s.targets {
        match t.rsplit_once(':').map(|(_, p)| p.parse::<u16>()) {
            Some(Ok(p)) if p == port => {}
            _ => problems.push(format!("target {t}: want port {port} (default http.listen)")),
        }
    }
    problems
}

#[test]
fn alerts_are_complete_and_use_only_registered_metrics() {
    let scrape = parse_prometheus(&read("deploy/prometheus/prometheus.yml"));
    let job = scrape.jobs.first().cloned().unwrap_or_default();
    let problems = alert_problems(&read("deploy/prometheus/alerts.yml"), &registered(), &job);
    assert_no_problems("deploy/prometheus/alerts.yml", &problems);
    let rules = parse_alerts(&read("deploy/prometheus/alerts.yml"));
    assert!(rules.len() >= 6, "{rules:?}");
}

#[test]
fn prometheus_scrapes_the_default_port_and_loads_the_alerts() {
    let text = read("deploy/prometheus/prometheus.yml");
    assert_no_problems("deploy/prometheus/prometheus.yml", &prometheus_problems(&text, default_port()));
    assert_no_problems("deploy/prometheus/prometheus.yml", &metric_problems("prometheus.yml", &text, &registered()));
}

// ---------------------------------------------------------------- systemd

/// `ORFEAS_<SECTION>_<KEY>` names of the configuration: the sections are the
/// `pub <name>: <Type>Section` fields of `pub struct Config`, the keys the
/// `pub` fields of each `pub struct <Type>Section`.
fn config_env_names(src: &str) -> BTreeSet<String> {
    fn block<'a>(src: &'a str, header: &str) -> Option<&'a str> {
        let at = src.find(header)? + header.len();
        Some(&src[at..at + src[at..].find("\n}")?])
    }
    fn pub_fields(body: &str) -> Vec<(String, String)> {
        body.lines()
            .filter_map(|l| l.trim().strip_prefix("pub "))
            .filter_map(|l| l.split_once(':'))
            .map(|(n, t)| (n.trim().to_string(), t.trim().trim_end_matches(',').trim().to_string()))
            .collect()
    }
    let mut names = BTreeSet::new();
    let config = block(src, "pub struct Config {").expect("pub struct Config in src/config.rs");
    for (section, ty) in pub_fields(config) {
        if !ty.ends_with("Section") {
            continue;
        }
        let body = block(src, &format!("pub struct {ty} {{")).unwrap_or_else(|| panic!("pub struct {ty} in src/config.rs"));
        for (key, _) in pub_fields(body) {
            names.insert(format!("ORFEAS_{}_{}", section.to_ascii_uppercase(), key.to_ascii_uppercase()));
        }
    }
    names
}

fn config_names() -> BTreeSet<String> {
    let names = config_env_names(&read("src/config.rs"));
    assert!(names.contains("ORFEAS_HTTP_LISTEN") && names.contains("ORFEAS_NATS_URL") && names.len() >= 15, "{names:?}");
    names
}

/// Every `ORFEAS_…` variable named in `text` (placeholders like
/// `ORFEAS_<SECTION>` aside).
fn env_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("ORFEAS_") {
        let name: String = text[at..].chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
        if name.len() > "ORFEAS_".len() {
            out.insert(name);
        }
    }
    out
}

fn env_name_problems(file: &str, text: &str, known: &BTreeSet<String>, cli_env: &str) -> Vec<String> {
    env_names(text)
        .into_iter()
        .filter(|n| !known.contains(n) && !(n == "ORFEAS_CONFIG" && cli_env.contains("env = \"ORFEAS_CONFIG\"")))
        .map(|n| format!("{file}: {n} is not ORFEAS_<SECTION>_<KEY> of a key in src/config.rs"))
        .collect()
}

/// `Key=Value` settings of a unit or env file (comments and sections aside).
fn settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in text.lines().map(str::trim) {
        if l.starts_with('#') || l.starts_with(';') || l.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = l.split_once('=') {
            out.entry(k.trim().to_string()).or_default().push(v.trim().to_string());
        }
    }
    out
}

fn one<'a>(s: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    s.get(key).and_then(|v| v.last()).map(String::as_str).unwrap_or("")
}

/// systemd time span in seconds: `120`, `120s`, `2min`, `2min 30s`.
fn seconds(span: &str) -> Option<u64> {
    let mut total = 0;
    for part in span.split_whitespace() {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        let n: u64 = digits.parse().ok()?;
        total += match &part[digits.len()..] {
            "" | "s" | "sec" => n,
            "m" | "min" => n * 60,
            "h" | "hr" => n * 3600,
            _ => return None,
        };
    }
    Some(total)
}

/// Longest a node takes to stop after SIGTERM: the supervisor's shutdown
/// call plus the wait for the actor tree (actors/src/node.rs); 90 s (the
/// systemd default) when that code cannot be read.
fn node_stop_grace_s() -> u64 {
    let src = read("actors/src/node.rs");
    let number_after = |text: &str, pat: &str| -> Option<u64> {
        let rest = &text[text.find(pat)? + pat.len()..];
        rest.trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '_').filter(|c| *c != '_').collect::<String>().parse().ok()
    };
    let stop = src.find("SupervisorMsg::Shutdown,").map_or("", |at| &src[at..]);
    match (number_after(stop, "SupervisorMsg::Shutdown,"), number_after(stop, "timeout(Duration::from_secs(")) {
        (Some(ms), Some(s)) => ms / 1000 + s,
        (Some(ms), None) => ms / 1000,
        _ => 90,
    }
}

fn systemd_problems(unit: &str, env: &str, nats_unit: &str, port: u16, grace_s: u64) -> Vec<String> {
    let mut problems = Vec::new();
    let u = settings(unit);
    let e = settings(env);
    let n = settings(nats_unit);
    let mut expect = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let exec = one(&u, "ExecStart");
    expect(exec.split_whitespace().last() == Some("serve") && exec.contains("orfeas"), format!("orfeas.service ExecStart {exec:?}"));
    expect(one(&u, "EnvironmentFile").trim_start_matches('-') == "/etc/orfeas/orfeas.env", "orfeas.service EnvironmentFile".into());
    expect(one(&u, "Restart") == "on-failure", "orfeas.service Restart=on-failure".into());
    expect(one(&u, "KillSignal") == "SIGTERM", "orfeas.service KillSignal=SIGTERM".into());
    let stop = seconds(one(&u, "TimeoutStopSec"));
    expect(stop.is_some_and(|s| s > grace_s), format!("orfeas.service TimeoutStopSec {stop:?} must exceed the node's {grace_s} s"));
    for (k, v) in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes")] {
        expect(one(&u, k) == v, format!("orfeas.service {k}={v}"));
    }
    expect(!matches!(one(&u, "User"), "" | "root"), "orfeas.service needs a User other than root".into());

    for key in ["ORFEAS_NATS_URL", "ORFEAS_NODE_ID", "ORFEAS_STORE_ROOT", "ORFEAS_HTTP_LISTEN", "ORFEAS_NODE_KEY_FILE"] {
        expect(!one(&e, key).is_empty(), format!("orfeas.env.example sets no {key}"));
    }
    let listen = one(&e, "ORFEAS_HTTP_LISTEN");
    let listen_port = listen.parse::<std::net::SocketAddr>().ok().map(|a| a.port());
    expect(listen_port == Some(port), format!("ORFEAS_HTTP_LISTEN={listen} must be an address on port {port}"));
    let store = one(&e, "ORFEAS_STORE_ROOT");
    let state_dirs: Vec<&str> = u.get("StateDirectory").into_iter().flatten().flat_map(|v| v.split_whitespace()).collect();
    expect(
        state_dirs.iter().any(|d| store == format!("/var/lib/{d}")),
        format!("ORFEAS_STORE_ROOT={store} is not a StateDirectory {state_dirs:?} of orfeas.service"),
    );

    let nexec = one(&n, "ExecStart");
    expect(
        nexec.contains("nats-server") && nexec.contains("-c ") && nexec.ends_with("single.conf"),
        format!("nats-server.service ExecStart {nexec:?}"),
    );
    expect(one(&n, "Restart") == "on-failure", "nats-server.service Restart=on-failure".into());
    let conf = read("nats/single.conf");
    let store_dir = conf.lines().find_map(|l| l.trim().strip_prefix("store_dir:")).map(unquote).unwrap_or("");
    expect(
        one(&n, "StateDirectory").split_whitespace().any(|d| store_dir == format!("/var/lib/{d}")),
        format!("nats/single.conf store_dir {store_dir:?} is not the StateDirectory of nats-server.service"),
    );
    problems
}

#[test]
fn systemd_units_and_env_match_the_configuration() {
    let unit = read("deploy/systemd/orfeas.service");
    let env = read("deploy/systemd/orfeas.env.example");
    let nats = read("deploy/systemd/nats-server.service");
    let grace = node_stop_grace_s();
    assert_no_problems("deploy/systemd", &systemd_problems(&unit, &env, &nats, default_port(), grace));

    // Every ORFEAS_ variable in the files that configure or watch a node.
    let known = config_names();
    let cli = read("src/cli.rs");
    let mut problems = Vec::new();
    for dir in ["deploy/systemd", "deploy/prometheus", "deploy/grafana"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            let rel = f.strip_prefix(root()).unwrap_or(Path::new("?")).display().to_string();
            problems.extend(env_name_problems(&rel, &std::fs::read_to_string(&f).unwrap(), &known, &cli));
        }
    }
    assert_no_problems("environment variables", &problems);
    assert!(env_names(&env).len() >= 5, "{:?}", env_names(&env));
}

// ------------------------------------------------- the checks can fail

#[test]
fn the_checks_catch_typos() {
    let metrics = registered();
    assert!(check_metric("orfeas_job_seconds_bucket", &metrics).is_ok());
    assert!(check_metric("orfeas_job_second_bucket", &metrics).is_err());
    assert!(check_metric("orfeas_jobs_finished_total_bucket", &metrics).is_err(), "a counter has no buckets");
    assert!(check_metric("orfeas_queue_depths", &metrics).is_err());

    let dash = read("deploy/grafana/orfeas-dashboard.json");
    assert!(dashboard_problems(&dash, &metrics).is_empty());
    let typo = dash.replacen("orfeas_errors_total", "orfeas_error_total", 1);
    assert!(dashboard_problems(&typo, &metrics).iter().any(|p| p.contains("orfeas_error_total")));
    let no_ds = dash.replace(DS, "prometheus");
    assert!(!dashboard_problems(&no_ds, &metrics).is_empty());
    assert!(!dashboard_problems("{\"panels\": [", &metrics).is_empty());

    let alerts = read("deploy/prometheus/alerts.yml");
    assert!(alert_problems(&alerts, &metrics, "orfeas").is_empty());
    let typo = alerts.replacen("orfeas_dead_letters_total", "orfeas_deadletters_total", 1);
    assert!(!alert_problems(&typo, &metrics, "orfeas").is_empty());
    let no_severity = alerts.replacen("severity: critical", "team: ops", 1);
    assert!(alert_problems(&no_severity, &metrics, "orfeas").iter().any(|p| p.contains("severity")));
    let no_summary = alerts.replacen("summary:", "summry:", 1);
    assert!(alert_problems(&no_summary, &metrics, "orfeas").iter().any(|p| p.contains("summary")));
    assert!(!alert_problems(&alerts, &metrics, "orfeas-nodes").is_empty(), "node-down must use the scrape job");

    let prom = read("deploy/prometheus/prometheus.yml");
    let port = default_port();
    assert!(prometheus_problems(&prom, port).is_empty());
    assert!(!prometheus_problems(&prom, port + 1).is_empty());
    assert!(!prometheus_problems(&prom.replace("- alerts.yml", "- alert.yml"), port).is_empty());

    let known = config_names();
    assert!(env_name_problems("x", "ORFEAS_NODE_KEY_FILE=/k\nORFEAS_HTTP_LISTEN=0.0.0.0:1", &known, "").is_empty());
    assert!(!env_name_problems("x", "ORFEAS_NATS_URLS=nats://h:4222", &known, "").is_empty());
    assert!(!env_name_problems("x", "ORFEAS_HTTP_PORT=9470", &known, "").is_empty());

    let unit = read("deploy/systemd/orfeas.service");
    let env = read("deploy/systemd/orfeas.env.example");
    let nats = read("deploy/systemd/nats-server.service");
    assert!(systemd_problems(&unit, &env, &nats, port, 70).is_empty());
    assert!(!systemd_problems(&unit, &env, &nats, port, 600).is_empty(), "stop timeout below the grace");
    let wrong_port = env.replace("0.0.0.0:9470", "0.0.0.0:9471");
    assert!(!systemd_problems(&unit, &wrong_port, &nats, port, 70).is_empty());
    assert!(!systemd_problems(&unit.replace("Restart=on-failure", "Restart=no"), &env, &nats, port, 70).is_empty());
    assert_eq!(seconds("2min 30s"), Some(150));
}

// ------------------------------------------------- compose and kubernetes

/// The YAML documents of `rel` as JSON, parsed by PyYAML through the set-up
/// venv's Python (`ORFEAS_PYTHON`, else `python3`).
fn yaml_docs(rel: &str) -> Vec<Value> {
    let python = std::env::var("ORFEAS_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .args(["-c", "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"])
        .arg(root().join(rel))
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    assert!(out.status.success(), "{rel} does not parse as YAML: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap().into_iter().filter(|d| !d.is_null()).collect()
}

/// `nats-server`: `$NATS_SERVER_BIN`, PATH, or next to `$ORFEAS_PYTHON`.
fn nats_server() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return bin.into();
    }
    let beside_python = std::env::var_os("ORFEAS_PYTHON").map(|p| PathBuf::from(p).with_file_name("nats-server"));
    let on_path = std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("nats-server")).find(|p| p.is_file()));
    on_path.or(beside_python).filter(|p| p.is_file()).expect("nats-server: run deploy/setup.sh or set NATS_SERVER_BIN")
}

/// Problems of a nats-server configuration for an orfeas cluster, with the
/// server's own verdict (`nats-server -t`) on it.
fn nats_conf_problems(what: &str, text: &str, env: &[(&str, &str)], routes: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nats.conf");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(nats_server()).arg("-t").arg("-c").arg(&file).envs(env.iter().copied()).output().unwrap();
    if !out.status.success() {
        problems.push(format!("{what}: nats-server -t: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    }
    for needed in ["sync_interval: always", "max_payload: 8MB", "jetstream", "name: orfeas"] {
        if !text.contains(needed) {
            problems.push(format!("{what}: no `{needed}`"));
        }
    }
    let listed: BTreeSet<String> = text.lines().filter_map(|l| l.trim().strip_prefix("nats-route://")).map(str::to_string).collect();
    let wanted: BTreeSet<String> = routes.iter().cloned().collect();
    if listed != wanted {
        problems.push(format!("{what}: routes {listed:?}, want {wanted:?}"));
    }
    problems
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter().fold(v, |v, k| &v[*k]).as_str().unwrap_or("")
}

/// `host:port` pairs of a comma-separated NATS URL list.
fn nats_hosts(urls: &str) -> Vec<String> {
    urls.split(',').map(|u| u.trim().trim_start_matches("nats://").to_string()).filter(|u| !u.is_empty()).collect()
}

fn compose_env(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))).collect())
        .unwrap_or_default()
}

/// Relative bind-mount sources of a compose service that do not exist.
fn missing_mounts(file: &str, service: &str, s: &Value) -> Vec<String> {
    let base = root().join(file).parent().unwrap().to_path_buf();
    s["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .filter_map(|v| v.split(':').next())
        .filter(|src| src.starts_with('.'))
        .filter(|src| !base.join(src).exists())
        .map(|src| format!("{file}: {service} mounts {src}, which does not exist"))
        .collect()
}

fn compose_problems(file: &str, doc: &Value, known: &BTreeSet<String>, port: u16, grace_s: u64) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(services) = doc["services"].as_object() else { return vec![format!("{file}: no services")] };
    for (name, s) in services {
        problems.extend(missing_mounts(file, name, s));
        for dep in s["depends_on"].as_array().into_iter().flatten().filter_map(|d| d.as_str()) {
            if !services.contains_key(dep) {
                problems.push(format!("{file}: {name} depends on unknown service {dep}"));
            }
        }
    }
    let Some(node) = services.get("orfeas") else { return vec![format!("{file}: no orfeas service")] };
    let env = compose_env(node);
    let names: String = env.keys().map(|k| format!("{k}=\n")).collect();
    problems.extend(env_name_problems(file, &names, known, ""));
    let listen = env.get("ORFEAS_HTTP_LISTEN").cloned().unwrap_or_default();
    if listen.parse::<std::net::SocketAddr>().map(|a| a.port()).ok() != Some(port) {
        problems.push(format!("{file}: ORFEAS_HTTP_LISTEN {listen:?} is not on port {port}"));
    }
    for host in nats_hosts(env.get("ORFEAS_NATS_URL").map(String::as_str).unwrap_or("")) {
        match host.split_once(':') {
            Some((svc, "4222")) if services.contains_key(svc) => {}
            _ => problems.push(format!("{file}: ORFEAS_NATS_URL names {host}, not a NATS service on 4222")),
        }
    }
    if !node["command"].as_array().is_some_and(|c| c.iter().any(|a| a == "serve")) {
        problems.push(format!("{file}: orfeas does not run `serve`"));
    }
    let grace = seconds(node["stop_grace_period"].as_str().unwrap_or(""));
    if !grace.is_some_and(|g| g > grace_s) {
        problems.push(format!("{file}: stop_grace_period {grace:?} must exceed the node's {grace_s} s"));
    }
    problems
}

#[test]
fn compose_files_parse_and_agree_with_the_code() {
    let known = config_names();
    let (port, grace) = (default_port(), node_stop_grace_s());

    let single = &yaml_docs("deploy/compose/single.yaml")[0];
    let mut problems = compose_problems("deploy/compose/single.yaml", single, &known, port, grace);
    let env = compose_env(&single["services"]["orfeas"]);
    if env.get("ORFEAS_NATS_REPLICAS").map(String::as_str) != Some("1") {
        problems.push("single.yaml: one server holds one replica".into());
    }
    let single_conf = read("nats/single.conf");
    if !single_conf.contains("listen: 0.0.0.0:4222") || !single_conf.contains("sync_interval: always") {
        problems.push("nats/single.conf: listen 0.0.0.0:4222 with sync_interval: always".into());
    }

    let cluster = &yaml_docs("deploy/compose/cluster.yaml")[0];
    problems.extend(compose_problems("deploy/compose/cluster.yaml", cluster, &known, port, grace));
    let services = cluster["services"].as_object().unwrap();
    let nats: Vec<&String> = services.keys().filter(|k| k.starts_with("nats-")).collect();
    let server_names: BTreeSet<&str> = nats.iter().map(|k| str_at(&services[k.as_str()], &["environment", "SERVER_NAME"])).collect();
    if nats.len() != 3 || server_names.len() != 3 {
        problems.push(format!("cluster.yaml: 3 NATS servers with unique names, got {nats:?} / {server_names:?}"));
    }
    let routes: Vec<String> = nats.iter().map(|k| format!("{k}:6222")).collect();
    problems.extend(nats_conf_problems("deploy/compose/nats-cluster.conf", &read("deploy/compose/nats-cluster.conf"), &[("SERVER_NAME", "nats-1")], &routes));
    let env = compose_env(&services["orfeas"]);
    if env.get("ORFEAS_NATS_REPLICAS").map(String::as_str) != Some("3") {
        problems.push("cluster.yaml: a 3-server cluster runs R3".into());
    }
    if nats_hosts(&env["ORFEAS_NATS_URL"]).len() != 3 {
        problems.push("cluster.yaml: the nodes list every NATS server".into());
    }
    // The results bucket: created by minio-init, used by the nodes, on the
    // MinIO service with its credentials.
    let bucket = env["ORFEAS_STORE_URL"].trim_start_matches("s3://").split('/').next().unwrap_or("").to_string();
    let init = services["minio-init"]["command"].to_string();
    if bucket.is_empty() || !init.contains(&format!("mc mb --ignore-existing store/{bucket}")) {
        problems.push(format!("cluster.yaml: minio-init does not create bucket {bucket:?}: {init}"));
    }
    if env["ORFEAS_STORE_ENDPOINT"] != "http://minio:9000" || !services["minio"]["ports"].to_string().contains("9000:9000") {
        problems.push("cluster.yaml: ORFEAS_STORE_ENDPOINT must be the minio service on 9000".into());
    }
    let minio = compose_env(&services["minio"]);
    if env["ORFEAS_STORE_ACCESS_KEY_ID"] != minio["MINIO_ROOT_USER"] || env["ORFEAS_STORE_SECRET_ACCESS_KEY"] != minio["MINIO_ROOT_PASSWORD"] {
        problems.push("cluster.yaml: the nodes' S3 credentials are not MinIO's".into());
    }
    // Prometheus finds the nodes through DNS under the scrape job the alerts use.
    let prom = &yaml_docs("deploy/compose/prometheus.yml")[0];
    let job = &prom["scrape_configs"][0];
    let sd = &job["dns_sd_configs"][0];
    if job["job_name"] != "orfeas" || sd["port"].as_u64() != Some(u64::from(port)) || sd["names"][0] != "orfeas" {
        problems.push(format!("compose prometheus.yml: job orfeas on the orfeas service, port {port}: {job}"));
    }
    problems.extend(metric_problems("compose prometheus.yml", &read("deploy/compose/prometheus.yml"), &registered()));
    let grafana = services["grafana"]["volumes"].to_string();
    if !grafana.contains("../grafana/orfeas-dashboard.json") {
        problems.push("cluster.yaml: grafana does not load the dashboard".into());
    }
    assert_no_problems("deploy/compose", &problems);
}

fn kind<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name).unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn kubernetes_manifests_parse_and_agree_with_the_code() {
    let known = config_names();
    let (port, grace) = (default_port(), node_stop_grace_s());
    let kustomization = &yaml_docs("deploy/kubernetes/kustomization.yaml")[0];
    let namespace = kustomization["namespace"].as_str().unwrap_or("").to_string();
    let mut docs = Vec::new();
    for file in kustomization["resources"].as_array().expect("resources") {
        docs.extend(yaml_docs(&format!("deploy/kubernetes/{}", file.as_str().unwrap())));
    }
    let mut problems = Vec::new();
    for d in &docs {
        let (k, n) = (d["kind"].as_str().unwrap_or(""), d["metadata"]["name"].as_str().unwrap_or(""));
        if d["apiVersion"].as_str().unwrap_or("").is_empty() || k.is_empty() || n.is_empty() {
            problems.push(format!("incomplete document {d}"));
        }
        if k != "Namespace" && d["metadata"]["namespace"] != namespace.as_str() {
            problems.push(format!("{k} {n} is not in namespace {namespace}"));
        }
    }
    assert!(kind(&docs, "Namespace", &namespace)["kind"] == "Namespace");

    // NATS: 3 pods behind the headless service, routes to each of them.
    let sts = kind(&docs, "StatefulSet", "nats");
    let replicas = sts["spec"]["replicas"].as_u64().unwrap_or(0);
    let svc_name = str_at(sts, &["spec", "serviceName"]);
    let svc = kind(&docs, "Service", svc_name);
    if replicas != 3 || svc["spec"]["clusterIP"] != "None" || !svc["spec"]["ports"].to_string().contains("4222") {
        problems.push(format!("nats: 3 replicas behind a headless service with port 4222 ({replicas}, {svc_name})"));
    }
    let conf = str_at(kind(&docs, "ConfigMap", "nats-config"), &["data", "nats.conf"]);
    let routes: Vec<String> = (0..replicas).map(|i| format!("nats-{i}.{svc_name}.{namespace}.svc.cluster.local:6222")).collect();
    problems.extend(nats_conf_problems("nats-config", conf, &[("POD_NAME", "nats-0")], &routes));

    // orfeas: GPU, probes, drain time, configuration.
    let deployment = kind(&docs, "Deployment", "orfeas");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    if c["resources"]["limits"]["nvidia.com/gpu"].as_u64() != Some(1) {
        problems.push("orfeas: each pod requests one nvidia.com/gpu".into());
    }
    let port_name = c["ports"].as_array().and_then(|p| p.iter().find(|p| p["containerPort"].as_u64() == Some(u64::from(port)))).map(|p| p["name"].clone());
    if port_name.is_none() {
        problems.push(format!("orfeas: no containerPort {port}"));
    }
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        if get["path"] != path || Some(&get["port"]) != port_name.as_ref() {
            problems.push(format!("orfeas {probe}: want {path} on the metrics port, got {get}"));
        }
    }
    if !pod["terminationGracePeriodSeconds"].as_u64().is_some_and(|g| g > grace) {
        problems.push(format!("orfeas: terminationGracePeriodSeconds must exceed the node's {grace} s"));
    }
    let env: Vec<&Value> = c["env"].as_array().map(|e| e.iter().collect()).unwrap_or_default();
    let names: String = env.iter().map(|e| format!("{}=\n", e["name"].as_str().unwrap_or(""))).collect();
    problems.extend(env_name_problems("orfeas.yaml", &names, &known, &read("src/cli.rs")));
    for e in &env {
        let secret = &e["valueFrom"]["secretKeyRef"];
        if secret.is_object() && kind(&docs, "Secret", secret["name"].as_str().unwrap())["stringData"][secret["key"].as_str().unwrap()].is_null() {
            problems.push(format!("orfeas: secret key {secret} is not in the Secret"));
        }
    }
    // The configuration file in the ConfigMap is a valid orfeas config
    // (checked by the binary itself) for an R3 cluster on these NATS pods.
    let toml_text = str_at(kind(&docs, "ConfigMap", "orfeas-config"), &["data", "orfeas.toml"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("orfeas.toml"), toml_text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orfeas")).arg("config").env("ORFEAS_CONFIG", dir.path().join("orfeas.toml")).output().unwrap();
    let resolved: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap_or(toml::Value::Integer(0));
    if !out.status.success() {
        problems.push(format!("orfeas-config: orfeas config refuses it: {}", String::from_utf8_lossy(&out.stderr)));
    } else {
        if resolved["nats"]["replicas"].as_integer() != Some(3) {
            problems.push("orfeas-config: nats.replicas must be 3".into());
        }
        let hosts = nats_hosts(resolved["nats"]["url"].as_str().unwrap_or(""));
        let want: Vec<String> = (0..replicas).map(|i| format!("nats-{i}.{svc_name}:4222")).collect();
        if hosts != want {
            problems.push(format!("orfeas-config: nats.url hosts {hosts:?}, want {want:?}"));
        }
        if resolved["http"]["listen"].as_str().and_then(|l| l.parse::<std::net::SocketAddr>().ok()).map(|a| a.port()) != Some(port) {
            problems.push("orfeas-config: http.listen must serve the probes' port".into());
        }
    }
    let mount = c["volumeMounts"][0]["mountPath"].as_str().unwrap_or("");
    let config_env = env.iter().find(|e| e["name"] == "ORFEAS_CONFIG").map(|e| e["value"].as_str().unwrap_or("")).unwrap_or("");
    if config_env != format!("{mount}/orfeas.toml") {
        problems.push(format!("orfeas: ORFEAS_CONFIG {config_env:?} is not the mounted orfeas.toml under {mount}"));
    }
    assert_no_problems("deploy/kubernetes", &problems);
}

/// Streams and buckets named in the operator docs and deploy files exist.
#[test]
fn operator_docs_name_only_real_streams_and_buckets() {
    let subjects = read("actors/wire/src/subjects.rs");
    let consts: BTreeSet<String> = subjects
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split_once("= \"").map(|(_, v)| v.trim_end_matches("\";").to_string()))
        .collect();
    assert!(consts.contains("ORFEAS_QUEUE") && consts.contains("orfeas_nodes"), "{consts:?}");
    let mut problems = Vec::new();
    let mut found = 0;
    for rel in ["md/operations.md", "deploy/README.md", "nats/cluster/README.md"] {
        let text = read(rel);
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            let word = word.strip_prefix("KV_").unwrap_or(word);
            // Streams are ORFEAS_<ONE WORD>; buckets orfeas_<one word>
            // (configuration variables and metrics have more parts).
            let stream = word.strip_prefix("ORFEAS_").is_some_and(|r| !r.is_empty() && !r.contains('_') && r.chars().all(|c| c.is_ascii_uppercase()));
            let bucket = word.strip_prefix("orfeas_").is_some_and(|r| !r.is_empty() && !r.contains('_') && r.chars().all(|c| c.is_ascii_lowercase()));
            if stream || bucket {
                found += 1;
                if !consts.contains(word) {
                    problems.push(format!("{rel}: {word} is not a stream or bucket in subjects.rs"));
                }
            }
        }
    }
    assert!(found >= 6, "the docs name the streams and buckets they back up ({found})");
    assert_no_problems("stream and bucket names", &problems);
}

#[test]
fn cluster_deploy_checks_catch_mistakes() {
    let conf = read("deploy/compose/nats-cluster.conf");
    let routes: Vec<String> = (1..=3).map(|i| format!("nats-{i}:6222")).collect();
    let env = [("SERVER_NAME", "nats-1")];
    assert!(nats_conf_problems("c", &conf, &env, &routes).is_empty());
    assert!(!nats_conf_problems("c", &conf.replace("sync_interval: always", ""), &env, &routes).is_empty(), "fsync setting");
    assert!(!nats_conf_problems("c", &conf, &[], &routes).is_empty(), "nats-server -t sees the unset variable");
    assert!(!nats_conf_problems("c", &conf.replace("nats-3:6222", "nats-4:6222"), &env, &routes).is_empty(), "routes");
    assert!(!nats_conf_problems("c", &conf.replace("max_file_store: 100GB", "max_file_store: lots"), &env, &routes).is_empty(), "server's verdict");

    let known = config_names();
    let (port, grace) = (default_port(), node_stop_grace_s());
    let file = "deploy/compose/cluster.yaml";
    let good = yaml_docs(file).remove(0);
    assert!(compose_problems(file, &good, &known, port, grace).is_empty());
    let mutate = |f: &dyn Fn(&mut Value)| {
        let mut doc = good.clone();
        f(&mut doc);
        compose_problems(file, &doc, &known, port, grace)
    };
    assert!(!mutate(&|d| d["services"]["orfeas"]["environment"]["ORFEAS_HTTP_LISTEN"] = "0.0.0.0:9999".into()).is_empty());
    assert!(!mutate(&|d| d["services"]["orfeas"]["environment"]["ORFEAS_NATS_URL"] = "nats://nats-9:4222".into()).is_empty());
    assert!(!mutate(&|d| d["services"]["orfeas"]["environment"]["ORFEAS_STORE_BUCKET"] = "x".into()).is_empty(), "unknown key");
    assert!(!mutate(&|d| d["services"]["orfeas"]["stop_grace_period"] = "5s".into()).is_empty());
    assert!(!mutate(&|d| d["services"]["prometheus"]["volumes"][0] = "./prometheus-typo.yml:/etc/prometheus/prometheus.yml".into()).is_empty());
    assert!(!mutate(&|d| d["services"]["orfeas"]["depends_on"][0] = "nats-9".into()).is_empty());
}
