//! Protocol v1 checked by a second implementation: the committed golden
//! submission (`actors/wire/tests/fixtures/v1/`) verifies with cbor2 +
//! PyNaCl following md/protocol.md alone, and stops verifying on any other
//! subject.

mod common;

use std::process::Command;

fn verify(subject: &str) -> (bool, serde_json::Value) {
    verify_fixture("submit_job", subject)
}

fn verify_fixture(name: &str, subject: &str) -> (bool, serde_json::Value) {
    let python = std::env::var("ORFEAS_PYTHON").expect("ORFEAS_PYTHON is not set: run the tests through `deploy/setup.sh --test`");
    let fixtures = common::repo().join("actors/wire/tests/fixtures/v1");
    let public = std::fs::read_to_string(fixtures.join("agent_public_key.hex")).unwrap();
    let out = Command::new(python)
        .arg(common::repo().join("tests/oracles/cose_verify.py"))
        .arg(fixtures.join(format!("{name}.cbor")))
        .arg(subject)
        .arg(public.trim())
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

#[test]
fn protocol_golden_submission_verifies_in_python() {
    let (ok, report) = verify("orfeas.jobs.submit.alice");
    assert!(ok, "{report}");
    assert_eq!(report["content_type"], "application/orfeas.submit-job.v1+cbor");
    assert_eq!(report["claims"]["iss"], "alice");
    assert_eq!(report["op"], "submit");
    assert_eq!(report["events"], "orfeas.events.alice.01890a5d-ac96-774b-bcce-b302099a8057");
    assert_eq!(report["model"], "inflate");
    let (ok, report) = verify("orfeas.jobs.submit.bob");
    assert!(!ok, "verified on another subject: {report}");
}

#[test]
fn protocol_golden_submission_by_reference_verifies_in_python() {
    let (ok, report) = verify_fixture("submit_job_by_reference", "orfeas.jobs.submit.alice");
    assert!(ok, "{report}");
    let image = &report["image"]["ref"];
    assert_eq!(image["store"], "jetstream", "{report}");
    assert_eq!(image["key"], "alice/mug.png");
    assert_eq!(image["sha256"], "ab".repeat(32));
    assert_eq!(image["size"], 123_456);
    assert_eq!(image["media_type"], "image/png");
    assert!(image.get("bucket").is_none(), "bucket is left out when unset: {report}");
    let (ok, _) = verify_fixture("submit_job_by_reference", "orfeas.jobs.submit.bob");
    assert!(!ok);
}
