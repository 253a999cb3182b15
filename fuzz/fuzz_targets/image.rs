//! The image path: header check, then decode under limits, exactly the code the node
//! runs (`actors/src/image_input.rs`, included). The first byte picks the declared media
//! type. Must never panic, never decode more than the limits allow.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../actors/src/image_input.rs"]
#[allow(dead_code)]
mod image_input;

const TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/webp", "image/gif"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else { return };
    let media_type = TYPES[usize::from(pick) % TYPES.len()];
    // A small side limit keeps each run fast; the limits are what is under test.
    let max_side = 512;
    if let Ok((w, h)) = image_input::check_header(bytes, media_type, max_side) {
        assert!(w > 0 && h > 0 && w <= max_side && h <= max_side);
        if let Ok(img) = image_input::decode(bytes, media_type, max_side) {
            assert_eq!((img.width(), img.height()), (w, h), "decode agrees with the header");
        }
    }
});
