//! The bad-input suite against a real node: every region of the envelope
//! tampered, replays, clocks, audiences, subjects, keys, headers, CBOR
//! abuse, payload types, images and policy limits. Each case must get its
//! expected stable code in a `rejected` event, enqueue nothing, and leave
//! exactly one audit record; a well-behaved agent is served between the
//! cases; the node's memory stays bounded; the audit trail verifies, and a
//! record republished modified is caught while purge and delete are refused.

mod common;

use std::{collections::BTreeMap, time::Duration};

use async_nats::HeaderMap;
use ciborium::Value;
use common::{eventually, NatsServer, NodeOptions, NodeProcess};
use coset::{iana, CborSerializable, CoseSign1};
use futures::StreamExt;
use orfeas_actors::{
    audit::AuditRecord,
    bus::Bus,
    jobs::{JobRecord, JobState, JobStore},
    registry::{PolicyUpdate, Registry},
};
use orfeas_wire::{
    client::AgentClient,
    envelope::{self, Claims, ContentKind, Seal},
    subjects,
    v1::{EventKind, ImageInput, RefStore, SubmitJob, MAX_INLINE_IMAGE_BYTES, MAX_REF_IMAGE_BYTES},
    ErrorCode, SecretKey,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

fn now_s() -> u64 {
    orfeas_actors::now_ms() / 1000
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(width, height, |x, _| image::Rgba([200, 30, 30, if x > width / 4 { 255 } else { 0 }]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A PNG whose header declares `width` × `height` (valid CRC), and no pixels.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (len, chunk) in [(13u32, ihdr), (0, b"IDAT".to_vec()), (0, b"IEND".to_vec())] {
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn job(image: Vec<u8>) -> SubmitJob {
    SubmitJob { job_id: Uuid::now_v7(), model: "null".into(), image: ImageInput::Inline { media_type: "image/png".into(), data: image }, formats: vec![], params: Default::default() }
}

fn aad(subject: &str) -> Vec<u8> {
    let mut out = b"orfeas.v1\0".to_vec();
    out.extend_from_slice(subject.as_bytes());
    out
}

/// Seal `payload` with every header field chosen by the caller.
fn seal_raw(claims: &Claims, op: &str, events: Option<&str>, payload: Vec<u8>, aad_subject: &str, key: &SecretKey) -> Vec<u8> {
    envelope::seal(&Seal { kind: ContentKind::SubmitJob, claims, op, events_subject: events }, payload, aad_subject, key)
}

/// Change a sealed envelope's structure and sign it again (a well-signed
/// message with a bad header).
fn resign(bytes: &[u8], subject: &str, key: &SecretKey, change: impl FnOnce(&mut CoseSign1)) -> Vec<u8> {
    let mut sign1 = CoseSign1::from_slice(bytes).unwrap();
    change(&mut sign1);
    sign1.protected.original_data = None;
    let tbs = sign1.tbs_data(&aad(subject));
    sign1.signature = key.sign(&tbs).to_vec();
    sign1.to_vec().unwrap()
}

/// Replace the protected header's bytes with `protected` and sign again
/// (Sig_structure of RFC 9052 §4.4 built by hand, so any bytes can be signed).
fn resign_protected(bytes: &[u8], subject: &str, key: &SecretKey, protected: Vec<u8>) -> Vec<u8> {
    let mut sign1 = CoseSign1::from_slice(bytes).unwrap();
    let tbs = cbor(&Value::Array(vec![
        Value::Text("Signature1".into()),
        Value::Bytes(protected.clone()),
        Value::Bytes(aad(subject)),
        Value::Bytes(sign1.payload.clone().unwrap()),
    ]));
    sign1.protected.original_data = Some(protected);
    sign1.signature = key.sign(&tbs).to_vec();
    sign1.to_vec().unwrap()
}

/// Change a sealed envelope without signing again.
fn tamper(bytes: &[u8], change: impl FnOnce(&mut CoseSign1)) -> Vec<u8> {
    let mut sign1 = CoseSign1::from_slice(bytes).unwrap();
    change(&mut sign1);
    sign1.to_vec().unwrap()
}

fn cbor(value: &Value) -> Vec<u8> {
    orfeas_wire::to_cbor(value)
}

/// `job` as a CBOR map value, to edit field by field.
fn job_value(job: &SubmitJob) -> Vec<(Value, Value)> {
    let value: Value = orfeas_wire::from_cbor(&orfeas_wire::to_cbor(job)).unwrap();
    value.into_map().unwrap()
}

fn set(map: &mut Vec<(Value, Value)>, key: &str, value: Value) {
    map.retain(|(k, _)| k.as_text() != Some(key));
    map.push((Value::Text(key.into()), value));
}

struct Case {
    name: &'static str,
    /// Subject token the message is published under.
    token: String,
    bytes: Vec<u8>,
    code: ErrorCode,
    /// The job id the rejection names (nil when the payload cannot be read).
    job_id: Uuid,
}

struct Agent {
    name: String,
    key: SecretKey,
}

impl Agent {
    fn seal(&self, job: &SubmitJob) -> Vec<u8> {
        job.seal(&self.name, &self.key, "orfeas", now_s(), 300).1
    }

    fn claims(&self) -> Claims {
        Claims::new(&self.name, "orfeas", now_s(), 300)
    }

    fn subject(&self) -> String {
        subjects::submit(&self.name)
    }

    fn events(&self, job_id: &Uuid) -> String {
        subjects::events(&self.name, job_id)
    }

    /// A correctly sealed message over a raw payload.
    fn seal_payload(&self, payload: Vec<u8>, job_id: &Uuid) -> Vec<u8> {
        seal_raw(&self.claims(), "submit", Some(&self.events(job_id)), payload, &self.subject(), &self.key)
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_suite_each_case_rejected_once_audited_nothing_enqueued() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&nats, NodeOptions { node_id: "n1", store: store.path(), env: vec![("ORFEAS_MODELS_ENABLED", "null".into())] }).await;
    let client = orfeas_actors::bus::connect(&nats.url, "orfeas-test").await.unwrap();
    let bus = Bus::attach(client.clone()).await.unwrap();
    let registry = Registry::new(bus.agents.clone(), bus.nodes.clone());
    let jobs = JobStore::new(bus.jobs.clone());
    let js = async_nats::jetstream::new(client.clone());

    let register = |name: &str, policy: PolicyUpdate| {
        let registry = registry.clone();
        let name = name.to_string();
        async move {
            let key = SecretKey::generate();
            registry.add_agent(&name, &key.public().to_hex(), &policy).await.unwrap();
            Agent { name, key }
        }
    };
    let alice = register("alice", PolicyUpdate::default()).await;
    let bob = register("bob", PolicyUpdate::default()).await;
    let revoked = register("revoked", PolicyUpdate::default()).await;
    registry.revoke("revoked", None).await.unwrap();
    let reader = register("reader", PolicyUpdate { operations: Some(vec!["status".into()]), ..Default::default() }).await;
    let small = register("small", PolicyUpdate { max_image_bytes: Some(100), ..Default::default() }).await;
    let burst = register("burst", PolicyUpdate { requests_per_minute: Some(1), ..Default::default() }).await;
    let capped = register("capped", PolicyUpdate { max_concurrent: Some(1), ..Default::default() }).await;
    let good_key = SecretKey::generate();
    registry.add_agent_key("good", &good_key.public().to_hex()).await.unwrap();
    let mut good = AgentClient::new(client.clone(), "good", good_key, "orfeas");

    // Agent `capped` holds one unfinished job (a record as a node leaves it
    // while running; its slot taken).
    let held = Uuid::now_v7();
    let record = JobRecord {
        agent: "capped".into(),
        job_id: held,
        model: "null".into(),
        digest: "00".into(),
        state: JobState::Running,
        attempt: 1,
        node: "elsewhere".into(),
        updated_at_ms: orfeas_actors::now_ms(),
        terminal: None,
        terminal_seq: 0,
        lane: Default::default(),
        deadline_ms: None,
        cancel_requested: false,
        batch_id: None,
        request: None,
    };
    assert!(matches!(jobs.create(&record).await.unwrap(), orfeas_actors::jobs::Created::New(_)));
    bus.active.put("capped", orfeas_wire::to_cbor(&orfeas_actors::gate::ActiveJobs { jobs: vec![(held, orfeas_actors::now_ms())] }).into()).await.unwrap();

    let image = png(24, 24);
    let mut cases: Vec<Case> = Vec::new();
    let mut add = |name: &'static str, token: &str, bytes: Vec<u8>, code: ErrorCode, job_id: Uuid| cases.push(Case { name, token: token.into(), bytes, code, job_id });
    let nil = Uuid::nil();

    // --- The envelope, region by region.
    let j = job(image.clone());
    let sealed = alice.seal(&j);
    add(
        "payload byte flipped (inside the image)",
        "alice",
        tamper(&sealed, |s| {
            let payload = s.payload.as_mut().unwrap();
            let at = payload.windows(4).position(|w| w == b"IHDR").unwrap();
            payload[at + 12] ^= 1;
        }),
        ErrorCode::BadSignature,
        j.job_id,
    );
    let j = job(image.clone());
    add("signature byte flipped", "alice", tamper(&alice.seal(&j), |s| s.signature[5] ^= 1), ErrorCode::BadSignature, j.job_id);
    let j = job(image.clone());
    add("signature all zeros", "alice", tamper(&alice.seal(&j), |s| s.signature = vec![0; 64]), ErrorCode::BadSignature, j.job_id);
    let j = job(image.clone());
    add("signature truncated", "alice", tamper(&alice.seal(&j), |s| s.signature.truncate(63)), ErrorCode::BadSignature, j.job_id);
    let j = job(image.clone());
    add(
        "signature not canonical (S + L)",
        "alice",
        tamper(&alice.seal(&j), |s| {
            // L = 2^252 + 27742317777372353535851937790883648493, little endian.
            let l: [u8; 32] = [
                0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
            ];
            let mut carry = 0u16;
            for i in 0..32 {
                let sum = u16::from(s.signature[32 + i]) + u16::from(l[i]) + carry;
                s.signature[32 + i] = sum as u8;
                carry = sum >> 8;
            }
        }),
        ErrorCode::BadSignature,
        j.job_id,
    );
    let j = job(image.clone());
    add(
        "protected header byte changed (op submit → submiT)",
        "alice",
        tamper(&alice.seal(&j), |s| {
            let mut bytes = s.protected.original_data.clone().unwrap();
            // The op's value: text of length 6 (0x66), not the content type.
            let at = bytes.windows(7).position(|w| w == b"\x66submit").unwrap();
            bytes[at + 6] = b'T';
            s.protected.original_data = Some(bytes);
        }),
        ErrorCode::BadSignature,
        j.job_id,
    );
    let j = job(image.clone());
    add("unprotected header not empty", "alice", tamper(&alice.seal(&j), |s| s.unprotected.content_type = Some(coset::ContentType::Text("x".into()))), ErrorCode::Malformed, nil);
    let j = job(image.clone());
    add(
        "kid only in the unprotected header",
        "alice",
        resign(&alice.seal(&j), &alice.subject(), &alice.key, |s| {
            s.unprotected.key_id = std::mem::take(&mut s.protected.header.key_id);
        }),
        ErrorCode::Malformed,
        nil,
    );
    let j = job(image.clone());
    add(
        "alg only in the unprotected header",
        "alice",
        resign(&alice.seal(&j), &alice.subject(), &alice.key, |s| {
            s.unprotected.alg = s.protected.header.alg.take();
        }),
        ErrorCode::Malformed,
        nil,
    );
    let j = job(image.clone());
    add(
        "alg mismatch (ES256)",
        "alice",
        resign(&alice.seal(&j), &alice.subject(), &alice.key, |s| {
            s.protected.header.alg = Some(coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES256));
        }),
        ErrorCode::Malformed,
        nil,
    );
    let j = job(image.clone());
    add(
        "content type of an event",
        "alice",
        resign(&alice.seal(&j), &alice.subject(), &alice.key, |s| {
            s.protected.header.content_type = Some(coset::ContentType::Text("application/orfeas.event.v1+cbor".into()));
        }),
        ErrorCode::Malformed,
        nil,
    );
    let j = job(image.clone());
    add(
        "unknown content type",
        "alice",
        resign(&alice.seal(&j), &alice.subject(), &alice.key, |s| {
            s.protected.header.content_type = Some(coset::ContentType::Text("application/orfeas.submit-job.v9+cbor".into()));
        }),
        ErrorCode::Malformed,
        nil,
    );
    let j = job(image.clone());
    add(
        "operation header missing",
        "alice",
        resign(&alice.seal(&j), &alice.subject(), &alice.key, |s| s.protected.header.rest.retain(|(l, _)| *l != coset::Label::Text("orfeas.op".into()))),
        ErrorCode::Malformed,
        nil,
    );
    let j = job(image.clone());
    add(
        "CWT claims missing",
        "alice",
        resign(&alice.seal(&j), &alice.subject(), &alice.key, |s| s.protected.header.rest.retain(|(l, _)| *l != coset::Label::Int(15))),
        ErrorCode::Malformed,
        nil,
    );
    let j = job(image.clone());
    let sealed = alice.seal(&j);
    let mut protected: Vec<(Value, Value)> = orfeas_wire::from_cbor::<Value>(&CoseSign1::from_slice(&sealed).unwrap().protected.original_data.unwrap()).unwrap().into_map().unwrap();
    protected.push((Value::Text("orfeas.op".into()), Value::Text("submit".into())));
    add("duplicate protected header label", "alice", resign_protected(&sealed, &alice.subject(), &alice.key, cbor(&Value::Map(protected))), ErrorCode::Malformed, nil);
    let j = job(image.clone());
    let mut claims = alice.claims();
    claims.cti = vec![];
    add("empty nonce (cti)", "alice", seal_raw(&claims, "submit", Some(&alice.events(&j.job_id)), orfeas_wire::to_cbor(&j), &alice.subject(), &alice.key), ErrorCode::Malformed, nil);
    let j = job(image.clone());
    let mut claims = alice.claims();
    claims.cti = vec![0x5a; orfeas_wire::envelope::NONCE_LEN - 1];
    add("nonce (cti) shorter than 16 bytes", "alice", seal_raw(&claims, "submit", Some(&alice.events(&j.job_id)), orfeas_wire::to_cbor(&j), &alice.subject(), &alice.key), ErrorCode::Malformed, nil);
    let mut j = job(image.clone());
    j.job_id = nil;
    add("job id is the nil UUID", "alice", alice.seal(&j), ErrorCode::Invalid, nil);
    let j = job(image.clone());
    add("payload detached (nil)", "alice", resign(&alice.seal(&j), &alice.subject(), &alice.key, |s| s.payload = None), ErrorCode::Malformed, nil);

    // --- Raw bytes.
    add("empty message", "alice", vec![], ErrorCode::Malformed, nil);
    add("random bytes", "alice", (0..200u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect(), ErrorCode::Malformed, nil);
    add("a CBOR integer", "alice", cbor(&Value::Integer(42.into())), ErrorCode::Malformed, nil);
    let j = job(image.clone());
    let whole = alice.seal(&j);
    add("truncated envelope", "alice", whole[..whole.len() / 2].to_vec(), ErrorCode::Malformed, nil);
    let j = job(image.clone());
    let mut trailing = alice.seal(&j);
    trailing.push(0);
    add("trailing byte after the envelope", "alice", trailing, ErrorCode::Malformed, nil);
    let mut deep = Value::Integer(1.into());
    for _ in 0..400 {
        deep = Value::Array(vec![deep]);
    }
    add("deep nesting (400 arrays)", "alice", cbor(&deep), ErrorCode::Malformed, nil);
    let tagged = [vec![0xd2], alice.seal(&job(image.clone()))].concat();
    add("envelope with a COSE tag (18)", "alice", tagged, ErrorCode::Malformed, nil);

    // --- Claims and binding.
    let j = job(image.clone());
    let mut claims = alice.claims();
    (claims.iat, claims.exp) = (now_s() - 3600, now_s() - 3300);
    add("stale iat", "alice", seal_raw(&claims, "submit", Some(&alice.events(&j.job_id)), orfeas_wire::to_cbor(&j), &alice.subject(), &alice.key), ErrorCode::Stale, j.job_id);
    let j = job(image.clone());
    let mut claims = alice.claims();
    (claims.iat, claims.exp) = (now_s() + 3600, now_s() + 3900);
    add("future iat", "alice", seal_raw(&claims, "submit", Some(&alice.events(&j.job_id)), orfeas_wire::to_cbor(&j), &alice.subject(), &alice.key), ErrorCode::Stale, j.job_id);
    let j = job(image.clone());
    let mut claims = alice.claims();
    claims.exp = claims.iat + 3600;
    add("lifetime over 600 s", "alice", seal_raw(&claims, "submit", Some(&alice.events(&j.job_id)), orfeas_wire::to_cbor(&j), &alice.subject(), &alice.key), ErrorCode::Stale, j.job_id);
    let j = job(image.clone());
    let mut claims = alice.claims();
    claims.aud = "elsewhere".into();
    add("wrong audience", "alice", seal_raw(&claims, "submit", Some(&alice.events(&j.job_id)), orfeas_wire::to_cbor(&j), &alice.subject(), &alice.key), ErrorCode::Forbidden, j.job_id);
    let j = job(image.clone());
    add("bob's message on alice's subject", "alice", bob.seal(&j), ErrorCode::Forbidden, j.job_id);
    let j = job(image.clone());
    add(
        "signed for another subject",
        "alice",
        seal_raw(&alice.claims(), "submit", Some(&alice.events(&j.job_id)), orfeas_wire::to_cbor(&j), "orfeas.jobs.submit.other", &alice.key),
        ErrorCode::BadSignature,
        j.job_id,
    );
    let j = job(image.clone());
    add("operation cancel on the submit subject", "alice", seal_raw(&alice.claims(), "cancel", Some(&alice.events(&j.job_id)), orfeas_wire::to_cbor(&j), &alice.subject(), &alice.key), ErrorCode::Forbidden, j.job_id);
    let j = job(image.clone());
    add(
        "events subject outside the agent's namespace",
        "alice",
        seal_raw(&alice.claims(), "submit", Some(&bob.events(&j.job_id)), orfeas_wire::to_cbor(&j), &alice.subject(), &alice.key),
        ErrorCode::Forbidden,
        j.job_id,
    );
    let j = job(image.clone());
    add("events subject missing", "alice", seal_raw(&alice.claims(), "submit", None, orfeas_wire::to_cbor(&j), &alice.subject(), &alice.key), ErrorCode::Forbidden, j.job_id);

    // --- Keys.
    let j = job(image.clone());
    let stranger = Agent { name: "alice".into(), key: SecretKey::generate() };
    add("unknown key", "alice", stranger.seal(&j), ErrorCode::UnknownKey, j.job_id);
    let j = job(image.clone());
    add("another agent's key", "alice", Agent { name: "alice".into(), key: bob.key.clone() }.seal(&j), ErrorCode::UnknownKey, j.job_id);
    let j = job(image.clone());
    add("unregistered agent", "nobody", Agent { name: "nobody".into(), key: SecretKey::generate() }.seal(&j), ErrorCode::UnknownKey, j.job_id);
    let j = job(image.clone());
    add("revoked key", "revoked", revoked.seal(&j), ErrorCode::RevokedKey, j.job_id);
    let j = job(image.clone());
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak_kid = {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(identity)[..8])
    };
    add(
        "kid of a weak (small-order) key",
        "alice",
        resign(&alice.seal(&j), &alice.subject(), &alice.key, |s| s.protected.header.key_id = weak_kid.into_bytes()),
        ErrorCode::UnknownKey,
        j.job_id,
    );

    // --- Payload (correctly signed).
    let id = Uuid::now_v7();
    add("payload not CBOR", "alice", alice.seal_payload(vec![0xff, 0xfe, 0xfd], &id), ErrorCode::Invalid, nil);
    let j = job(image.clone());
    let mut bytes = orfeas_wire::to_cbor(&j);
    bytes.push(0);
    add("payload with a trailing byte", "alice", alice.seal_payload(bytes, &j.job_id), ErrorCode::Invalid, nil);
    let j = job(image.clone());
    let mut map = job_value(&j);
    map.push((Value::Text("model".into()), Value::Text("inflate".into())));
    add("duplicate map key in the payload", "alice", alice.seal_payload(cbor(&Value::Map(map)), &j.job_id), ErrorCode::Invalid, nil);
    let j = job(image.clone());
    let mut map = job_value(&j);
    let mut nested = Value::Map(vec![]);
    for _ in 0..40 {
        nested = Value::Map(vec![(Value::Text("x".into()), nested)]);
    }
    set(&mut map, "params", nested);
    add("deep nesting in the payload", "alice", alice.seal_payload(cbor(&Value::Map(map)), &j.job_id), ErrorCode::Invalid, nil);
    let j = job(image.clone());
    let mut map = job_value(&j);
    set(&mut map, "job_id", Value::Integer(7.into()));
    add("job_id of the wrong type", "alice", alice.seal_payload(cbor(&Value::Map(map)), &j.job_id), ErrorCode::Invalid, nil);
    let j = job(image.clone());
    let mut map = job_value(&j);
    set(&mut map, "model", Value::Integer(7.into()));
    add("model of the wrong type", "alice", alice.seal_payload(cbor(&Value::Map(map)), &j.job_id), ErrorCode::Invalid, nil);
    let j = job(image.clone());
    let mut map = job_value(&j);
    set(&mut map, "formats", Value::Text("glb".into()));
    add("formats of the wrong type", "alice", alice.seal_payload(cbor(&Value::Map(map)), &j.job_id), ErrorCode::Invalid, nil);
    let j = job(image.clone());
    let mut map = job_value(&j);
    set(&mut map, "formats", Value::Array(vec![Value::Text("fbx".into())]));
    add("unknown format", "alice", alice.seal_payload(cbor(&Value::Map(map)), &j.job_id), ErrorCode::Invalid, nil);
    let j = job(image.clone());
    let mut map = job_value(&j);
    map.retain(|(k, _)| k.as_text() != Some("image"));
    add("image missing", "alice", alice.seal_payload(cbor(&Value::Map(map)), &j.job_id), ErrorCode::Invalid, nil);
    let mut j = job(image.clone());
    j.model = "nope".into();
    add("unknown model", "alice", alice.seal(&j), ErrorCode::UnknownModel, j.job_id);
    let mut j = job(image.clone());
    j.params.target_faces = Some(5);
    add("target_faces out of range", "alice", alice.seal(&j), ErrorCode::Invalid, j.job_id);
    let mut j = job(image.clone());
    j.params.size_mm = Some(f32::NAN);
    add("size_mm not a number", "alice", alice.seal(&j), ErrorCode::Invalid, j.job_id);
    let mut j = job(image.clone());
    j.params.model_params.insert("max_height".into(), 1.0);
    add("model parameter the model does not have", "alice", alice.seal(&j), ErrorCode::Invalid, j.job_id);

    // --- Images.
    let j = job(vec![]);
    add("empty image", "alice", alice.seal(&j), ErrorCode::InvalidImage, j.job_id);
    let j = job(b"definitely not an image, just some text".to_vec());
    add("non-image bytes", "alice", alice.seal(&j), ErrorCode::InvalidImage, j.job_id);
    let mut j = job(image.clone());
    j.image = ImageInput::Inline { media_type: "image/jpeg".into(), data: image.clone() };
    add("PNG declared as JPEG", "alice", alice.seal(&j), ErrorCode::InvalidImage, j.job_id);
    let mut j = job(image.clone());
    j.image = ImageInput::Inline { media_type: "image/gif".into(), data: image.clone() };
    add("media type not allowed", "alice", alice.seal(&j), ErrorCode::InvalidImage, j.job_id);
    let j = job(png_header(60_000, 60_000));
    add("PNG declaring 60000x60000", "alice", alice.seal(&j), ErrorCode::TooLarge, j.job_id);
    let j = job(image[..20].to_vec());
    add("PNG truncated inside its header", "alice", alice.seal(&j), ErrorCode::InvalidImage, j.job_id);
    let mut big = image.clone();
    big.resize(MAX_INLINE_IMAGE_BYTES + 16 * 1024, 0);
    let j = job(big);
    add("inline image over the cap", "alice", alice.seal(&j), ErrorCode::TooLarge, j.job_id);
    let j = job(image.clone());
    add("image over the agent's cap", "small", small.seal(&j), ErrorCode::TooLarge, j.job_id);

    // --- Images by reference: checked at the door, never fetched.
    let by_ref = |edit: &dyn Fn(&mut ImageInput)| {
        let mut j = job(image.clone());
        j.image = ImageInput::by_reference("alice", RefStore::Jetstream, "x.png", "image/png", &image);
        edit(&mut j.image);
        j
    };
    let field = |edit: fn(&mut String, &mut Vec<u8>, &mut u64, &mut String)| {
        move |image: &mut ImageInput| {
            let ImageInput::Ref { media_type, sha256, size, key, .. } = image else { unreachable!() };
            edit(media_type, sha256, size, key)
        }
    };
    let j = by_ref(&field(|_, _, _, key| *key = "bob/x.png".into()));
    add("reference into another agent's prefix", "alice", alice.seal(&j), ErrorCode::Forbidden, j.job_id);
    let j = by_ref(&|image| *image = ImageInput::by_reference("bob", RefStore::ObjectStore, "x.png", "image/png", &[1]));
    add("object store reference into another agent's prefix", "alice", alice.seal(&j), ErrorCode::Forbidden, j.job_id);
    let j = by_ref(&|image| {
        let ImageInput::Ref { bucket, .. } = image else { unreachable!() };
        *bucket = Some("KV_orfeas_agents".into());
    });
    add("reference into another bucket", "alice", alice.seal(&j), ErrorCode::Forbidden, j.job_id);
    let j = by_ref(&field(|_, _, _, key| *key = "alice/../bob/x.png".into()));
    add("reference key climbing out with ..", "alice", alice.seal(&j), ErrorCode::Invalid, j.job_id);
    let j = by_ref(&field(|_, sha, _, _| sha.truncate(31)));
    add("reference sha256 of 31 bytes", "alice", alice.seal(&j), ErrorCode::Invalid, j.job_id);
    let j = by_ref(&field(|_, _, size, _| *size = 0));
    add("reference of 0 bytes", "alice", alice.seal(&j), ErrorCode::Invalid, j.job_id);
    let j = by_ref(&field(|_, _, size, _| *size = MAX_REF_IMAGE_BYTES + 1));
    add("reference over the by-reference cap", "alice", alice.seal(&j), ErrorCode::TooLarge, j.job_id);
    let j = by_ref(&field(|media, _, _, _| *media = "image/gif".into()));
    add("reference with a media type not allowed", "alice", alice.seal(&j), ErrorCode::InvalidImage, j.job_id);
    let mut j = by_ref(&|_| {});
    j.image = ImageInput::by_reference("small", RefStore::Jetstream, "x.png", "image/png", &image);
    add("reference over the agent's cap", "small", small.seal(&j), ErrorCode::TooLarge, j.job_id);

    // --- Policy.
    let j = job(image.clone());
    add("operation the agent may not use", "reader", reader.seal(&j), ErrorCode::Forbidden, j.job_id);
    let j = job(image.clone());
    add("over the concurrency cap", "capped", capped.seal(&j), ErrorCode::ConcurrencyLimit, j.job_id);

    // Cases whose first message is admitted: (first, then the bad copy).
    let replay_job = job(image.clone());
    let replay_bytes = alice.seal(&replay_job);
    let burst_first = job(image.clone());
    let burst_second = job(image.clone());
    let conflict_first = job(image.clone());
    let mut conflict_second = conflict_first.clone();
    conflict_second.params.target_faces = Some(500);
    let admitted_first: Vec<(String, Vec<u8>, Uuid)> = vec![
        ("alice".into(), replay_bytes.clone(), replay_job.job_id),
        ("burst".into(), burst.seal(&burst_first), burst_first.job_id),
        ("alice".into(), alice.seal(&conflict_first), conflict_first.job_id),
    ];
    add("replay inside the window", "alice", replay_bytes, ErrorCode::Replayed, replay_job.job_id);
    add("burst over the agent's rate", "burst", burst.seal(&burst_second), ErrorCode::RateLimited, burst_second.job_id);
    add("same job id, different request", "alice", alice.seal(&conflict_second), ErrorCode::Conflict, conflict_second.job_id);
    drop(add);
    assert!(cases.len() >= 40, "{} cases", cases.len());

    // One subscription per subject token, before anything is sent.
    let mut subscriptions = BTreeMap::new();
    for token in cases.iter().map(|c| c.token.clone()).chain(["burst".to_string()]) {
        if !subscriptions.contains_key(&token) {
            subscriptions.insert(token.clone(), client.subscribe(format!("orfeas.events.{token}.>")).await.unwrap());
        }
    }
    client.flush().await.unwrap();
    let publish = |subject: String, bytes: Vec<u8>| {
        let js = js.clone();
        async move {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", Uuid::new_v4().to_string().as_str());
            js.publish_with_headers(subject, headers, bytes.into()).await.unwrap().await.unwrap();
        }
    };
    let queue_seq = || {
        let js = js.clone();
        async move { js.get_stream(subjects::QUEUE_STREAM).await.unwrap().info().await.unwrap().state.last_sequence }
    };
    // The first copies are admitted (three jobs on the queue).
    let mut enqueued = queue_seq().await;
    for (token, bytes, job_id) in admitted_first {
        publish(subjects::submit(&token), bytes).await;
        let sub = subscriptions.get_mut(&token).unwrap();
        loop {
            let message = tokio::time::timeout(WAIT, sub.next()).await.unwrap().unwrap();
            let event = good.verify_event(&message.subject, &message.payload).await.unwrap();
            if event.job_id == job_id {
                assert!(matches!(event.kind, EventKind::Accepted { .. }), "{event:?}");
                break;
            }
        }
        enqueued += 1;
    }
    let rss_before = rss_kib(node.pid());
    let mut good_jobs = 0;

    for (i, case) in cases.iter().enumerate() {
        publish(subjects::submit(&case.token), case.bytes.clone()).await;
        let sub = subscriptions.get_mut(&case.token).unwrap();
        let failure = loop {
            let message = tokio::time::timeout(WAIT, sub.next()).await.unwrap_or_else(|_| panic!("{}: no answer", case.name)).unwrap();
            let event = good.verify_event(&message.subject, &message.payload).await.unwrap();
            match event.kind {
                EventKind::Rejected(f) if event.job_id == case.job_id => break f,
                // Events of the admitted first copies (running, finishing).
                _ if event.job_id != case.job_id => continue,
                other => panic!("{}: expected a rejection, got {other:?}", case.name),
            }
        };
        assert_eq!(failure.code, case.code, "{}: {failure:?}", case.name);
        assert_eq!(failure.status, case.code.status(), "{}", case.name);
        if case.job_id != nil {
            assert_eq!(failure.job_id, Some(case.job_id), "{}: the rejection names the job", case.name);
        }
        match case.code {
            ErrorCode::Stale => assert!(failure.server_time_ms.is_some(), "{}: stale carries server time", case.name),
            ErrorCode::RateLimited => {
                let wait = failure.retry_after_ms.unwrap_or_else(|| panic!("{}: no retry_after_ms", case.name));
                assert!(wait > 0 && wait <= 60_000, "{}: retry_after_ms {wait} within the 60 s interval of 1 per minute", case.name);
            }
            ErrorCode::ConcurrencyLimit => assert!(failure.retry_after_ms.is_some(), "{}", case.name),
            _ => {}
        }
        assert_eq!(queue_seq().await, enqueued, "{}: something was enqueued", case.name);
        // The node keeps serving a well-behaved agent throughout.
        if i % 10 == 9 {
            let mut job = job(image.clone());
            job.model = "null".into();
            let mut events = good.submit(&job).await.unwrap();
            loop {
                let event = good.next_event(&mut events, WAIT).await.unwrap();
                match event.kind {
                    EventKind::Completed { .. } => break,
                    EventKind::Failed(f) | EventKind::Rejected(f) => panic!("after {}: good job failed: {f:?}", case.name),
                    _ => {}
                }
            }
            good_jobs += 1;
            enqueued += 1;
        }
    }
    assert_eq!(queue_seq().await, enqueued);
    assert!(good_jobs >= 4);

    // Memory stays bounded: the whole suite (with an 8 MiB message) costs
    // the node less than 256 MiB of resident memory.
    let rss_after = rss_kib(node.pid());
    assert!(rss_after < rss_before + 256 * 1024, "node RSS grew from {rss_before} KiB to {rss_after} KiB");

    // Exactly one audit record per case: (job id, code) pairs match.
    let audit_js = js.clone();
    let records: Vec<AuditRecord> = eventually("every rejection audited", WAIT, || {
        let js = audit_js.clone();
        let want = cases.len();
        async move {
            let verdict_records = read_audit(&js).await;
            let rejected: Vec<AuditRecord> = verdict_records.into_iter().filter(|r| r.decision == "rejected").collect();
            (rejected.len() >= want).then_some(rejected)
        }
    })
    .await;
    let mut want: Vec<(Uuid, ErrorCode)> = cases.iter().map(|c| (c.job_id, c.code)).collect();
    let mut got: Vec<(Uuid, ErrorCode)> = records.iter().map(|r| (r.job_id, r.code.expect("a rejection has a code"))).collect();
    want.sort_by_key(|(id, code)| (*id, code.as_str()));
    got.sort_by_key(|(id, code)| (*id, code.as_str()));
    assert_eq!(got, want, "one audit record per case");

    // The trail verifies; a record republished modified is caught; nothing
    // can be purged or deleted.
    let verify = || std::process::Command::new(common::orfeas_bin()).args(["audit", "verify", "--nats", &nats.url]).output().unwrap();
    let out = verify();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("audit trail intact"));
    let stream = js.get_stream(subjects::AUDIT_STREAM).await.unwrap();
    let first = stream.get_raw_message(1).await.unwrap();
    let mut forged: AuditRecord = orfeas_wire::from_cbor(&first.payload).unwrap();
    forged.decision = "accepted".into();
    forged.code = None;
    // Appended as if it were the next record of the chain, but it is a copy
    // of record 0 with another decision.
    js.publish(first.subject.to_string(), orfeas_wire::to_cbor(&forged).into()).await.unwrap().await.unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("index 0 again"), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(stream.delete_message(2).await.is_err(), "deleting an audit record is refused");
    assert!(stream.purge().await.is_err(), "purging the audit stream is refused");
}

async fn read_audit(js: &async_nats::jetstream::Context) -> Vec<AuditRecord> {
    let mut stream = js.get_stream(subjects::AUDIT_STREAM).await.unwrap();
    let info = stream.info().await.unwrap();
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return out;
    }
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let message = stream.get_raw_message(seq).await.unwrap();
        out.push(orfeas_wire::from_cbor(&message.payload).unwrap());
    }
    out
}
