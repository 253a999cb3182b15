//! `orfeas generate` on the embedded default, run as a user would: the real
//! binary, a bundled image in, GLB + STL out — and no `nats-server` left
//! behind whether it succeeds, fails, is interrupted or is killed.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{assert_closed, glb_triangles, orfeas_bin, repo};

/// Embedded servers started by `generate` (their config lives in a temp dir
/// named `orfeas-nats-*`), with their parent pid.
fn embedded_servers() -> Vec<(u32, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("nats-server") && cmdline.contains("orfeas-nats-") {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // Field 4 of /proc/<pid>/stat (after the parenthesised name) is the parent pid.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|p| p.parse().ok()).unwrap_or(0);
            found.push((pid, ppid));
        }
    }
    found
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn generate() -> Command {
    let mut command = Command::new(orfeas_bin());
    command.arg("generate").env_remove("ORFEAS_NATS_URL").env("ORFEAS_DEVICES_CPU_THREADS", "1").stdin(Stdio::null());
    command
}

#[test]
fn embedded_generate_writes_files_and_never_leaves_a_server() {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("mug.glb");

    // 1. Success: GLB + STL next to the requested name (the -o extension alone would pick GLB only).
    let result = generate().arg(repo().join("examples/mug.png")).args(["--format", "glb,stl", "-o"]).arg(&target).output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "generate failed: {stderr}");
    assert!(stderr.contains("completed"), "progress is printed: {stderr}");
    let glb = std::fs::read(&target).expect("GLB written");
    let (positions, triangles) = glb_triangles(&glb);
    assert_closed(&positions, &triangles);
    let stl = std::fs::read(out.path().join("mug.stl")).expect("STL written");
    assert_eq!(stl.len(), 84 + 50 * u32::from_le_bytes(stl[80..84].try_into().unwrap()) as usize);
    assert!(embedded_servers().is_empty(), "server left after success");

    // Every format, decimated and scaled, checked by trimesh.
    let result = generate()
        .arg(repo().join("examples/star.png"))
        .args(["--format", "obj,ply,3mf", "--faces", "4000", "--size-mm", "60", "-o"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    for ext in ["obj", "ply", "3mf"] {
        let verdict = common::trimesh_check(&out.path().join(format!("star.{ext}")));
        assert!(verdict.watertight && verdict.winding_consistent, "{ext}: {verdict:?}");
        assert!(verdict.faces <= 4400, "{ext}: {verdict:?}");
    }

    // Textured: the GLB embeds the image; the OBJ's MTL and PNG (its result parts) land beside it.
    let result = generate()
        .arg(repo().join("examples/star.png"))
        .args(["--format", "obj,glb", "--texture", "--faces", "4000", "-o"])
        .arg(out.path().join("textured/star.obj"))
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let obj = std::fs::read_to_string(out.path().join("textured/star.obj")).unwrap();
    assert!(obj.contains("mtllib model.mtl"), "the OBJ names its material library");
    assert!(out.path().join("textured/model.png").is_file());
    for ext in ["obj", "glb"] {
        let verdict = common::trimesh_check(&out.path().join(format!("textured/star.{ext}")));
        assert!(verdict.watertight && verdict.visual == "texture", "{ext}: {verdict:?}");
    }

    // 2. Failure (a file that is not an image): non-zero exit, clear message.
    let bogus = out.path().join("notes.png");
    std::fs::write(&bogus, "just text").unwrap();
    let result = generate().arg(&bogus).arg("-o").arg(out.path()).output().unwrap();
    assert!(!result.status.success());
    assert!(String::from_utf8_lossy(&result.stderr).contains("not a PNG, JPEG or WebP"), "{}", String::from_utf8_lossy(&result.stderr));
    // A job that fails inside the node (no object in a blank image).
    let blank = out.path().join("blank.png");
    std::fs::write(&blank, blank_png()).unwrap();
    let result = generate().arg(&blank).arg("-o").arg(out.path()).output().unwrap();
    assert_eq!(result.status.code(), Some(1), "failed job gives exit code 1: {}", String::from_utf8_lossy(&result.stderr));
    assert!(String::from_utf8_lossy(&result.stderr).contains("invalid_image"));
    assert!(embedded_servers().is_empty(), "server left after failure");

    // 3. Ctrl-C while a job runs (a slow simulated device keeps it running):
    //    a clean shutdown (exit code 130 from the handler, not death by signal).
    let mut child = generate()
        .env("ORFEAS_NODE_SIMULATED_LATENCY_MS", "60000")
        .arg(repo().join("examples/mug.png"))
        .arg("-o")
        .arg(out.path().join("interrupted.glb"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let lines = stderr_lines(child.stderr.take().unwrap());
    wait_for_line(&lines, "preprocessing", Duration::from_secs(60));
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "generate did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(25));
    };
    assert_eq!(status.code(), Some(130), "Ctrl-C is handled: {status:?}");
    assert!(embedded_servers().is_empty(), "server left after Ctrl-C");

    // 4. SIGKILL: the kernel's parent-death signal takes the server down too.
    let mut child = generate()
        .env("ORFEAS_NODE_SIMULATED_LATENCY_MS", "60000")
        .arg(repo().join("examples/mug.png"))
        .arg("-o")
        .arg(out.path().join("killed.glb"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_until("the embedded server to start", Duration::from_secs(30), || embedded_servers().iter().any(|&(_, ppid)| ppid == pid));
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until("the orphaned server to die", Duration::from_secs(10), || embedded_servers().is_empty());
}

fn stderr_lines(stderr: std::process::ChildStderr) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return,
            Ok(_) => {}
            Err(e) => panic!("no line containing {needle:?} within {timeout:?}: {e}"),
        }
    }
}

/// A valid 8×8 PNG of one flat colour: nothing to separate from the background.
fn blank_png() -> Vec<u8> {
    let mut bytes = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new(&mut bytes);
    image::ImageEncoder::write_image(encoder, &[200u8; 8 * 8 * 3], 8, 8, image::ExtendedColorType::Rgb8).unwrap();
    bytes
}
