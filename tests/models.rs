//! The built-in models and example images are reproducible from their
//! generator scripts: regenerating gives models with identical outputs and
//! byte-identical example PNGs. Needs the set-up venv's Python (torch):
//! `deploy/setup.sh --test` sets `ORFEAS_PYTHON`.

mod common;

use std::process::Command;

fn python() -> String {
    std::env::var("ORFEAS_PYTHON").expect("ORFEAS_PYTHON is not set: run the tests through `deploy/setup.sh --test`")
}

#[test]
fn models_regenerate_with_identical_outputs() {
    let out = Command::new(python()).arg(common::repo().join("models/generate.py")).arg("--check").output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn example_images_regenerate_byte_for_byte() {
    let out = Command::new(python()).arg(common::repo().join("examples/make_examples.py")).arg("--check").output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
