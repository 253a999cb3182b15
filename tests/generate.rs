//! `orfeas generate` as a person at a terminal uses it, black-box (the real binary on
//! the embedded default, or against a real deployment with `--nats`): the `-o` format,
//! previews and `NAME.report.json` beside the model, `--json`, output paths checked
//! first, one bad image among good ones, exit codes, the default print size, the print
//! report on generated images (a figure with a pale face, a checkerboard, a heart on its
//! tip, an 8000-px photo), the learned matting stage (`--matting-model`), the
//! progress lines and bars (under a real pty), and the report against admesh and
//! PrusaSlicer.

mod common;

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{orfeas_bin, repo, NatsServer, NodeOptions, NodeProcess};

fn generate() -> Command {
    let mut command = Command::new(orfeas_bin());
    command
        .arg("generate")
        .env_remove("ORFEAS_NATS_URL")
        .env_remove("ORFEAS_AGENT")
        .env_remove("ORFEAS_AGENT_KEY")
        .env("ORFEAS_DEVICES_CPU_THREADS", "1")
        .stdin(Stdio::null());
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json_of(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("stdout is one JSON document ({e}): {}\n{}", text(&output.stdout), text(&output.stderr)))
}

/// An RGB PNG (no alpha: the background must be matted) from a colour function.
fn png(path: &Path, w: u32, h: u32, colour: impl Fn(f32, f32) -> [u8; 3]) {
    let mut raw = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            raw.extend(colour(x as f32 / w as f32, y as f32 / h as f32));
        }
    }
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let encoder = image::codecs::png::PngEncoder::new_with_quality(file, image::codecs::png::CompressionType::Fast, image::codecs::png::FilterType::Sub);
    image::ImageEncoder::write_image(encoder, &raw, w, h, image::ExtendedColorType::Rgb8).unwrap();
}

/// A figure on a light background: dark hair around a pale skin-toned face (within 40
/// of the background in every channel: a global threshold keys it out), a neck, a body.
fn figure(path: &Path, side: u32) {
    png(path, side, side, |x, y| {
        let head = ((x - 0.5).powi(2) + (y - 0.25).powi(2)).sqrt();
        if head < 0.09 {
            [232, 212, 200]
        } else if head < 0.12 {
            [60, 40, 30]
        } else if (0.46..0.54).contains(&x) && (0.35..0.42).contains(&y) {
            [225, 200, 185]
        } else if (0.32..0.68).contains(&x) && (0.40..0.92).contains(&y) {
            [40, 60, 140]
        } else {
            [240, 240, 240]
        }
    });
}

/// A heart standing on its point, red on white.
fn heart(path: &Path, side: u32) {
    png(path, side, side, |x, y| {
        // The classic implicit heart, point down, scaled into the frame.
        let (u, v) = ((x - 0.5) * 2.6, (0.45 - y) * 2.6);
        let f = (u * u + v * v - 1.0).powi(3) - u * u * v.powi(3);
        if f < 0.0 {
            [200, 20, 40]
        } else {
            [255, 255, 255]
        }
    });
}

#[test]
fn generate_writes_the_output_format_previews_report_and_json() {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("models/mug.3mf");
    let result = generate().arg(repo().join("examples/mug.png")).arg("-o").arg(&target).arg("--json").output().unwrap();
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(0), "{stderr}");
    // The -o extension picks the format: a 3MF and nothing else.
    assert!(target.is_file(), "{stderr}");
    assert!(!out.path().join("models/mug.glb").exists() && !out.path().join("models/mug.stl").exists());
    for view in ["front", "back", "left", "top"] {
        let png = std::fs::read(out.path().join(format!("models/mug.{view}.png"))).unwrap_or_else(|e| panic!("{view} preview: {e}"));
        assert!(png.starts_with(b"\x89PNG"));
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.path().join("models/mug.report.json")).unwrap()).unwrap();
    let doc = json_of(&result);
    assert_eq!(doc["completed"], 1);
    assert_eq!(doc["failed"], 0);
    let image = &doc["images"][0];
    assert_eq!(image["status"], "completed");
    assert_eq!(image["report"], report["report"], "the report file and --json agree");
    // Without --size-mm, print formats come out at the default 80 mm, not 2 mm.
    let longest = report["report"]["bbox_mm"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).fold(0.0, f64::max);
    assert!((longest - 80.0).abs() < 0.5, "longest side {longest} mm");
    // trimesh, independently, measures the same volume in the 3MF.
    let verdict = common::trimesh_check(&target);
    let volume = report["report"]["volume_mm3"].as_f64().unwrap();
    assert!(verdict.watertight && (verdict.volume - volume).abs() < 0.02 * volume, "{verdict:?} vs {volume} mm³");
    let grams = report["material"]["grams"].as_f64().unwrap();
    assert!((grams - volume / 1000.0 * 1.24).abs() < 1e-6 * grams.max(1.0), "PLA grams: {grams}");
    assert!(report["report"]["checks"]["bed_contact_mm2"].as_f64().is_some(), "{report}");
    // The terminal summary: the files, size and material, the verdict; then the run's line.
    assert!(stderr.contains("mug.png → ") && stderr.contains("mug.report.json"), "{stderr}");
    assert!(stderr.contains(" mm, 1 part") && stderr.contains(" g ≈ "), "{stderr}");
    assert!(stderr.contains("printable"), "{stderr}");
    assert!(stderr.lines().last().unwrap().contains("1 of 1 images completed, 0 failed"), "{stderr}");
}

#[test]
fn generate_checks_the_output_path_and_arguments_before_any_work() {
    let out = tempfile::tempdir().unwrap();
    let mug = repo().join("examples/mug.png");
    let star = repo().join("examples/star.png");
    std::fs::write(out.path().join("file"), "x").unwrap();
    let started = Instant::now();
    for (args, needle) in [
        (vec!["-o".to_string(), out.path().join("file/sub/x.glb").display().to_string()], "is a file, not a folder"),
        (vec!["-o".to_string(), out.path().join("x.fbx").display().to_string()], "\"fbx\""),
        (vec!["--format".to_string(), "glb,fbx".to_string()], "unknown format"),
        (vec!["--faces".to_string(), "5".to_string()], "target_faces"),
    ] {
        let result = generate().arg(&mug).args(&args).output().unwrap();
        assert_eq!(result.status.code(), Some(2), "{args:?}: {}", text(&result.stderr));
        assert!(text(&result.stderr).contains(needle), "{args:?}: {}", text(&result.stderr));
    }
    let two = generate().arg(&mug).arg(&star).arg("-o").arg(out.path().join("x.glb")).output().unwrap();
    assert_eq!(two.status.code(), Some(2));
    assert!(text(&two.stderr).contains("names one file but 2 images"), "{}", text(&two.stderr));
    let missing = generate().arg(out.path().join("nope.png")).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    // A config file that does not parse: exit 3, setup.
    std::fs::write(out.path().join("bad.toml"), "version = 1\n[nats]\nurl = 5\n").unwrap();
    let config = generate().arg("--config").arg(out.path().join("bad.toml")).arg(&mug).output().unwrap();
    assert_eq!(config.status.code(), Some(3), "{}", text(&config.stderr));
    // None of it started a server or a model: all of it together took seconds.
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    assert!(std::fs::read_dir(out.path()).unwrap().count() == 2, "nothing written besides the fixtures");
}

#[test]
fn generate_goes_on_past_a_bad_image_with_parallel_progress() {
    let out = tempfile::tempdir().unwrap();
    let bogus = out.path().join("notes.png");
    std::fs::write(&bogus, "just text").unwrap();
    let result = generate()
        .arg(&bogus)
        .arg(repo().join("examples/mug.png"))
        .arg(repo().join("examples/star.png"))
        .args(["--format", "glb", "--no-previews", "--json", "-o"])
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "one failed image: exit 1: {stderr}");
    assert!(out.path().join("mug.glb").is_file() && out.path().join("star.glb").is_file(), "{stderr}");
    let doc = json_of(&result);
    assert_eq!((doc["completed"].as_u64(), doc["failed"].as_u64()), (Some(2), Some(1)));
    let failed = doc["images"].as_array().unwrap().iter().find(|i| i["status"] == "failed").unwrap();
    assert_eq!(failed["code"], "invalid_image");
    assert!(failed["error"].as_str().unwrap().contains("not a PNG, JPEG or WebP"), "{failed}");

    // Without a terminal no bar is drawn: no escape codes, plain lines.
    assert!(!stderr.contains('\x1b'), "escape codes without a terminal:\n{stderr:?}");
    // Every bar is a line per event. Both jobs are followed at once:
    // the second image's first event arrives before the first one completes.
    let lines: Vec<&str> = stderr.lines().collect();
    let first = |prefix: &str, needle: &str| lines.iter().position(|l| l.starts_with(prefix) && l.contains(needle));
    let mug_done = first("mug.png: ", "completed").expect("mug completed line");
    let star_first = first("star.png: ", "").expect("star events");
    assert!(star_first < mug_done, "star's events wait for mug's:\n{stderr}");
    assert!(first("star.png: ", "inference").is_some() || first("star.png: ", "meshing").is_some(), "{stderr}");
    assert!(lines.last().unwrap().contains("2 of 3 images completed, 1 failed"), "{stderr}");
}

#[test]
fn generate_keeps_a_pale_face_and_reports_a_checkerboard() {
    let out = tempfile::tempdir().unwrap();
    let person = out.path().join("person.png");
    figure(&person, 600);
    let checker = out.path().join("checker.png");
    png(&checker, 1200, 1200, |x, y| {
        let inside = (0.05..0.95).contains(&x) && (0.05..0.95).contains(&y);
        let (i, j) = (((x - 0.05) / 0.1125) as i32, ((y - 0.05) / 0.1125) as i32);
        if inside && (i + j) % 2 == 0 { [20, 20, 20] } else { [250, 250, 250] }
    });
    let result = generate().arg(&person).arg(&checker).args(["--format", "stl", "--no-previews", "--json", "-o"]).arg(out.path()).output().unwrap();
    let stderr = text(&result.stderr);
    let doc = json_of(&result);
    let by_name = |name: &str| doc["images"].as_array().unwrap().iter().find(|i| i["image"].as_str().unwrap().ends_with(name)).unwrap().clone();

    // The head is kept: the figure is about twice as tall (z, image up) as wide.
    let person = by_name("person.png");
    assert_eq!(person["status"], "completed", "{stderr}");
    let bbox: Vec<f64> = person["report"]["bbox_mm"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(bbox[2] / bbox[0] > 1.7, "height/width {:.2}: the head was keyed out? {bbox:?}", bbox[2] / bbox[0]);
    assert_eq!(person["report"]["checks"]["parts"], 1, "{person}");

    // The checkerboard: squares touch at corners only, so inflated they come apart;
    // the report says so with a stable code and suggests relief.
    let board = by_name("checker.png");
    assert_eq!(board["status"], "completed", "{stderr}");
    let checks = &board["report"]["checks"];
    assert!(checks["parts"].as_u64().unwrap() > 10, "{checks}");
    assert!(checks["floating_parts"].as_u64().unwrap() > 3, "{checks}");
    let codes: Vec<&str> = board["report"]["issues"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
    assert!(codes.contains(&"floating_parts"), "{codes:?}");
    assert!(!board["report"]["problems"].as_array().unwrap().is_empty(), "floating parts are a problem");
    assert!(board["advice"][0].as_str().unwrap().contains("--model relief"), "{board}");
    assert!(stderr.contains("NOT printable: ") && stderr.contains("--model relief"), "{stderr}");
    assert_eq!(result.status.code(), Some(0), "completed jobs with problems still exit 0: {stderr}");
}

#[test]
fn generate_lays_a_heart_flat_and_takes_an_8000_px_photo() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("heart.png");
    heart(&path, 400);
    let run = |extra: &[&str], name: &str| {
        let result = generate().arg(&path).args(["--format", "stl", "--no-previews", "--json", "-o"]).arg(out.path().join(name)).args(extra).output().unwrap();
        assert_eq!(result.status.code(), Some(0), "{}", text(&result.stderr));
        json_of(&result)["images"][0]["report"].clone()
    };
    let standing = run(&[], "standing.stl");
    let flat = run(&["--lay-flat"], "flat.stl");
    let contact = |r: &serde_json::Value| r["checks"]["bed_contact_mm2"].as_f64().unwrap();
    assert!(contact(&standing) < 20.0, "a heart on its point touches the bed at a point: {standing}");
    let codes: Vec<&str> = standing["issues"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
    assert!(codes.contains(&"tips_over") || codes.contains(&"small_bed_contact"), "{codes:?}");
    assert!(contact(&flat) > 5.0 * contact(&standing).max(1.0), "laid flat: {} vs {}", contact(&flat), contact(&standing));
    assert_eq!(flat["checks"]["tips_over"], false, "{flat}");
    // (inflate makes the heart a balloon about as thick as it is wide, so laid flat it
    // is not lower: it rests where it is stable, on its back.)
    assert!(flat["issues"].as_array().unwrap().iter().all(|i| i["code"] != "tips_over"), "{flat}");
    let verdict = common::trimesh_check(&out.path().join("flat.stl"));
    assert!(verdict.watertight && verdict.winding_consistent, "{verdict:?}");

    // An 8000-px photo is scaled down, not refused.
    let big = out.path().join("big.png");
    png(&big, 8000, 8000, |x, y| if ((x - 0.5).powi(2) + (y - 0.5).powi(2)).sqrt() < 0.3 { [30, 90, 200] } else { [250, 250, 250] });
    let result = generate().arg(&big).args(["--format", "glb", "--no-previews", "-o"]).arg(out.path()).output().unwrap();
    assert_eq!(result.status.code(), Some(0), "{}", text(&result.stderr));
    assert!(out.path().join("big.glb").is_file());
}

/// The bars of one redraw: `(image name, percent)` for every `NAME [bar] NNN%` in a run
/// of text between escape codes (indicatif pads each bar line to the terminal's width
/// and lets it wrap, so one redraw of all bars is one run).
fn bar_frames(raw: &str) -> Vec<Vec<(String, u32)>> {
    raw.split('\x1b')
        .map(|run| {
            let mut bars = Vec::new();
            let mut rest = run;
            while let Some(open) = rest.find(" [") {
                let name = rest[..open].rsplit(' ').next().unwrap_or("").to_string();
                let after = &rest[open + 2..];
                let Some(close) = after.find("] ") else { break };
                let percent: String = after[close + 2..].trim_start().chars().take_while(|c| c.is_ascii_digit()).collect();
                if name.ends_with(".png") && after[..close].chars().all(|c| "=> ".contains(c)) {
                    if let Ok(p) = percent.parse() {
                        bars.push((name, p));
                    }
                }
                rest = &after[close + 1..];
            }
            bars
        })
        .filter(|bars| !bars.is_empty())
        .collect()
}

/// What a terminal `cols` wide shows after `raw`: printable text with autowrap, `\r`,
/// `\n`, cursor up/down (`ESC[nA`, `ESC[nB`) and line erase (`ESC[2K`) — all indicatif
/// uses.
fn screen(raw: &str, cols: usize) -> Vec<String> {
    let (mut rows, mut r, mut c, mut wrap) = (vec![Vec::<char>::new()], 0usize, 0usize, false);
    let mut chars = raw.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\r' => (c, wrap) = (0, false),
            '\n' => (r, wrap) = (r + 1, false),
            '\x1b' if chars.peek() == Some(&'[') => {
                chars.next();
                let mut n = String::new();
                while let Some(d) = chars.next_if(|d| d.is_ascii_digit()) {
                    n.push(d);
                }
                let count: usize = n.parse().unwrap_or(1);
                match chars.next() {
                    Some('A') => r = r.saturating_sub(count),
                    Some('B') => r += count,
                    Some('K') => rows[r].truncate(if n == "2" { 0 } else { c }),
                    _ => {}
                }
                wrap = false;
            }
            ch if ch.is_control() => {}
            ch => {
                if wrap {
                    (r, c, wrap) = (r + 1, 0, false);
                }
                while rows.len() <= r {
                    rows.push(Vec::new());
                }
                let row = &mut rows[r];
                row.resize(row.len().max(c), ' ');
                if c < row.len() {
                    row[c] = ch;
                } else {
                    row.push(ch);
                }
                if c + 1 >= cols {
                    wrap = true;
                } else {
                    c += 1;
                }
            }
        }
        while rows.len() <= r {
            rows.push(Vec::new());
        }
    }
    rows.into_iter().map(|row| row.into_iter().collect::<String>().trim_end().to_string()).collect()
}

#[test]
fn generate_draws_one_bar_per_image_on_a_terminal() {
    let python = std::env::var("ORFEAS_PYTHON").expect("ORFEAS_PYTHON is not set: run the tests through `deploy/setup.sh --test`");
    let out = tempfile::tempdir().unwrap();
    let raw_file = out.path().join("terminal.raw");
    let cols = 100;
    let images = ["mug.png", "star.png", "apple-512.png"];
    let mut command = Command::new(python);
    command.arg(repo().join("tests/oracles/pty_run.py")).args(["--cols", &cols.to_string(), "--timeout", "300", "--out"]).arg(&raw_file).arg("--");
    command.arg(orfeas_bin()).args(["generate", "--format", "stl", "--no-previews", "-o"]).arg(out.path());
    command.args(images.iter().map(|i| repo().join("examples").join(i)));
    // The same environment generate() gives, minus its null stdin: the pty is stdin.
    command.env_remove("ORFEAS_NATS_URL").env_remove("ORFEAS_AGENT").env_remove("ORFEAS_AGENT_KEY").env("ORFEAS_DEVICES_CPU_THREADS", "1");
    let status = command.status().unwrap();
    let raw = String::from_utf8_lossy(&std::fs::read(&raw_file).unwrap()).into_owned();
    let shown = screen(&raw, cols).join("\n");
    assert_eq!(status.code(), Some(0), "{shown}");
    assert!(raw.contains("\x1b["), "bars are drawn with escape codes on a terminal:\n{shown}");

    let frames = bar_frames(&raw);
    for image in images {
        let seen: Vec<u32> = frames.iter().flatten().filter(|(n, _)| n == image).map(|&(_, p)| p).collect();
        assert!(!seen.is_empty(), "no bar for {image}:\n{shown}");
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{image}'s percent went back: {seen:?}");
        let mut distinct = seen.clone();
        distinct.dedup();
        assert!(seen[0] == 0 && *seen.last().unwrap() == 100 && distinct.len() >= 4, "{image} advances 0 → 100: {distinct:?}");
    }
    // One redraw shows every bar, and in some redraw two images are under way together.
    assert!(frames.iter().any(|f| images.iter().all(|i| f.iter().any(|(n, _)| n == i))), "no redraw holds all {} bars", images.len());
    assert!(frames.iter().any(|f| f.iter().filter(|(_, p)| (1..100).contains(p)).count() >= 2), "no two images advanced in parallel: {frames:?}");

    // The final screen: each image's summary above the bars, every bar finished (none
    // erased by another's redraw), the run's line last; no line wrapped.
    let lines: Vec<&str> = shown.lines().filter(|l| !l.is_empty()).collect();
    let n = images.len();
    assert!(lines.len() > n, "{shown}");
    let (bars, last) = (&lines[lines.len() - 1 - n..lines.len() - 1], lines[lines.len() - 1]);
    for image in images {
        assert!(bars.iter().any(|l| l.trim_start().starts_with(&format!("{image} [")) && l.contains("] 100% done")), "{image}'s finished bar is not on screen:\n{shown}");
        assert!(lines.iter().any(|l| l.starts_with(&format!("{image} → "))), "{image}'s summary:\n{shown}");
    }
    assert!(last.contains(&format!("generate: {n} of {n} images completed, 0 failed")), "{shown}");
}

/// A dark bar across a white image: the flood fill keeps it whole, 4.5 times as wide as tall.
fn bar(path: &Path, side: u32) {
    png(path, side, side, |x, y| if (0.05..0.95).contains(&x) && (0.4..0.6).contains(&y) { [30, 40, 120] } else { [250, 250, 250] });
}

#[test]
fn generate_runs_a_learned_matting_model_instead_of_the_flood_fill() {
    let out = tempfile::tempdir().unwrap();
    let image = out.path().join("bar.png");
    bar(&image, 300);
    let run = |extra: &[&str], name: &str| {
        let result = generate().arg(&image).args(["--format", "stl", "--no-previews", "--json", "-o"]).arg(out.path().join(name)).args(extra).output().unwrap();
        assert_eq!(result.status.code(), Some(0), "{extra:?}: {}", text(&result.stderr));
        json_of(&result)["images"][0]["report"].clone()
    };
    // bbox_mm in the print frame: [width (image x), depth, height (image up)].
    let aspect = |report: &serde_json::Value| {
        let b: Vec<f64> = report["bbox_mm"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        b[0] / b[2]
    };
    let flood = run(&[], "flood.stl");
    assert!(aspect(&flood) > 3.5, "the flood fill keeps the bar: width/height {:.2}", aspect(&flood));
    // The test model keeps the central disc whatever the image shows: round, and cut
    // through the bar's white surroundings, which no flood fill would call object.
    let disc_dir = repo().join("models/matting/testing/disc");
    let disc = run(&["--matting-model", disc_dir.to_str().unwrap()], "disc.stl");
    assert!((aspect(&disc) - 1.0).abs() < 0.1, "the learned stage ran: width/height {:.2}", aspect(&disc));
    assert!(common::trimesh_check(&out.path().join("disc.stl")).watertight);
    // The committed random-weight variant loads and runs end to end (its cut-out means nothing).
    let tiny = repo().join("models/matting/tiny-modnet");
    let random = run(&["--matting", "learned", "--matting-model", tiny.to_str().unwrap()], "random.stl");
    assert!(random["volume_mm3"].as_f64().unwrap() > 0.0, "{random}");
}

#[test]
fn generate_refuses_a_matting_model_that_breaks_the_contract_and_bad_matting_flags() {
    let out = tempfile::tempdir().unwrap();
    let star = repo().join("examples/star.png");
    let logits = repo().join("models/matting/testing/logits");
    let result = generate().arg(&star).args(["--format", "stl", "--no-previews", "--matting-model"]).arg(&logits).arg("-o").arg(out.path()).output().unwrap();
    let stderr = text(&result.stderr);
    // Refused at the node's start (setup, exit 3) with its stable code; no job ran.
    assert_eq!(result.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("(matting_contract)") && stderr.contains("matting model logits") && stderr.contains("[-4"), "{stderr}");
    assert!(!out.path().join("star.stl").exists());
    let half = repo().join("models/matting/testing/half-size");
    let result = generate().arg(&star).arg("--matting-model").arg(&half).arg("-o").arg(out.path()).output().unwrap();
    assert_eq!(result.status.code(), Some(3));
    assert!(text(&result.stderr).contains("(matting_contract)") && text(&result.stderr).contains("output shape [1, 1, 32, 32]"), "{}", text(&result.stderr));
    // Flags that cannot work are usage errors, before anything starts.
    for (args, needle) in [
        (vec!["--matting", "learned"], "needs matting.model"),
        (vec!["--matting", "flood", "--matting-model", logits.to_str().unwrap()], "takes no --matting-model"),
        (vec!["--matting-model", "/nonexistent/matting"], "no manifest.toml there"),
        (vec!["--matting", "learned", "--nats", "nats://127.0.0.1:1"], "deployment's nodes use their own"),
    ] {
        let result = generate().arg(&star).args(&args).output().unwrap();
        assert_eq!(result.status.code(), Some(2), "{args:?}: {}", text(&result.stderr));
        assert!(text(&result.stderr).contains(needle), "{args:?}: {}", text(&result.stderr));
    }
}

/// `NAME = value` / `Label : value` numbers of a tool's report, by their label.
fn reported(text: &str, label: &str) -> f64 {
    let at = text.find(label).unwrap_or_else(|| panic!("{label:?} not in:\n{text}"));
    let rest = text[at + label.len()..].trim_start_matches(|c: char| c == ' ' || c == ':' || c == '=');
    rest.split_whitespace().next().and_then(|v| v.trim_end_matches(',').parse().ok()).unwrap_or_else(|| panic!("{label:?} has no number in:\n{text}"))
}

/// Runs `tool args`, or `None` (with a message) when the tool is not installed.
fn run_tool(tool: &str, args: &[&std::ffi::OsStr]) -> Option<Output> {
    match Command::new(tool).args(args).output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED: {tool} is not installed (deploy/setup.sh --test installs admesh and prusa-slicer)");
            None
        }
        Err(e) => panic!("{tool}: {e}"),
    }
}

#[test]
fn generate_report_agrees_with_admesh_and_prusa_slicer() {
    let out = tempfile::tempdir().unwrap();
    let checker = out.path().join("checker.png");
    png(&checker, 600, 600, |x, y| {
        let inside = (0.05..0.95).contains(&x) && (0.05..0.95).contains(&y);
        let (i, j) = (((x - 0.05) / 0.1125) as i32, ((y - 0.05) / 0.1125) as i32);
        if inside && (i + j) % 2 == 0 { [20, 20, 20] } else { [250, 250, 250] }
    });
    let result = generate().arg(&checker).arg(repo().join("examples/star.png")).args(["--format", "stl", "--no-previews", "--json", "-o"]).arg(out.path()).output().unwrap();
    assert_eq!(result.status.code(), Some(0), "{}", text(&result.stderr));
    let doc = json_of(&result);
    for image in doc["images"].as_array().unwrap() {
        let report = &image["report"];
        let stl = std::path::PathBuf::from(image["files"][0].as_str().unwrap());
        let name = stl.file_stem().unwrap().to_string_lossy().into_owned();
        let bbox: Vec<f64> = report["bbox_mm"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let volume = report["volume_mm3"].as_f64().unwrap();
        let shells = report["components"].as_f64().unwrap();
        let floating = report["checks"]["floating_parts"].as_u64().unwrap();
        let Some(admesh) = run_tool("admesh", &[stl.as_os_str()]) else { return };
        let a = text(&admesh.stdout);
        assert!(admesh.status.success(), "{a}");
        // Same volume, shells and box; every facet connected (closed, 2-manifold to admesh).
        assert!((reported(&a, "Volume") - volume).abs() < 1e-3 * volume, "{name}: admesh volume vs {volume}:\n{a}");
        assert_eq!(reported(&a, "Number of parts"), shells, "{name}:\n{a}");
        assert_eq!(reported(&a, "Total disconnected facets"), 0.0, "{name}:\n{a}");
        for (axis, size) in ["X", "Y", "Z"].iter().zip(&bbox) {
            let extent = reported(&a, &format!("Max {axis} =")) - reported(&a, &format!("Min {axis} ="));
            assert!((extent - size).abs() < 0.01, "{name}: {axis} {extent} vs {size}");
        }
        let Some(info) = run_tool("prusa-slicer", &["--loglevel".as_ref(), "1".as_ref(), "--info".as_ref(), stl.as_os_str()]) else { return };
        let p = text(&info.stdout);
        assert!(p.contains("manifold = yes"), "{name}:\n{p}");
        assert_eq!(reported(&p, "number_of_parts"), shells, "{name}:\n{p}");
        assert!((reported(&p, "volume") - volume).abs() < 1e-3 * volume, "{name}:\n{p}");
        assert!((reported(&p, "size_z") - bbox[2]).abs() < 0.01 && (reported(&p, "min_z")).abs() < 1e-4, "{name} rests on the bed:\n{p}");
        // Parts in mid-air are layers with nothing under them: the slicer says so exactly
        // when the report counts floating parts.
        let gcode = out.path().join(format!("{name}.gcode"));
        let sliced = run_tool("prusa-slicer", &["--loglevel".as_ref(), "2".as_ref(), "--export-gcode".as_ref(), "--output".as_ref(), gcode.as_os_str(), stl.as_os_str()]).unwrap();
        let said = format!("{}{}", text(&sliced.stdout), text(&sliced.stderr));
        assert_eq!(said.contains("Empty layer"), floating > 0, "{name}: {floating} floating parts; PrusaSlicer said:\n{said}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_nats_is_a_pure_client() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let _node = NodeProcess::start(&nats, NodeOptions { node_id: "shop-node", store: store.path(), env: vec![] }).await;
    let (_client, key) = common::agent(&nats.url, "shop").await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("shop.key");
    std::fs::write(&key_file, key.to_text()).unwrap();
    let agents_before = bucket_keys(&nats.url, "orfeas_agents").await;
    let nodes_before = bucket_keys(&nats.url, "orfeas_nodes").await;

    // Without an agent it refuses before doing anything (usage).
    let url = nats.url.clone();
    let refused = tokio::task::spawn_blocking(move || generate().arg(repo().join("examples/star.png")).args(["--nats", &url]).output().unwrap()).await.unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("--agent NAME --key FILE"), "{}", text(&refused.stderr));

    let (url, out, key_arg) = (nats.url.clone(), dir.path().join("star.glb"), key_file.clone());
    let result = tokio::task::spawn_blocking(move || {
        generate().arg(repo().join("examples/star.png")).args(["--nats", &url, "--agent", "shop", "--key"]).arg(&key_arg).arg("-o").arg(&out).output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(result.status.code(), Some(0), "{}", text(&result.stderr));
    assert!(dir.path().join("star.glb").is_file() && dir.path().join("star.report.json").is_file());
    // No node joined the deployment and no key was added.
    assert_eq!(bucket_keys(&nats.url, "orfeas_nodes").await, nodes_before, "generate started a node");
    assert_eq!(bucket_keys(&nats.url, "orfeas_agents").await, agents_before, "generate registered a key");
}

async fn bucket_keys(url: &str, bucket: &str) -> Vec<String> {
    use futures::StreamExt;
    let client = orfeas_actors::bus::connect(url, "orfeas-test").await.unwrap();
    let kv = async_nats::jetstream::new(client).get_key_value(bucket).await.unwrap();
    let mut keys: Vec<String> = kv.keys().await.unwrap().filter_map(|k| async move { k.ok() }).collect().await;
    keys.sort();
    keys
}
