//! The model runtime through real nodes: out-of-memory errors split batches
//! and lower the device's ceiling without failing jobs (a lone job that
//! never fits fails with the retryable `gpu_oom`); per-job model parameters
//! reach the forward pass; `list_models` answers from any node and `orfeas
//! models` prints it; `POST /admin/models/reload` swaps models while jobs
//! keep flowing; readiness waits for warm models on every device.

mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    path::Path,
    time::Duration,
};

use common::{agent, eventually, http_get, metric, NatsServer, NodeOptions, NodeProcess};
use orfeas_wire::{
    client::{AgentClient, JobEvents},
    subjects,
    v1::{EventKind, Failure, Format, ImageInput, ListModels, MeshStats, ModelList, Stage, SubmitJob},
    ErrorCode,
};

const WAIT: Duration = Duration::from_secs(120);

fn job(model: &str, image: &str, model_params: BTreeMap<String, f64>) -> SubmitJob {
    SubmitJob {
        job_id: uuid::Uuid::now_v7(),
        model: model.into(),
        image: ImageInput::Inline {
            media_type: "image/png".into(),
            data: common::example(image),
        },
        formats: vec![Format::Stl],
        params: orfeas_wire::v1::JobParams {
            model_params,
            previews: Some(false),
            ..Default::default()
        },
    }
}

/// Read a job's events until it is past `queued` (sent to a device).
async fn dispatched(client: &mut AgentClient, events: &mut JobEvents) {
    loop {
        match client.next_event(events, WAIT).await.expect("verified event").kind {
            EventKind::Progress { stage, .. } if stage != Stage::Queued => return,
            EventKind::Completed { .. } | EventKind::Failed(_) | EventKind::Rejected(_) => panic!("the job ended before it was dispatched"),
            _ => {}
        }
    }
}

/// The terminal answer of a job: its mesh, or its failure.
async fn outcome(client: &mut AgentClient, events: &mut JobEvents) -> Result<MeshStats, Failure> {
    loop {
        match client
            .next_event(events, WAIT)
            .await
            .expect("verified event")
            .kind
        {
            EventKind::Completed { mesh, .. } => return Ok(mesh),
            EventKind::Failed(f) | EventKind::Rejected(f) => return Err(f),
            _ => {}
        }
    }
}

/// A plain HTTP/1.1 POST without a body on loopback: (status, body).
fn http_post(port: u16, path: &str) -> (u16, String) {
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the http endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Copy built-in models into a fresh models folder a test may edit.
fn models_copy(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        let src = common::repo().join("models").join(name);
        std::fs::create_dir(dir.path().join(name)).unwrap();
        for f in ["model.pt", "manifest.toml"] {
            std::fs::copy(src.join(f), dir.path().join(name).join(f)).unwrap();
        }
    }
    dir
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} in {}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

fn orfeas(args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::orfeas_bin())
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_out_of_memory_splits_batches_lowers_the_ceiling_and_fails_only_what_never_fits() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let testing = common::repo().join("models/testing");
    let node = NodeProcess::start(
        &nats,
        NodeOptions {
            node_id: "oom1",
            store: store.path(),
            env: vec![
                ("ORFEAS_MODELS_DIR", testing.display().to_string()),
                // The first batch holds the device while the others queue into one large batch.
                ("ORFEAS_NODE_SIMULATED_LATENCY_MS", "2500".into()),
                ("ORFEAS_SCHEDULER_MAX_BATCH", "8".into()),
                // A retryable failure is final at once, so the lone job's answer comes now.
                ("ORFEAS_SCHEDULER_MAX_DELIVER", "1".into()),
            ],
        },
    )
    .await;
    let (mut client, _) = agent(&nats.url, "alice").await;
    // The `oom` model raises CUDA's out-of-memory error for batches larger
    // than 2 (its max_ok_batch), and for any batch holding a job whose
    // max_ok_batch is 0.
    let mut jobs = Vec::new();
    for i in 0..7 {
        let params = if i == 4 {
            BTreeMap::from([("max_ok_batch".to_string(), 0.0)])
        } else {
            BTreeMap::new()
        };
        let submit = job("oom", "mug.png", params);
        let mut events = client.submit(&submit).await.unwrap();
        if i < 2 {
            // Jobs 0 and 1 take the device's two batch slots one by one (a
            // batch that fits), so the other five wait and form one batch.
            // Were the never-fitting job 4 to go alone first, its
            // out-of-memory error would drop the ceiling to 1 and no large
            // batch would form.
            dispatched(&mut client, &mut events).await;
        }
        jobs.push((i, events));
    }
    let mut completed = 0;
    for (i, events) in &mut jobs {
        match outcome(&mut client, events).await {
            Ok(mesh) => {
                assert!(mesh.closed_manifold && mesh.volume > 0.0);
                completed += 1;
            }
            Err(f) => {
                assert_eq!(
                    *i, 4,
                    "only the job that never fits fails, not job {i}: {f:?}"
                );
                assert_eq!(
                    (f.code, f.status, f.retryable),
                    (ErrorCode::GpuOom, 503, true),
                    "{f:?}"
                );
                assert!(f.error.contains("out of memory"), "{}", f.error);
            }
        }
    }
    assert_eq!(completed, 6, "every job that fits alone completed");
    // The outcome counters are bumped beside the terminal event, not
    // strictly before it: wait until all seven outcomes are counted, then
    // check how they split.
    let text = eventually("all seven outcomes counted", WAIT, || async {
        let (_, text) = http_get(node.http_port, "/metrics");
        let counted = metric(&text, "orfeas_jobs_finished_total{outcome=\"completed\"}")
            + metric(&text, "orfeas_jobs_finished_total{outcome=\"gpu_oom\"}");
        (counted >= 7.0).then_some(text)
    })
    .await;
    let ooms = metric(
        &text,
        "orfeas_device_oom_total{device=\"cpu\",model=\"oom\"}",
    );
    assert!(
        ooms >= 2.0,
        "the large batch ran out of memory and was split: {ooms}; node log:\n{}",
        node.log_text()
    );
    let ceiling = metric(&text, "orfeas_batch_ceiling{device=\"cpu\",model=\"oom\"}");
    assert!(
        (1.0..=2.0).contains(&ceiling),
        "ceiling lowered from the model's 16: {ceiling}"
    );
    assert_eq!(
        metric(&text, "orfeas_jobs_finished_total{outcome=\"completed\"}"),
        6.0
    );
    assert_eq!(
        metric(&text, "orfeas_jobs_finished_total{outcome=\"gpu_oom\"}"),
        1.0
    );
    let batches = metric(&text, "orfeas_batch_size_count{model=\"oom\"}");
    assert!(
        batches < 7.0,
        "jobs ran batched ({batches} successful forward passes for 6 jobs)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_list_models_relief_params_and_reload_through_a_real_node() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let models = models_copy(&["null", "relief"]);
    let node = NodeProcess::start(
        &nats,
        NodeOptions {
            node_id: "rt1",
            store: store.path(),
            env: vec![
                ("ORFEAS_MODELS_DIR", models.path().display().to_string()),
                ("ORFEAS_NODE_SIMULATED_LATENCY_MS", "300".into()),
            ],
        },
    )
    .await;
    eventually("ready", WAIT, || async {
        (http_get(node.http_port, "/readyz").0 == 200).then_some(())
    })
    .await;
    let (_, text) = http_get(node.http_port, "/metrics");
    for model in ["null", "relief"] {
        assert!(
            metric(
                &text,
                &format!("orfeas_model_warmup_seconds{{device=\"cpu\",model=\"{model}\"}}")
            ) > 0.0,
            "warm-up of {model} exported"
        );
        assert!(
            metric(
                &text,
                &format!("orfeas_model_load_seconds{{device=\"cpu\",model=\"{model}\"}}")
            ) > 0.0,
            "load of {model} exported"
        );
    }
    assert!(
        node.log_text().contains("model loaded and warm"),
        "load and warm-up times are logged"
    );

    // list_models: a raw request, answered by the node in the queue group.
    let raw = async_nats::connect(&nats.url).await.unwrap();
    let answer = raw
        .request(
            subjects::MODELS_LIST,
            orfeas_wire::to_cbor(&ListModels {}).into(),
        )
        .await
        .unwrap();
    let list: ModelList = orfeas_wire::from_cbor(&answer.payload).unwrap();
    assert_eq!(list.node, "rt1");
    let names: Vec<&str> = list.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["null", "relief"]);
    let relief = &list.models[1];
    assert_eq!(relief.preprocess, "full_frame");
    let params: Vec<(&str, f64, bool)> = relief
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.default, p.boolean))
        .collect();
    assert_eq!(
        params,
        [
            ("base_thickness", 0.1, false),
            ("max_height", 0.3, false),
            ("invert", 0.0, true)
        ]
    );
    // ... and the CLI prints it.
    let out = orfeas(&["models", "--nats", &nats.url]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("node rt1")
            && stdout.contains("relief")
            && stdout.contains("max_height=0.3 invert=false"),
        "{stdout}"
    );

    // Relief parameters flow from the job into the forward pass.
    let (mut client, _) = agent(&nats.url, "alice").await;
    let flat = job(
        "relief",
        "apple-512.png",
        BTreeMap::from([("max_height".to_string(), 0.05)]),
    );
    let tall = job(
        "relief",
        "apple-512.png",
        BTreeMap::from([
            ("max_height".to_string(), 0.6),
            ("base_thickness".to_string(), 0.2),
        ]),
    );
    let mut flat_events = client.submit(&flat).await.unwrap();
    let mut tall_events = client.submit(&tall).await.unwrap();
    let flat_mesh = outcome(&mut client, &mut flat_events)
        .await
        .expect("flat relief");
    let tall_mesh = outcome(&mut client, &mut tall_events)
        .await
        .expect("tall relief");
    assert!(
        tall_mesh.volume > 2.0 * flat_mesh.volume,
        "tall {} vs flat {}",
        tall_mesh.volume,
        flat_mesh.volume
    );
    let unknown = job(
        "relief",
        "apple-512.png",
        BTreeMap::from([("depth".to_string(), 1.0)]),
    );
    let mut events = client.submit(&unknown).await.unwrap();
    let refused = outcome(&mut client, &mut events).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::Invalid);
    assert!(refused.error.contains("\"depth\""), "{}", refused.error);

    // Reload while jobs are queued: every job completes, the new version is served.
    edit(
        &models.path().join("null/manifest.toml"),
        "version = \"1.0.0\"",
        "version = \"1.0.1\"",
    );
    let mut queued = Vec::new();
    for _ in 0..6 {
        let submit = job("null", "mug.png", BTreeMap::new());
        queued.push(client.submit(&submit).await.unwrap());
    }
    let port = node.http_port;
    let (status, body) =
        tokio::task::spawn_blocking(move || http_post(port, "/admin/models/reload"))
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    let loaded = reply["loaded"].as_array().unwrap();
    assert!(
        loaded
            .iter()
            .any(|m| m["model"] == "null" && m["version"] == "1.0.1" && m["device"] == "cpu"),
        "{body}"
    );
    for events in &mut queued {
        let mesh = outcome(&mut client, events)
            .await
            .expect("a job queued across the reload completes");
        assert!(mesh.closed_manifold);
    }
    let out = orfeas(&["models", "--nats", &nats.url, "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let null = listed["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "null")
        .cloned()
        .unwrap();
    assert_eq!(
        null["version"], "1.0.1",
        "list_models shows the reloaded manifest"
    );
    let (_, text) = http_get(node.http_port, "/metrics");
    assert_eq!(
        metric(&text, "orfeas_model_reloads_total{outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        http_get(node.http_port, "/readyz").0,
        200,
        "ready again after the reload"
    );

    // A change admission depends on needs a restart: refused, nothing swapped.
    edit(
        &models.path().join("relief/manifest.toml"),
        "invert = false",
        "negative = false",
    );
    let (status, body) =
        tokio::task::spawn_blocking(move || http_post(port, "/admin/models/reload"))
            .await
            .unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("restart"), "{body}");
    let (_, text) = http_get(node.http_port, "/metrics");
    assert_eq!(
        metric(&text, "orfeas_model_reloads_total{outcome=\"ok\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_readiness_waits_for_every_device_to_be_warm() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    // A node creates the streams and consumers readiness also checks.
    let _node = NodeProcess::start(
        &nats,
        NodeOptions {
            node_id: "ready1",
            store: store.path(),
            env: vec![],
        },
    )
    .await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let warmth = orfeas_actors::warmth::Warmth::new(["cuda0".to_string(), "cuda1".to_string()]);
    let health = orfeas_actors::http::Health::new(client, warmth.clone());
    health.set_warm(true);
    assert_eq!(
        health.not_ready().await.as_deref(),
        Some("models not loaded and warm on cuda0, cuda1")
    );
    warmth.set("cuda0", true);
    assert_eq!(
        health.not_ready().await.as_deref(),
        Some("models not loaded and warm on cuda1")
    );
    warmth.set("cuda1", true);
    assert_eq!(
        health.not_ready().await,
        None,
        "ready once every device is warm"
    );
}
