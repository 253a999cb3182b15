//! Images submitted by reference against a real nats-server and a real
//! node: uploaded to the JetStream object store `orfeas_uploads` or put in
//! the node's object store under `uploads/<agent>/`, fetched by the node
//! that runs the job with a size bound, checked against the signed size and
//! sha256 before any decode. A job by reference makes the same mesh as the
//! same image inline; a wrong digest, a size lie or a missing object fails
//! the job with its code and stores nothing; another agent's prefix is
//! refused at the door (403); the Python client uploads and submits too.

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::{agent, NatsServer, NodeOptions, NodeProcess};
use orfeas_wire::{
    client::AgentClient,
    subjects,
    v1::{Event, EventKind, Failure, ImageInput, RefStore, SubmitJob},
    ErrorCode,
};
use sha2::Digest;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// A `null`-model job for the bundled mug with `image`.
fn job(image: ImageInput) -> SubmitJob {
    let mut job = common::example_job("mug.png", vec![]);
    job.model = "null".into();
    job.image = image;
    job
}

/// Submit and follow to the terminal event.
async fn run(client: &mut AgentClient, job: &SubmitJob) -> Event {
    let mut events = client.submit(job).await.unwrap();
    loop {
        let event = client.next_event(&mut events, WAIT).await.unwrap();
        assert_eq!(event.job_id, job.job_id);
        if event.kind.is_terminal() {
            return event;
        }
    }
}

fn failure(event: &Event) -> &Failure {
    match &event.kind {
        EventKind::Failed(f) | EventKind::Rejected(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// The mesh facts and the stored files' digests of a completed job.
fn outcome(event: &Event) -> (orfeas_wire::v1::MeshStats, Vec<String>) {
    let EventKind::Completed { results, mesh, .. } = &event.kind else { panic!("expected completed, got {:?}", event.kind) };
    (mesh.clone(), results.iter().map(|r| r.sha256.clone()).collect())
}

fn stored_anything(store: &Path, job_id: &Uuid) -> bool {
    store.join("jobs/alice").join(job_id.to_string()).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_reference_jobs_fetch_check_and_fail_precisely() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let _node = NodeProcess::start(&nats, NodeOptions { node_id: "n1", store: store.path(), env: vec![("ORFEAS_MODELS_ENABLED", "null".into())] }).await;
    let (mut alice, alice_key) = agent(&nats.url, "alice").await;
    let mug = common::example("mug.png");

    // Inline first: the reference to compare against.
    let inline = run(&mut alice, &job(ImageInput::Inline { media_type: "image/png".into(), data: mug.clone() })).await;
    let want = outcome(&inline);

    // JetStream object store: same mesh, same files.
    let image = alice.upload("mug.png", "image/png", &mug).await.unwrap();
    let ImageInput::Ref { key, size, sha256, .. } = &image else { panic!("{image:?}") };
    assert_eq!((key.as_str(), *size), ("alice/mug.png", mug.len() as u64));
    assert_eq!(sha256.as_slice(), sha2::Sha256::digest(&mug).as_slice());
    let by_ref = run(&mut alice, &job(image.clone())).await;
    assert_eq!(outcome(&by_ref), want, "by reference makes the same mesh as inline");

    // The node's object store under uploads/alice/: same again.
    let local = ImageInput::by_reference("alice", RefStore::ObjectStore, "mug.png", "image/png", &mug);
    let ImageInput::Ref { key: local_key, .. } = &local else { unreachable!() };
    assert_eq!(local_key, "uploads/alice/mug.png");
    std::fs::create_dir_all(store.path().join("uploads/alice")).unwrap();
    std::fs::write(store.path().join(local_key), &mug).unwrap();
    assert_eq!(outcome(&run(&mut alice, &job(local.clone())).await), want);

    // A wrong sha256: failed, input_mismatch, nothing stored.
    let with = |image: &ImageInput, edit: &dyn Fn(&mut Vec<u8>, &mut u64, &mut String)| {
        let mut image = image.clone();
        let ImageInput::Ref { sha256, size, key, .. } = &mut image else { unreachable!() };
        edit(sha256, size, key);
        image
    };
    for (what, image) in [
        ("jetstream", with(&image, &|sha, _, _| sha[0] ^= 1)),
        ("object store", with(&local, &|sha, _, _| sha[31] ^= 1)),
    ] {
        let job = job(image);
        let event = run(&mut alice, &job).await;
        let f = failure(&event);
        assert!(matches!(event.kind, EventKind::Failed(_)), "{what}: {event:?}");
        assert_eq!((f.code, f.status, f.retryable), (ErrorCode::InputMismatch, 422, false), "{what}: {f:?}");
        assert!(f.error.contains("sha256"), "{what}: {}", f.error);
        assert!(!stored_anything(store.path(), &job.job_id), "{what}: a mismatched job stored files");
    }

    // A size lie, larger and smaller than the object: failed, input_mismatch.
    for (what, image) in [
        ("larger", with(&image, &|_, size, _| *size += 1)),
        ("smaller", with(&image, &|_, size, _| *size -= 1)),
        ("object store, smaller", with(&local, &|_, size, _| *size -= 1)),
    ] {
        let job = job(image);
        let event = run(&mut alice, &job).await;
        let f = failure(&event);
        assert!(matches!(event.kind, EventKind::Failed(_)), "{what}: {event:?}");
        assert_eq!(f.code, ErrorCode::InputMismatch, "{what}: {f:?}");
        assert!(f.error.contains("size"), "{what}: {}", f.error);
        assert!(!stored_anything(store.path(), &job.job_id), "{what}");
    }

    // A missing object: failed, input_missing, in either store.
    for (what, image) in [
        ("jetstream", with(&image, &|_, _, key| *key = "alice/nothing-here.png".into())),
        ("object store", with(&local, &|_, _, key| *key = "uploads/alice/nothing-here.png".into())),
    ] {
        let job = job(image);
        let event = run(&mut alice, &job).await;
        let f = failure(&event);
        assert!(matches!(event.kind, EventKind::Failed(_)), "{what}: {event:?}");
        assert_eq!((f.code, f.status, f.retryable), (ErrorCode::InputMissing, 404, false), "{what}: {f:?}");
        assert!(!stored_anything(store.path(), &job.job_id), "{what}");
    }

    // Another agent's upload: refused at the door (403), never fetched.
    let (mut bob, _) = agent(&nats.url, "bob").await;
    let bobs = bob.upload("mug.png", "image/png", &mug).await.unwrap();
    let mut other_bucket = image.clone();
    let ImageInput::Ref { bucket, .. } = &mut other_bucket else { unreachable!() };
    *bucket = Some(subjects::JOBS_BUCKET.into());
    for (what, image) in [
        ("bob's jetstream upload", bobs.clone()),
        ("bob's object store prefix", ImageInput::by_reference("bob", RefStore::ObjectStore, "mug.png", "image/png", &mug)),
        ("another bucket", other_bucket),
    ] {
        let job = job(image);
        let event = run(&mut alice, &job).await;
        let f = failure(&event);
        assert!(matches!(event.kind, EventKind::Rejected(_)), "{what}: {event:?}");
        assert_eq!((f.code, f.status), (ErrorCode::Forbidden, 403), "{what}: {f:?}");
    }
    // Bob's own reference works for bob.
    assert_eq!(outcome(&run(&mut bob, &job(bobs)).await), want);

    // The Python client: uploads with nats-py and submits by reference.
    let python = std::env::var("ORFEAS_PYTHON").expect("ORFEAS_PYTHON is not set: run the tests through `deploy/setup.sh --test`");
    let seed = alice_key.to_text().rsplit(':').next().unwrap().to_string();
    let path = common::repo().join("examples/mug.png");
    let out = Command::new(python)
        .arg(common::repo().join("examples/python/orfeas_client.py"))
        .args(["--nats", &nats.url, "--agent", "alice", "--seed-hex", &seed, "submit", path.to_str().unwrap(), "--model", "null", "--by-reference"])
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(out.status.success(), "{lines:?} {}", String::from_utf8_lossy(&out.stderr));
    let job_id = lines[0]["submitted"].as_str().unwrap().to_string();
    assert_eq!(lines[0]["uploaded"], format!("alice/{job_id}.png"));
    let last = &lines.last().unwrap()["event"];
    assert_eq!(last["job_id"], job_id.as_str());
    assert_eq!(last["kind"]["completed"]["mesh"]["faces"], want.0.faces, "{last}");
}
