//! Golden fixtures of protocol v1: fixed keys, claims and payloads sealed
//! into COSE_Sign1 bytes that are committed under `tests/fixtures/v1/`.
//! Ed25519 is deterministic, so sealing the same inputs must give the same
//! bytes; the committed bytes must open, verify and decode to the same
//! messages. A change that breaks either breaks compatibility with
//! deployed agents. Regenerate deliberately with `ORFEAS_BLESS=1`.

use std::path::PathBuf;

use orfeas_wire::{
    envelope::{self, Claims, ContentKind, Seal},
    subjects,
    v1::{self, Event, EventKind, Failure, Format, ImageInput, JobParams, MeshStats, ResultFile, Stage, SubmitJob},
    ErrorCode, SecretKey,
};
use uuid::Uuid;

/// The agent key of the test vector (seed 0x42 × 32).
fn agent_key() -> SecretKey {
    SecretKey::from_seed([0x42; 32])
}

/// The node key of the test vector (seed 0x07 × 32).
fn node_key() -> SecretKey {
    SecretKey::from_seed([0x07; 32])
}

fn claims(iss: &str) -> Claims {
    Claims { iss: iss.into(), aud: "orfeas".into(), iat: 1_700_000_000, exp: 1_700_000_300, cti: vec![0x11; 16] }
}

fn job_id() -> Uuid {
    Uuid::parse_str("01890a5d-ac96-774b-bcce-b302099a8057").unwrap()
}

fn submit_job() -> SubmitJob {
    SubmitJob {
        job_id: job_id(),
        model: "inflate".into(),
        // The first bytes of a PNG; the envelope does not look inside images.
        image: ImageInput::Inline { media_type: "image/png".into(), data: vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a] },
        formats: vec![Format::Glb, Format::Stl],
        params: JobParams { target_faces: Some(20_000), size_mm: Some(80.0), ..JobParams::default() },
    }
}

fn events() -> Vec<(&'static str, Event)> {
    let event = |seq, kind| Event { job_id: job_id(), seq, node: "node-a".into(), at_ms: 1_700_000_001_000, kind };
    vec![
        ("event_accepted", event(0, EventKind::Accepted { queue_position: 3, eta_ms: None })),
        ("event_progress", event(65_537, EventKind::Progress { stage: Stage::Inference, percent: 30, eta_ms: None })),
        (
            "event_completed",
            event(
                65_540,
                EventKind::Completed {
                    results: vec![ResultFile {
                        format: Format::Glb,
                        location: "jobs/alice/01890a5d-ac96-774b-bcce-b302099a8057/model.glb".into(),
                        url: "file:///var/lib/orfeas/results/jobs/alice/01890a5d-ac96-774b-bcce-b302099a8057/model.glb".into(),
                        bytes: 123_456,
                        sha256: "00".repeat(32),
                        parts: vec![],
                    }],
                    mesh: MeshStats { vertices: 10, faces: 16, closed_manifold: true, components: 1, volume: 0.5, bbox_min: [-1.0; 3], bbox_max: [1.0; 3] },
                    report: None,
                    previews: vec![],
                },
            ),
        ),
        ("event_failed", event(65_540, EventKind::Failed(Failure::new(ErrorCode::InvalidImage, "no foreground object found in the image")))),
        ("event_rejected", event(0, EventKind::Rejected(Failure::new(ErrorCode::BadSignature, "signature does not verify for key 0123456789abcdef")))),
    ]
}

fn sealed_submit() -> Vec<u8> {
    let job = submit_job();
    let events_subject = subjects::events("alice", &job.job_id);
    let c = claims("alice");
    let header = Seal { kind: ContentKind::SubmitJob, claims: &c, op: "submit", events_subject: Some(&events_subject) };
    envelope::seal(&header, orfeas_wire::to_cbor(&job), &subjects::submit("alice"), &agent_key())
}

fn sealed_event(event: &Event) -> Vec<u8> {
    let c = claims(&event.node);
    let header = Seal { kind: ContentKind::Event, claims: &c, op: "event", events_subject: None };
    envelope::seal(&header, orfeas_wire::to_cbor(event), &subjects::events("alice", &event.job_id), &node_key())
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1").join(format!("{name}.cbor"))
}

fn compare(name: &str, fresh: &[u8]) -> Vec<u8> {
    let path = fixture(name);
    if std::env::var_os("ORFEAS_BLESS").is_some() {
        std::fs::write(&path, fresh).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (ORFEAS_BLESS=1 writes it)", path.display()));
    assert_eq!(hex::encode(&committed), hex::encode(fresh), "{name}: sealing the fixed inputs no longer gives the committed bytes");
    committed
}

#[test]
fn golden_submit_job_is_stable_and_verifies() {
    let committed = compare("submit_job", &sealed_submit());
    let opened = envelope::open(&committed, v1::MAX_SUBMIT_BYTES, ContentKind::SubmitJob).unwrap();
    opened.verify(&agent_key().public(), "orfeas.jobs.submit.alice").unwrap();
    opened.check_claims("orfeas", 1_700_000_100, 60, v1::MAX_LIFETIME_S).unwrap();
    assert_eq!(opened.claims, claims("alice"));
    assert_eq!(opened.op, "submit");
    assert_eq!(opened.events_subject.as_deref(), Some("orfeas.events.alice.01890a5d-ac96-774b-bcce-b302099a8057"));
    let job: SubmitJob = orfeas_wire::from_cbor(&opened.payload).unwrap();
    assert_eq!(job, submit_job());
    // Bound to its subject: the same bytes do not verify on another agent's subject.
    assert!(opened.verify(&agent_key().public(), "orfeas.jobs.submit.bob").is_err());
}

/// The same job with its image by reference (JetStream object store); the
/// inline fixture above is unchanged by the variant's addition.
fn submit_job_by_reference() -> SubmitJob {
    let image = ImageInput::Ref {
        media_type: "image/png".into(),
        store: v1::RefStore::Jetstream,
        bucket: None,
        key: "alice/mug.png".into(),
        sha256: vec![0xab; 32],
        size: 123_456,
    };
    SubmitJob { image, ..submit_job() }
}

#[test]
fn golden_submit_job_by_reference_is_stable_and_verifies() {
    let job = submit_job_by_reference();
    let events_subject = subjects::events("alice", &job.job_id);
    let c = claims("alice");
    let header = Seal { kind: ContentKind::SubmitJob, claims: &c, op: "submit", events_subject: Some(&events_subject) };
    let fresh = envelope::seal(&header, orfeas_wire::to_cbor(&job), &subjects::submit("alice"), &agent_key());
    let committed = compare("submit_job_by_reference", &fresh);
    let opened = envelope::open(&committed, v1::MAX_SUBMIT_BYTES, ContentKind::SubmitJob).unwrap();
    opened.verify(&agent_key().public(), "orfeas.jobs.submit.alice").unwrap();
    let back: SubmitJob = orfeas_wire::from_cbor(&opened.payload).unwrap();
    assert_eq!(back, job);
    assert!(back.image.check_ref("alice", v1::MAX_REF_IMAGE_BYTES).is_ok());
    assert_eq!(back.image.check_ref("bob", v1::MAX_REF_IMAGE_BYTES).unwrap_err().0, ErrorCode::Forbidden);
}

#[test]
fn golden_events_are_stable_and_verify() {
    for (name, event) in events() {
        let committed = compare(name, &sealed_event(&event));
        let opened = envelope::open(&committed, 1 << 20, ContentKind::Event).unwrap();
        opened.verify(&node_key().public(), &subjects::events("alice", &event.job_id)).unwrap();
        let back: Event = orfeas_wire::from_cbor(&opened.payload).unwrap();
        assert_eq!(back, event, "{name}");
        // A signed event never opens as a submission.
        assert!(envelope::open(&committed, 1 << 20, ContentKind::SubmitJob).is_err(), "{name}");
    }
}

#[test]
fn golden_test_vector_keys() {
    // Printed in md/protocol.md; a client in another language starts here.
    assert_eq!(agent_key().public().to_hex(), std::fs::read_to_string(fixture("agent_public_key").with_extension("hex")).unwrap().trim());
}

/// A request or batch sealed with the fixed claims of the test vector.
fn sealed_request(kind: ContentKind, op: &str, events_subject: Option<&str>, payload: Vec<u8>, subject: &str) -> Vec<u8> {
    let c = claims("alice");
    let header = Seal { kind, claims: &c, op, events_subject };
    envelope::seal(&header, payload, subject, &agent_key())
}

/// Open `committed` as `kind` on `subject`, check it is no other kind, and
/// decode its payload.
fn open_as<T: serde::de::DeserializeOwned>(name: &str, committed: &[u8], kind: ContentKind, subject: &str, op: &str) -> T {
    let opened = envelope::open(committed, v1::MAX_SUBMIT_BYTES, kind).unwrap_or_else(|e| panic!("{name}: {e}"));
    opened.verify(&agent_key().public(), subject).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!((opened.op.as_str(), &opened.claims), (op, &claims("alice")), "{name}");
    assert!(opened.verify(&agent_key().public(), "orfeas.status.bob").is_err(), "{name}: bound to its subject");
    for other in [ContentKind::SubmitJob, ContentKind::Event, ContentKind::FetchRequest, ContentKind::StatusRequest, ContentKind::CancelRequest, ContentKind::SubmitBatch] {
        if other != kind {
            assert!(envelope::open(committed, v1::MAX_SUBMIT_BYTES, other).is_err(), "{name} opened as {other:?}");
        }
    }
    orfeas_wire::from_cbor(&opened.payload).unwrap()
}

#[test]
fn golden_requests_and_batches_are_stable_and_verify() {
    let status = v1::StatusRequest { job_id: Some(job_id()), batch_id: None };
    let committed = compare("status_request", &sealed_request(ContentKind::StatusRequest, "status", None, orfeas_wire::to_cbor(&status), &subjects::status("alice")));
    assert_eq!(open_as::<v1::StatusRequest>("status_request", &committed, ContentKind::StatusRequest, &subjects::status("alice"), "status"), status);

    let batch_id = Uuid::parse_str("01890a5d-ac96-774b-bcce-b302099a8058").unwrap();
    let status = v1::StatusRequest { job_id: None, batch_id: Some(batch_id) };
    let committed = compare("status_request_batch", &sealed_request(ContentKind::StatusRequest, "status", None, orfeas_wire::to_cbor(&status), &subjects::status("alice")));
    assert_eq!(open_as::<v1::StatusRequest>("status_request_batch", &committed, ContentKind::StatusRequest, &subjects::status("alice"), "status"), status);

    let cancel = v1::CancelRequest { job_id: job_id() };
    let committed = compare("cancel_request", &sealed_request(ContentKind::CancelRequest, "cancel", None, orfeas_wire::to_cbor(&cancel), &subjects::cancel("alice")));
    assert_eq!(open_as::<v1::CancelRequest>("cancel_request", &committed, ContentKind::CancelRequest, &subjects::cancel("alice"), "cancel"), cancel);

    let fetch = v1::FetchRequest { job_id: job_id(), location: Some("jobs/alice/01890a5d-ac96-774b-bcce-b302099a8057/model.glb".into()), offset: 0, max_bytes: v1::MAX_FETCH_CHUNK };
    let committed = compare("fetch_request", &sealed_request(ContentKind::FetchRequest, "fetch", None, orfeas_wire::to_cbor(&fetch), &subjects::fetch("alice")));
    assert_eq!(open_as::<v1::FetchRequest>("fetch_request", &committed, ContentKind::FetchRequest, &subjects::fetch("alice"), "fetch"), fetch);

    let second = SubmitJob { job_id: Uuid::parse_str("01890a5d-ac96-774b-bcce-b302099a8059").unwrap(), ..submit_job() };
    let batch = v1::SubmitBatch { batch_id, jobs: vec![submit_job(), second] };
    let events = subjects::events("alice", &batch_id);
    let committed = compare("submit_batch", &sealed_request(ContentKind::SubmitBatch, "submit_batch", Some(&events), orfeas_wire::to_cbor(&batch), &subjects::submit("alice")));
    assert_eq!(open_as::<v1::SubmitBatch>("submit_batch", &committed, ContentKind::SubmitBatch, &subjects::submit("alice"), "submit_batch"), batch);
}

#[test]
fn golden_replies_are_stable_and_signed_replies_verify() {
    // A status reply: plain CBOR body, the node's detached signature in a header.
    let reply = v1::StatusReply::Job(v1::JobStatus {
        job_id: job_id(),
        state: "running".into(),
        lane: v1::Lane::Normal,
        attempt: 1,
        node: "node-a".into(),
        updated_at_ms: 1_700_000_001_000,
        cancel_requested: false,
        terminal: None,
        terminal_seq: 0,
        request: None,
    });
    let body = compare("status_reply", &orfeas_wire::to_cbor(&reply));
    // The admitted request, added later: absent above (the bytes of before), present here.
    let mut with_request = reply.clone();
    if let v1::StatusReply::Job(status) = &mut with_request {
        status.request = Some(v1::AdmittedRequest {
            model: "inflate".into(),
            formats: vec![v1::Format::Glb, v1::Format::Stl],
            params: v1::JobParams { target_faces: Some(20_000), size_mm: Some(80.0), ..Default::default() },
        });
    }
    let bytes = compare("status_reply_with_request", &orfeas_wire::to_cbor(&with_request));
    assert_eq!(orfeas_wire::from_cbor::<v1::StatusReply>(&bytes).unwrap(), with_request);
    let subject = subjects::status("alice");
    let signature = v1::seal_reply(&body, "node-a", &node_key(), "orfeas", "status", &subject, &[0x11; 16], 1_700_000_000);
    let committed = compare("status_reply_signature", &hex::decode(&signature).unwrap());
    let opened = v1::open_reply(&hex::encode(&committed), &body).unwrap();
    opened.verify(&node_key().public(), &subject).unwrap();
    assert_eq!((opened.claims.iss.as_str(), opened.claims.cti.as_slice(), opened.op.as_str()), ("node-a", &[0x11u8; 16][..], "status"));
    let mut changed = body.clone();
    *changed.last_mut().unwrap() ^= 1;
    assert!(v1::open_reply(&hex::encode(&committed), &changed).and_then(|o| o.verify(&node_key().public(), &subject)).is_err(), "the signature covers the body");
    assert_eq!(orfeas_wire::from_cbor::<v1::StatusReply>(&body).unwrap(), reply);

    // Unsigned answers: a fetch chunk (files are checked against the signed
    // manifest's SHA-256) and the model list (public configuration).
    let chunk = v1::FetchReply::Chunk { location: "jobs/alice/01890a5d-ac96-774b-bcce-b302099a8057/model.glb".into(), offset: 0, total_bytes: 4, data: b"glTF".to_vec() };
    let body = compare("fetch_reply_chunk", &orfeas_wire::to_cbor(&chunk));
    assert_eq!(orfeas_wire::from_cbor::<v1::FetchReply>(&body).unwrap(), chunk);
    let body = compare("list_models", &orfeas_wire::to_cbor(&v1::ListModels {}));
    assert_eq!(orfeas_wire::from_cbor::<v1::ListModels>(&body).unwrap(), v1::ListModels {});
}
