//! Pipeline models through a real `orfeas serve` and a real nats-server:
//! the tiny Hunyuan3D-2.1-like model (encode → 8 flow-matching steps →
//! latent-set decode) samples jobs by step-level batching with per-step
//! progress and stops a canceled job at a step boundary; the tiny
//! TripoSR-like model (feed-forward, with a colour stage) colours the GLB
//! from the model rather than from the image.

mod common;

use std::time::{Duration, Instant};

use common::{agent, assert_closed, glb_colours, glb_triangles, NatsServer, NodeOptions, NodeProcess};
use orfeas_wire::{
    v1::{EventKind, Format, ImageInput, Stage, SubmitJob},
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
