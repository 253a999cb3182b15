//! Pipeline models through a real `orfeas serve` and a real nats-server:
//! the tiny Hunyuan3D-2.1-like model (encode → 8 flow-matching steps →
//! latent-set decode) samples jobs by step-level batching with per-step
//! progress and stops a canceled job, or one whose deadline passes while
//! it samples, at a step boundary; the tiny
//! TripoSR-like model (feed-forward, with a colour stage) colours the GLB
//! from the model rather than from the image.

mod common;

use std::time::{Duration, Instant};

use common::{agent, assert_closed, cluster::stored_events, eventually, glb_colours, glb_triangles, ledger::Ledger, NatsServer, NodeOptions, NodeProcess};
use orfeas_wire::{
    v1::{EventKind, Format, ImageInput, JobParams, Stage, SubmitJob},
    ErrorCode,
};

const WAIT: Duration = Duration::from_secs(120);

fn job(model: &str, png: Vec<u8>) -> SubmitJob {
    SubmitJob {
        job_id: uuid::Uuid::now_v7(),
        model: model.into(),
        image: ImageInput::Inline { media_type: "image/png".into(), data: png },
        formats: vec![Format::Glb],
        params: Default::default(),
    }
}

/// An opaque pure-red square on a transparent background.
fn red_square() -> Vec<u8> {
    let img = image::RgbaImage::from_fn(96, 96, |x, y| if (20..76).contains(&x) && (20..76).contains(&y) { image::Rgba([255, 0, 0, 255]) } else { image::Rgba([0, 0, 0, 0]) });
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    png.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_sample_by_step_report_steps_cancel_at_a_boundary_and_colour_from_the_model() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(
        &nats,
        NodeOptions {
            node_id: "p1",
            store: store.path(),
            env: vec![
                ("ORFEAS_MODELS_DIR", common::repo().join("models/testing").display().to_string()),
                ("ORFEAS_MODELS_ENABLED", "hunyuan-tiny, triposr-tiny".into()),
                // 8 steps of 50 ms: long enough to cancel in the middle.
                ("ORFEAS_NODE_SIMULATED_STEP_LATENCY_MS", "50".into()),
            ],
        },
    )
    .await;
    let (mut alice, _) = agent(&nats.url, "alice").await;

    // 1. Three sampling jobs submitted together: each completes with a closed
    //    mesh, after per-step inference progress with an ETA that shrinks.
    let jobs: Vec<SubmitJob> = (0..3).map(|_| job("hunyuan-tiny", common::example("mug.png"))).collect();
    let mut streams = Vec::new();
    for j in &jobs {
        streams.push(alice.submit(j).await.unwrap());
    }
    for (j, events) in jobs.iter().zip(streams.iter_mut()) {
        let mut inference = Vec::new();
        let results = loop {
            let event = alice.next_event(events, WAIT).await.expect("verified event");
            match event.kind {
                EventKind::Completed { results, mesh, .. } => {
                    assert!(mesh.closed_manifold, "{mesh:?}");
                    break results;
                }
                EventKind::Failed(f) | EventKind::Rejected(f) => panic!("{}: {f:?}\n{}", j.job_id, node.log_text()),
                EventKind::Progress { stage: Stage::Inference, percent, eta_ms } => inference.push((percent, eta_ms)),
                _ => {}
            }
        };
        assert!(inference.len() >= 4, "one progress event per step or so, got {inference:?}");
        assert!(inference.windows(2).all(|w| w[0].0 < w[1].0), "percent rises: {inference:?}");
        let etas: Vec<u64> = inference.iter().skip(1).filter_map(|(_, eta)| *eta).collect();
        assert!(etas.len() >= 3 && etas.first() > etas.last(), "the ETA shrinks as steps are done: {inference:?}");
        let glb = std::fs::read(results[0].url.strip_prefix("file://").unwrap()).unwrap();
        let (positions, triangles) = glb_triangles(&glb);
        assert_closed(&positions, &triangles);
    }

    // 2. Cancel in the middle of sampling: the job ends canceled at a step
    //    boundary, well before its remaining steps would have run.
    let canceled = job("hunyuan-tiny", common::example("mug.png"));
    let mut events = alice.submit(&canceled).await.unwrap();
    loop {
        let event = alice.next_event(&mut events, WAIT).await.expect("verified event");
        match event.kind {
            // A percent past the stage's start: at least one step is done.
            EventKind::Progress { stage: Stage::Inference, percent, .. } if percent > 30 => break,
            EventKind::Completed { .. } | EventKind::Failed(_) => panic!("ended before it was canceled: {event:?}"),
            _ => {}
        }
    }
    let asked = Instant::now();
    let status = alice.cancel(&canceled.job_id, WAIT).await.unwrap();
    assert!(status.cancel_requested || status.state == "canceled", "{status:?}");
    let failure = loop {
        let event = alice.next_event(&mut events, WAIT).await.expect("verified event");
        match event.kind {
            EventKind::Failed(f) => break f,
            EventKind::Completed { .. } => panic!("a canceled job completed:\n{}", node.log_text()),
            _ => {}
        }
    };
    assert_eq!(failure.code, ErrorCode::Canceled, "{failure:?}");
    assert!(asked.elapsed() < Duration::from_secs(30), "stopped at a step, not after a whole run");
    assert!(node.log_text().contains("step boundary") || failure.error.contains("step boundary"), "stopped by the sampler: {failure:?}");

    // 3. The feed-forward model's colour stage colours the GLB: a pure red
    //    image would give red vertices if colours came from the image.
    let red = job("triposr-tiny", red_square());
    let mut events = alice.submit(&red).await.unwrap();
    let results = loop {
        let event = alice.next_event(&mut events, WAIT).await.expect("verified event");
        match event.kind {
            EventKind::Completed { results, .. } => break results,
            EventKind::Failed(f) | EventKind::Rejected(f) => panic!("{f:?}\n{}", node.log_text()),
            _ => {}
        }
    };
    let glb = std::fs::read(results[0].url.strip_prefix("file://").unwrap()).unwrap();
    let colours = glb_colours(&glb).expect("COLOR_0");
    let reddish = colours.iter().filter(|c| c[0] > 0.9 && c[1] < 0.1 && c[2] < 0.1).count();
    assert!(reddish < colours.len() / 10, "{reddish} of {} vertices are image red: colours came from the image", colours.len());
    let spread = colours.iter().map(|c| c[1]).fold(f32::MIN, f32::max) - colours.iter().map(|c| c[1]).fold(f32::MAX, f32::min);
    assert!(spread > 0.01, "the model's colours vary over the surface");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_a_deadline_passing_mid_sampling_stops_the_job_at_a_step_boundary_and_its_batch_mates_finish() {
    // 8 steps of 750 ms: 6 s of sampling, so a deadline 3.5 s after submit
    // passes in the middle (starting takes well under a second here).
    const STEP_MS: u64 = 750;
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(
        &nats,
        NodeOptions {
            node_id: "p-deadline",
            store: store.path(),
            env: vec![
                ("ORFEAS_MODELS_DIR", common::repo().join("models/testing").display().to_string()),
                ("ORFEAS_MODELS_ENABLED", "hunyuan-tiny".into()),
                ("ORFEAS_NODE_SIMULATED_STEP_LATENCY_MS", STEP_MS.to_string()),
            ],
        },
    )
    .await;
    let (mut bob, _) = agent(&nats.url, "bob").await;

    // 1. A job with no deadline is sampling: the running set the others join.
    let first = job("hunyuan-tiny", common::example("mug.png"));
    let mut first_events = bob.submit(&first).await.unwrap();
    loop {
        let event = bob.next_event(&mut first_events, WAIT).await.expect("verified event");
        match event.kind {
            EventKind::Progress { stage: Stage::Inference, percent, .. } if percent > 30 => break,
            EventKind::Completed { .. } | EventKind::Failed(_) => panic!("ended before the others joined: {event:?}"),
            _ => {}
        }
    }

    // 2. Two more join it: one that must be done 3.5 s from now, one without a deadline.
    let mut late = job("hunyuan-tiny", common::example("mug.png"));
    late.params = JobParams { deadline_ms: Some(orfeas_actors::now_ms() + 3_500), ..Default::default() };
    let mate = job("hunyuan-tiny", common::example("mug.png"));
    let submitted = Instant::now();
    let mut late_events = bob.submit(&late).await.unwrap();
    let mut mate_events = bob.submit(&mate).await.unwrap();
    let mut steps_done = 0;
    let (failure, failed_seq) = loop {
        let event = bob.next_event(&mut late_events, WAIT).await.expect("verified event");
        match event.kind {
            EventKind::Progress { stage: Stage::Inference, percent, .. } if percent > 30 => steps_done += 1,
            EventKind::Failed(f) => break (f, event.seq),
            EventKind::Completed { .. } => panic!("a job past its deadline completed:\n{}", node.log_text()),
            _ => {}
        }
    };
    let took = submitted.elapsed();
    assert_eq!(failure.code, ErrorCode::DeadlineExceeded, "the same stable code as before a job starts: {failure:?}");
    assert!(steps_done >= 1 && failure.error.contains("while sampling") && failure.error.contains("step boundary"), "it was sampling when it stopped ({steps_done} steps seen): {failure:?}\n{}", node.log_text());
    assert!(took < Duration::from_millis(3_500 + 2 * STEP_MS + 2_000), "stopped within a step of its deadline, not after its 8 steps: {took:?}");

    // 3. Its batch mates are unaffected: both complete with closed meshes.
    for (j, events) in [(&first, &mut first_events), (&mate, &mut mate_events)] {
        let results = loop {
            let event = bob.next_event(events, WAIT).await.expect("verified event");
            match event.kind {
                EventKind::Completed { results, mesh, .. } => {
                    assert!(mesh.closed_manifold, "{mesh:?}");
                    break results;
                }
                EventKind::Failed(f) | EventKind::Rejected(f) => panic!("{}: {f:?}\n{}", j.job_id, node.log_text()),
                _ => {}
            }
        };
        let glb = std::fs::read(results[0].url.strip_prefix("file://").unwrap()).unwrap();
        let (positions, triangles) = glb_triangles(&glb);
        assert_closed(&positions, &triangles);
    }

    // 4. The record is final with that one answer, and the event history
    //    holds exactly one terminal event per job.
    let (client, id) = (&bob, late.job_id);
    let status = eventually("the record of the expired job is final", WAIT, || async move {
        client.status(&id, WAIT).await.ok().filter(|s| s.state == "failed")
    })
    .await;
    assert_eq!(status.terminal, Some(EventKind::Failed(failure.clone())), "{status:?}");
    assert_eq!(status.terminal_seq, failed_seq);
    let js = async_nats::jetstream::new(orfeas_actors::bus::connect(&nats.url, "orfeas-test").await.unwrap());
    let attempted = [first.job_id, late.job_id, mate.job_id].into_iter().collect();
    let events = stored_events(&js, "bob").await.expect("the events stream");
    let ledger = Ledger::of(&attempted, &events.into_iter().map(|(id, l)| (id, l.into_iter().map(|(e, _)| e).collect())).collect());
    ledger.assert_clean();
    assert_eq!((ledger.accepted, ledger.terminal, ledger.completed), (3, 3, 2), "{ledger:?}");
}
