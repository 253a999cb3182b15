//! The main path through real parts: a signed PNG on JetStream → the actor
//! tree of a real `orfeas serve` process → libtorch → mesh → object store →
//! signed events back. And the first line of defence: a tampered message
//! gets a structured rejection and no output, and the node keeps serving.

mod common;

use std::time::Duration;

use common::{agent, assert_closed, glb_triangles, trimesh_check, NatsServer, NodeOptions, NodeProcess};
use orfeas_wire::{
    v1::{EventKind, Format, ImageInput, Stage, SubmitJob},
    ErrorCode,
};

const WAIT: Duration = Duration::from_secs(120);

fn job(image: &str, formats: Vec<Format>) -> SubmitJob {
    common::example_job(image, formats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_signed_png_completes_with_closed_mesh_then_tampered_is_rejected() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let _node = NodeProcess::start(&nats, NodeOptions { node_id: "n1", store: store.path(), env: vec![] }).await;
    let (mut client, key) = agent(&nats.url, "alice").await;

    // 1. A signed PNG completes with a closed mesh in GLB and STL.
    let submit = job("mug.png", vec![Format::Glb, Format::Stl]);
    let mut events = client.submit(&submit).await.unwrap();
    let mut seen = Vec::new();
    let mut stages = Vec::new();
    let completed = loop {
        let event = client.next_event(&mut events, WAIT).await.expect("verified event");
        assert_eq!(event.job_id, submit.job_id);
        assert_eq!(event.node, "n1");
        assert!(!seen.contains(&event.seq), "seq {} seen twice", event.seq);
        seen.push(event.seq);
        match event.kind {
            EventKind::Completed { results, mesh, report, previews } => break (results, mesh, report, previews),
            EventKind::Failed(f) | EventKind::Rejected(f) => panic!("job failed: {f:?}"),
            EventKind::Accepted { .. } => assert_eq!(event.seq, 0, "accepted is seq 0"),
            EventKind::Progress { stage, percent, .. } => {
                assert!(percent <= 100);
                stages.push(stage);
                assert!(event.seq > 0);
            }
        }
    };
    let (results, mesh, report, previews) = completed;
    let report = report.expect("a printability report");
    assert!(report.closed && report.two_manifold && report.winding_consistent, "{report:?}");
    assert!(report.volume_mm3 > 0.0 && report.fits_build_volume);
    assert_eq!(previews.len(), 4, "four preview renders by default");
    for p in &previews {
        let png = std::fs::read(p.url.strip_prefix("file://").unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{} is a PNG", p.view);
    }
    assert!(seen.contains(&0), "accepted was published");
    // Progress events of one attempt come from one publisher, in order, and
    // the final answer carries the highest seq.
    let progress: Vec<u64> = seen.iter().copied().filter(|&s| s > 0).collect();
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "progress seqs increase: {progress:?}");
    assert!(progress.len() >= 3, "progress…, completed: got {progress:?}");
    // Every stage once, in pipeline order (the progress helper fills in any a
    // stage skipped).
    assert_eq!(stages, vec![Stage::Queued, Stage::Preprocessing, Stage::Inference, Stage::Meshing, Stage::Exporting, Stage::Storing]);
    assert!(mesh.closed_manifold, "node reports a closed manifold: {mesh:?}");
    assert!(mesh.volume > 0.0);
    assert_eq!(results.len(), 2);
    let glb_file = results.iter().find(|r| r.format == Format::Glb).expect("glb result");
    let glb = std::fs::read(glb_file.url.strip_prefix("file://").unwrap()).unwrap();
    assert_eq!(glb.len() as u64, glb_file.bytes);
    let (positions, triangles) = glb_triangles(&glb);
    assert_eq!(triangles.len() as u64, mesh.faces);
    assert_closed(&positions, &triangles);
    let stl_file = results.iter().find(|r| r.format == Format::Stl).expect("stl result");
    let stl = std::fs::read(stl_file.url.strip_prefix("file://").unwrap()).unwrap();
    let stl_faces = u32::from_le_bytes(stl[80..84].try_into().unwrap()) as usize;
    assert_eq!(stl.len(), 84 + 50 * stl_faces);
    assert_eq!(stl_faces as u64, mesh.faces);
    // An independent implementation agrees: both files are watertight,
    // consistently wound, with positive volume and the same face count.
    for file in [glb_file, stl_file] {
        let verdict = trimesh_check(std::path::Path::new(file.url.strip_prefix("file://").unwrap()));
        assert!(verdict.watertight && verdict.winding_consistent, "{:?}: {verdict:?}", file.format);
        assert!(verdict.volume > 0.0, "{:?}: {verdict:?}", file.format);
        assert_eq!(verdict.faces, mesh.faces, "{:?}", file.format);
    }

    // 2. One flipped byte inside the signed payload: 401 bad_signature, no files.
    let tampered_job = job("star.png", vec![Format::Glb]);
    let (subject, mut bytes) = tampered_job.seal("alice", &key, "orfeas", now_s(), 300);
    let at = bytes.windows(7).position(|w| w == b"inflate").unwrap();
    bytes[at] ^= 0x20; // "Inflate": still decodes, no longer verifies
    let mut events = client.publish_raw(&tampered_job.job_id, subject, bytes).await.unwrap();
    let event = client.next_event(&mut events, WAIT).await.unwrap();
    match event.kind {
        EventKind::Rejected(f) => {
            assert_eq!(f.code, ErrorCode::BadSignature);
            assert_eq!(f.status, 401);
            assert!(!f.retryable);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let job_dir = store.path().join("jobs/alice").join(tampered_job.job_id.to_string());
    assert!(!job_dir.exists(), "a rejected message produced files");

    // 3. The node is still serving: an image without alpha (background keyed
    //    out from the border) completes.
    let star = job("star.png", vec![Format::Stl]);
    let mut events = client.submit(&star).await.unwrap();
    loop {
        match client.next_event(&mut events, WAIT).await.unwrap().kind {
            EventKind::Completed { mesh, .. } => {
                assert!(mesh.closed_manifold);
                break;
            }
            EventKind::Failed(f) | EventKind::Rejected(f) => panic!("star failed: {f:?}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_bad_inputs_get_their_codes_and_resubmission_is_idempotent() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let _node = NodeProcess::start(&nats, NodeOptions { node_id: "n2", store: store.path(), env: vec![] }).await;
    let (mut client, _key) = agent(&nats.url, "bob").await;

    let first_event = |kind: EventKind| match kind {
        EventKind::Rejected(f) | EventKind::Failed(f) => f.code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Unknown model.
    let mut unknown = job("mug.png", vec![]);
    unknown.model = "no-such-model".into();
    let mut events = client.submit(&unknown).await.unwrap();
    assert_eq!(first_event(client.next_event(&mut events, WAIT).await.unwrap().kind), ErrorCode::UnknownModel);
    // Bytes that are not the declared image type.
    let mut garbage = job("mug.png", vec![]);
    garbage.image = ImageInput::Inline { media_type: "image/png".into(), data: b"GIF89a not a png".to_vec() };
    let mut events = client.submit(&garbage).await.unwrap();
    assert_eq!(first_event(client.next_event(&mut events, WAIT).await.unwrap().kind), ErrorCode::InvalidImage);

    // Same job id, same request twice: one job, one completion.
    let once = job("mug.png", vec![Format::Stl]);
    let mut events = client.submit(&once).await.unwrap();
    let _again = client.submit(&once).await.unwrap();
    let mut completions = 0;
    loop {
        match client.next_event(&mut events, WAIT).await.unwrap().kind {
            EventKind::Completed { .. } => {
                completions += 1;
                break;
            }
            EventKind::Failed(f) | EventKind::Rejected(f) => panic!("{f:?}"),
            _ => {}
        }
    }
    assert_eq!(completions, 1);
    // Same id, different request: conflict, and the finished job is untouched.
    let mut changed = once.clone();
    changed.formats = vec![Format::Glb];
    let mut events = client.submit(&changed).await.unwrap();
    assert_eq!(first_event(client.next_event(&mut events, WAIT).await.unwrap().kind), ErrorCode::Conflict);
    let store_dir = store.path().join("jobs/bob").join(once.job_id.to_string());
    assert!(store_dir.join("model.stl").exists());
    assert!(!store_dir.join("model.glb").exists(), "the conflicting request must not run");
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}
