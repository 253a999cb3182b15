//! Envelope decode + verify: any bytes through `envelope::open` (as a submission and as
//! an event), then signature, claims and payload decode on whatever opens. Must never
//! panic; a forged signature must never verify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orfeas_wire::envelope::{self, ContentKind};
use orfeas_wire::{v1, SecretKey};

fuzz_target!(|data: &[u8]| {
    // The key of the golden fixtures (actors/wire/tests/golden.rs), so that mutations of
    // the seed corpus reach `verify` with the right key.
    let agent = SecretKey::from_seed([0x42; 32]).public();
    let node = SecretKey::from_seed([0x07; 32]).public();
    for (want, key, subject) in [
        (ContentKind::SubmitJob, &agent, "orfeas.jobs.submit.alice"),
        (ContentKind::Event, &node, "orfeas.events.alice.01890a5d-ac96-774b-bcce-b302099a8057"),
    ] {
        let Ok(opened) = envelope::open(data, v1::MAX_SUBMIT_BYTES, want) else { continue };
        let _ = opened.check_claims("orfeas", 1_700_000_100, 60, v1::MAX_LIFETIME_S);
        // Server-side clock, skew and lifetime are the node's own values (sane ranges);
        // only the claims are the attacker's.
        let _ = opened.check_claims(&opened.claims.aud.clone(), i64::MAX as u64, 3_600, u64::MAX);
        let _ = opened.check_claims(&opened.claims.aud.clone(), 0, 0, 0);
        if opened.verify(key, subject).is_ok() {
            // Only the committed fixtures themselves verify: a mutation that still
            // verifies would be a forgery (or a malleable encoding) — fail loudly.
            let fixtures: [&[u8]; 6] = [
                include_bytes!("../../actors/wire/tests/fixtures/v1/submit_job.cbor"),
                include_bytes!("../../actors/wire/tests/fixtures/v1/event_accepted.cbor"),
                include_bytes!("../../actors/wire/tests/fixtures/v1/event_progress.cbor"),
                include_bytes!("../../actors/wire/tests/fixtures/v1/event_completed.cbor"),
                include_bytes!("../../actors/wire/tests/fixtures/v1/event_failed.cbor"),
                include_bytes!("../../actors/wire/tests/fixtures/v1/event_rejected.cbor"),
            ];
            assert!(fixtures.contains(&data), "a message that is not a fixture verified");
        }
        match want {
            ContentKind::SubmitJob => {
                let _ = orfeas_wire::from_cbor::<v1::SubmitJob>(&opened.payload);
            }
            _ => {
                let _ = orfeas_wire::from_cbor::<v1::Event>(&opened.payload);
            }
        }
    }
});
