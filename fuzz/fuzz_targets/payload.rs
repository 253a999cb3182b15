//! Strict payload decode of the v1 messages a node reads from the outside. Whatever
//! decodes must encode again and decode to a value with the same encoding (no lossy or ambiguous
//! encodings). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orfeas_wire::v1;
use serde::{de::DeserializeOwned, Serialize};

fn round_trip<T: Serialize + DeserializeOwned>(data: &[u8]) {
    if let Ok(value) = orfeas_wire::from_cbor::<T>(data) {
        let again = orfeas_wire::to_cbor(&value);
        let back: T = orfeas_wire::from_cbor(&again).expect("our own encoding decodes");
        // Compared as bytes: a NaN size_mm decodes fine but is not equal to itself.
        assert_eq!(orfeas_wire::to_cbor(&back), again, "encoding is stable");
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<v1::SubmitJob>(data);
    round_trip::<v1::Event>(data);
    round_trip::<v1::JobParams>(data);
    round_trip::<v1::FetchRequest>(data);
    round_trip::<v1::ListModels>(data);
    round_trip::<v1::AdmittedJob>(data);
});
