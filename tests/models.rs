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

fn check(dir: &std::path::Path) -> (bool, serde_json::Value) {
    let out = Command::new(common::orfeas_bin()).args(["models", "check", "--json"]).arg(dir).env_remove("ORFEAS_NATS_URL").output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.success(), report["ok"] == true, "exit status follows the verdict: {report}");
    (out.status.success(), report)
}

/// A copy of the tiny Hunyuan-like pipeline, with `edit` applied to its pipeline.toml.
fn broken_copy(edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::repo().join("models/testing/hunyuan-tiny");
    let dst = tmp.path().join("hunyuan-tiny");
    std::fs::create_dir(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    let toml = dst.join("pipeline.toml");
    std::fs::write(&toml, edit(std::fs::read_to_string(&toml).unwrap())).unwrap();
    tmp
}

#[test]
fn models_check_passes_the_shipped_models_and_refuses_broken_pipelines_with_stable_codes() {
    for (dir, kind) in [("models/testing/hunyuan-tiny", "pipeline"), ("models/testing/triposr-tiny", "pipeline"), ("models/null", "single_call")] {
        let (ok, report) = check(&common::repo().join(dir));
        assert!(ok, "{dir}: {report}");
        assert_eq!(report["kind"], kind, "{report}");
    }
    let cases: [(&str, Box<dyn Fn(String) -> String>); 6] = [
        ("pipeline_invalid", Box::new(|t: String| t.replace("steps = 8", "steps = 0"))),
        ("pipeline_missing_file", Box::new(|t: String| t.replace("decode.pt", "decoder.pt"))),
        // The step module refuses latents of another shape.
        ("forward_failed", Box::new(|t: String| t.replace("latent_shape = [32, 8]", "latent_shape = [32, 9]"))),
        ("model_contract", Box::new(|t: String| t.replace("output_shape = [16, 32]", "output_shape = [16, 31]"))),
        // The prepare stage gives other features than it declares.
        ("model_contract", Box::new(|t: String| t.replace("output_shape = [32, 32]", "output_shape = [32, 33]"))),
        // Without its prepare stage, decode gets latents it was not exported for.
        ("forward_failed", Box::new(|t: String| t.lines().filter(|l| !l.starts_with("prepare")).map(|l| format!("{l}\n")).collect())),
    ];
    for (code, edit) in cases {
        let tmp = broken_copy(edit);
        let (ok, report) = check(&tmp.path().join("hunyuan-tiny"));
        assert!(!ok, "{code}: {report}");
        assert_eq!(report["code"], code, "{report}");
    }
    // A decode stage that mixes batch items (how far an item is from the batch mean leaks into
    // each item: zero alone, not in a batch of two different images).
    let tmp = broken_copy(|t| t);
    let script = format!(
        "import torch\nclass D(torch.nn.Module):\n    def forward(self, features, points):\n        return 0.6 - points.pow(2).sum(-1).sqrt() + 0.1 * (features - features.mean(0)).abs().mean()\ntorch.jit.save(torch.jit.script(D()), {:?})\n",
        tmp.path().join("hunyuan-tiny/decode.pt").display().to_string()
    );
    // TorchScript reads the class's source, so the script must be a file.
    let file = tmp.path().join("mixing_decode.py");
    std::fs::write(&file, script).unwrap();
    let out = Command::new(python()).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (ok, report) = check(&tmp.path().join("hunyuan-tiny"));
    assert!(!ok && report["code"] == "batch_dependent", "{report}");
}

#[test]
fn models_check_runs_an_fp16_export_in_fp32_on_the_cpu() {
    // Released weights ship in fp16: the stages converted to half, declared `fp16`, must load
    // and run on a CPU node (computed in fp32 there, as on any CPU).
    let tmp = broken_copy(|t| t);
    let dir = tmp.path().join("hunyuan-tiny");
    let manifest = dir.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("precision = \"fp32\""), "{text}");
    std::fs::write(&manifest, text.replace("precision = \"fp32\"", "precision = \"fp16\"")).unwrap();
    let script = format!(
        "import pathlib, torch\nfor f in pathlib.Path({:?}).glob('*.pt'):\n    m = torch.jit.load(str(f)).half()\n    assert next(m.parameters()).dtype == torch.float16\n    torch.jit.save(m, str(f))\n",
        dir.display().to_string()
    );
    let out = Command::new(python()).arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (ok, report) = check(&dir);
    assert!(ok, "an fp16 export is refused on the CPU: {report}");
}
