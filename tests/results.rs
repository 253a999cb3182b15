//! Shared results: a node storing into a real S3-compatible server
//! (`moto_server`) hands agents pre-signed URLs, and any node of the
//! deployment can serve a job's files over NATS (`orfeas fetch`); with a
//! node-local folder only the node holding the files answers. Fetch
//! requests are signed and checked like submissions.

mod common;

use std::time::Duration;

use common::{agent, s3::S3Server, NatsServer, NodeOptions, NodeProcess};
use orfeas_wire::{
    client::{AgentClient, ClientError},
    v1::{Event, EventKind, Format, JobParams, ResultFile, SubmitJob, MAX_FETCH_CHUNK},
    ErrorCode, SecretKey,
};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(120);

async fn completed(client: &mut AgentClient, job: &SubmitJob) -> (Event, Vec<ResultFile>) {
    let mut events = client.submit(job).await.unwrap();
    loop {
        let event = client.next_event(&mut events, WAIT).await.unwrap();
        match &event.kind {
            EventKind::Completed { results, .. } => {
                let results = results.clone();
                return (event, results);
            }
            EventKind::Failed(f) | EventKind::Rejected(f) => panic!("{f:?}"),
            _ => {}
        }
    }
}

fn refused_with(result: Result<impl std::fmt::Debug, ClientError>, code: ErrorCode) {
    match result {
        Err(ClientError::Refused(f)) => assert_eq!(f.code, code, "{f:?}"),
        other => panic!("expected a {code} refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_s3_store_gives_presigned_urls_and_any_node_serves_fetch() {
    let nats = NatsServer::start();
    let s3 = S3Server::start("orfeas-results");
    let local = tempfile::tempdir().unwrap();
    let mut env = s3.node_env("prod");
    env.push(("ORFEAS_MODELS_ENABLED", "null".into()));
    let mut writer = NodeProcess::start(
        &nats,
        NodeOptions {
            node_id: "s3-writer",
            store: local.path(),
            env: env.clone(),
        },
    )
    .await;
    let (mut client, key) = agent(&nats.url, "frank").await;
    let job = SubmitJob {
        formats: vec![Format::Glb, Format::Stl],
        params: JobParams {
            previews: Some(false),
            ..Default::default()
        },
        model: "null".into(),
        ..common::example_job("mug.png", vec![])
    };
    let (event, results) = completed(&mut client, &job).await;
    assert_eq!(event.node, "s3-writer");
    assert_eq!(results.len(), 2);
    for file in &results {
        assert!(
            file.location
                .starts_with(&format!("jobs/frank/{}/model.", job.job_id)),
            "{}",
            file.location
        );
        let prefix = format!("{}/orfeas-results/prod/{}?", s3.endpoint, file.location);
        assert!(
            file.url.starts_with(&prefix),
            "{} does not start with {prefix}",
            file.url
        );
        assert!(
            file.url.contains("X-Amz-Signature=") && file.url.contains("X-Amz-Expires=604800"),
            "{}",
            file.url
        );
        // An agent fetches the URL with nothing but HTTP.
        let (status, body) = common::s3::get_url(&file.url);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(hex::encode(Sha256::digest(&body)), file.sha256);
        assert_eq!(body.len() as u64, file.bytes);
        let key = format!("prod/{}", file.location);
        assert!(
            s3.object(&key).is_some_and(|stored| stored == body),
            "stored under the prefix"
        );
        assert_eq!(
            s3.anonymous_status(&key),
            403,
            "the object is private; the URL's signature is what opens it"
        );
    }
    assert!(
        !local.path().join("jobs").exists(),
        "nothing went to the local folder"
    );

    // The writer leaves; another node with the same bucket serves the files
    // over NATS, re-signing the manifest with its own key.
    let _reader = NodeProcess::start(
        &nats,
        NodeOptions {
            node_id: "s3-reader",
            store: local.path(),
            env,
        },
    )
    .await;
    assert!(writer.terminate(Duration::from_secs(30)).success());
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("frank.key");
    std::fs::write(&key_file, key.to_text()).unwrap();
    let out = std::process::Command::new(common::orfeas_bin())
        .args([
            "fetch",
            &job.job_id.to_string(),
            "--nats",
            &nats.url,
            "--agent",
            "frank",
            "--key",
        ])
        .arg(&key_file)
        .arg("-o")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in &results {
        let name = file.location.rsplit('/').next().unwrap();
        let bytes = std::fs::read(dir.path().join("out").join(name)).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), file.sha256, "{name}");
        assert!(
            stdout.contains(&format!("{name} ({} bytes, sha256 verified)", bytes.len())),
            "{stdout}"
        );
    }
    let manifest = client.fetch_manifest(&job.job_id, WAIT).await.unwrap();
    assert_eq!(
        manifest.node, "s3-reader",
        "signed by the node that answered"
    );
    assert_eq!(manifest.seq, event.seq, "same answer, same seq");

    // Another agent cannot fetch frank's job.
    let (mut other, _) = agent(&nats.url, "grace").await;
    refused_with(
        other.fetch_manifest(&job.job_id, WAIT).await,
        ErrorCode::NotFound,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_fetch_over_nats_from_the_node_holding_a_local_folder() {
    let nats = NatsServer::start();
    let holder_store = tempfile::tempdir().unwrap();
    let _holder = NodeProcess::start(
        &nats,
        NodeOptions {
            node_id: "holder",
            store: holder_store.path(),
            env: vec![],
        },
    )
    .await;
    let (mut client, _) = agent(&nats.url, "heidi").await;
    // inflate makes files larger than one chunk.
    let job = common::example_job("mug.png", vec![Format::Glb, Format::Stl]);
    let (_, results) = completed(&mut client, &job).await;
    assert!(
        results.iter().any(|f| f.bytes > u64::from(MAX_FETCH_CHUNK)),
        "a file spans several chunks: {results:?}"
    );

    // A second node with its own (empty) folder stays silent: every fetch
    // is answered by the holder.
    let other_store = tempfile::tempdir().unwrap();
    let _other = NodeProcess::start(
        &nats,
        NodeOptions {
            node_id: "empty",
            store: other_store.path(),
            env: vec![],
        },
    )
    .await;
    for _ in 0..4 {
        let manifest = client
            .fetch_manifest(&job.job_id, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(manifest.node, "holder");
        let EventKind::Completed {
            results: listed,
            previews,
            ..
        } = manifest.kind
        else {
            unreachable!()
        };
        assert_eq!(
            listed.iter().map(|f| &f.sha256).collect::<Vec<_>>(),
            results.iter().map(|f| &f.sha256).collect::<Vec<_>>()
        );
        assert_eq!(previews.len(), 4);
    }
    for file in &results {
        let bytes = client
            .fetch_file(
                &job.job_id,
                &file.location,
                Some(&file.sha256),
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        let on_disk = std::fs::read(holder_store.path().join(&file.location)).unwrap();
        assert!(
            bytes == on_disk,
            "{} differs from the stored file",
            file.location
        );
    }
    // A wrong checksum is caught by the client.
    let err = client
        .fetch_file(
            &job.job_id,
            &results[0].location,
            Some(&"0".repeat(64)),
            Duration::from_secs(20),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Unverified(ref m) if m.contains("sha256")),
        "{err}"
    );

    // Refusals carry stable codes.
    refused_with(
        client
            .fetch_file(
                &job.job_id,
                "jobs/heidi/../../etc/passwd",
                None,
                Duration::from_secs(20),
            )
            .await,
        ErrorCode::NotFound,
    );
    refused_with(
        client
            .fetch_manifest(&uuid::Uuid::now_v7(), Duration::from_secs(20))
            .await,
        ErrorCode::NotFound,
    );
    let stranger = AgentClient::new(
        orfeas_actors::bus::connect(&nats.url, "stranger")
            .await
            .unwrap(),
        "heidi",
        SecretKey::generate(),
        "orfeas",
    );
    refused_with(
        stranger
            .fetch_file(
                &job.job_id,
                &results[0].location,
                None,
                Duration::from_secs(20),
            )
            .await,
        ErrorCode::UnknownKey,
    );
}

/// The manifest verifies with a second implementation (cbor2 + PyNaCl,
/// `tests/oracles/cose_verify.py`) exactly as md/protocol.md says events
/// verify: key from `orfeas_nodes` by `iss`, `kid` its key id, external AAD
/// bound to the job's events subject — not to the reply inbox or the fetch
/// subject it travelled on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_manifest_verifies_like_an_event_in_python() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let _node = NodeProcess::start(&nats, NodeOptions { node_id: "signer", store: store.path(), env: vec![("ORFEAS_MODELS_ENABLED", "null".into())] }).await;
    let (mut client, _) = agent(&nats.url, "ivan").await;
    let mut job = common::example_job("mug.png", vec![Format::Glb]);
    job.model = "null".into();
    completed(&mut client, &job).await;
    let sealed = client.fetch_manifest_sealed(&job.job_id, WAIT).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifest.cbor");
    std::fs::write(&file, &sealed).unwrap();

    let nc = async_nats::connect(&nats.url).await.unwrap();
    let nodes = async_nats::jetstream::new(nc).get_key_value(orfeas_wire::subjects::NODES_BUCKET).await.unwrap();
    let record: orfeas_wire::v1::NodeRecord = orfeas_wire::from_cbor(&nodes.get("signer").await.unwrap().expect("node record")).unwrap();
    let python = std::env::var("ORFEAS_PYTHON").expect("ORFEAS_PYTHON is not set: run the tests through `deploy/setup.sh --test`");
    let verify = |subject: String| {
        let out = std::process::Command::new(&python).arg(common::repo().join("tests/oracles/cose_verify.py")).arg(&file).arg(&subject).arg(&record.public_key).output().unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        (out.status.success(), report)
    };
    let events = orfeas_wire::subjects::events("ivan", &job.job_id);
    let (ok, report) = verify(events);
    assert!(ok, "{report}");
    assert_eq!(report["content_type"], "application/orfeas.event.v1+cbor");
    assert_eq!(report["op"], "event");
    assert_eq!(report["claims"]["iss"], "signer");
    assert_eq!(report["claims"]["aud"], "orfeas");
    assert_eq!(report["claims"]["cti"].as_str().map(str::len), Some(2 * orfeas_wire::envelope::NONCE_LEN));
    let kid = hex::encode(&Sha256::digest(hex::decode(&record.public_key).unwrap())[..8]);
    assert_eq!(report["kid"], kid.as_str(), "kid is the node key's id");
    assert!(report["payload_keys"].as_array().unwrap().iter().any(|k| k == "kind"), "{report}");
    for other in [orfeas_wire::subjects::fetch("ivan"), "_INBOX.x".to_string(), orfeas_wire::subjects::events("ivan", &uuid::Uuid::now_v7())] {
        let (ok, _) = verify(other.clone());
        assert!(!ok, "verified on {other}");
    }
}
