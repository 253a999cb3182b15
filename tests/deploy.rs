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
