//! The agent and operator commands, black-box: make a key, register it,
//! submit an image and wait for the files — all through the real binary
//! against a real nats-server and node.

mod common;

use std::process::Command;

use common::{orfeas_bin, repo, NatsServer, NodeOptions, NodeProcess};

fn orfeas(args: &[&str]) -> std::process::Output {
    Command::new(orfeas_bin()).args(args).env_remove("ORFEAS_NATS_URL").output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_keys_agents_submit_round_trip() {
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let _node = NodeProcess::start(&nats, NodeOptions { node_id: "cli", store: store.path(), env: vec![] }).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dora.key");
    let key_arg = key.to_str().unwrap();

    let made = orfeas(&["keys", "new", "--out", key_arg]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let pubkey = text(&made.stdout).trim().to_string();
    assert_eq!(pubkey.len(), 64);
    assert!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o077 == 0, "secret key readable by others");
    let shown = orfeas(&["keys", "public", key_arg]);
    assert_eq!(text(&shown.stdout).trim(), pubkey);
    // A second `keys new` never overwrites a key.
    assert!(!orfeas(&["keys", "new", "--out", key_arg]).status.success());

    // Submitting before registration: refused with unknown_key.
    let star = repo().join("examples/star.png");
    let star_arg = star.to_str().unwrap();
    let refused = orfeas(&["submit", "--nats", &nats.url, "--agent", "dora", "--key", key_arg, star_arg, "--wait", "--timeout-s", "60"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(text(&refused.stdout).contains("unknown_key"), "{}", text(&refused.stdout));

    let added = orfeas(&["agents", "add", "dora", "--pubkey", &pubkey, "--nats", &nats.url]);
    assert!(added.status.success(), "{}", text(&added.stderr));
    assert!(!orfeas(&["agents", "add", "Dora!", "--pubkey", &pubkey, "--nats", &nats.url]).status.success(), "bad agent name accepted");

    let out = dir.path().join("out");
    let submitted = orfeas(&[
        "submit", "--nats", &nats.url, "--agent", "dora", "--key", key_arg, star_arg, "--format", "glb,stl", "--wait", "-o",
        out.to_str().unwrap(), "--timeout-s", "120",
    ]);
    let stdout = text(&submitted.stdout);
    assert!(submitted.status.success(), "{stdout}\n{}", text(&submitted.stderr));
    for line in ["accepted", "inference", "completed"] {
        assert!(stdout.contains(line), "missing {line:?} in {stdout}");
    }
    assert!(out.join("star.glb").is_file() && out.join("star.stl").is_file(), "{stdout}");

    // By reference: uploaded to `orfeas_uploads` under the agent's prefix, then submitted.
    let by_ref = orfeas(&["submit", "--nats", &nats.url, "--agent", "dora", "--key", key_arg, star_arg, "--by-reference", "--wait", "--timeout-s", "120"]);
    let stdout = text(&by_ref.stdout);
    assert!(by_ref.status.success(), "{stdout}\n{}", text(&by_ref.stderr));
    assert!(stdout.starts_with("uploaded dora/") && stdout.contains(".png\nsubmitted job"), "{stdout}");
    assert!(stdout.contains("completed"), "{stdout}");

    // Over the inline cap: uploaded by itself. A red disc on a noisy light
    // background (noise below the background tolerance), RGB, 2600² pixels:
    // the noise keeps the PNG over 8 MiB.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 17) as u8
    };
    let big = image::RgbImage::from_fn(2600, 2600, |x, y| {
        let (dx, dy) = (x as f32 - 1300.0, y as f32 - 1300.0);
        if dx * dx + dy * dy < 600.0 * 600.0 {
            image::Rgb([200, 30, 30])
        } else {
            image::Rgb([230 + noise(), 230 + noise(), 230 + noise()])
        }
    });
    let big_path = dir.path().join("big.png");
    big.save(&big_path).unwrap();
    let big_len = std::fs::metadata(&big_path).unwrap().len();
    assert!(big_len > orfeas_wire::v1::MAX_INLINE_IMAGE_BYTES as u64, "{big_len} bytes is not over the inline cap");
    let auto = orfeas(&["submit", "--nats", &nats.url, "--agent", "dora", "--key", key_arg, big_path.to_str().unwrap(), "--wait", "--timeout-s", "120"]);
    let stdout = text(&auto.stdout);
    assert!(auto.status.success(), "{stdout}\n{}", text(&auto.stderr));
    assert!(stdout.starts_with("uploaded dora/") && stdout.contains("completed"), "{stdout}");
}

use std::os::unix::fs::PermissionsExt;

/// A .npy file (format 1.0, `<f4`, C order) holding a sphere occupancy.
fn sphere_npy(n: usize, radius: f32) -> Vec<u8> {
    let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, {n}, {n}), }}");
    let pad = 64 - (10 + header.len() + 1) % 64;
    let header = format!("{header}{}\n", " ".repeat(pad % 64));
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    let c = (n - 1) as f32 / 2.0;
    for z in 0..n {
        for y in 0..n {
            for x in 0..n {
                let p = [x as f32 - c, y as f32 - c, z as f32 - c].map(|v| v / c);
                let r = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt();
                out.extend_from_slice(&(radius - r).to_le_bytes());
            }
        }
    }
    out
}

#[test]
fn cli_mesh_turns_a_volume_into_a_printable_file() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("sphere.npy");
    std::fs::write(&npy, sphere_npy(48, 0.7)).unwrap();
    let out = dir.path().join("sphere.3mf");
    let result = orfeas(&["mesh", npy.to_str().unwrap(), "-o", out.to_str().unwrap(), "--faces", "3000", "--size-mm", "40", "--previews"]);
    let stdout = text(&result.stdout);
    assert!(result.status.success(), "{stdout}\n{}", text(&result.stderr));
    assert!(stdout.contains("closed: true  2-manifold: true  winding consistent: true"), "{stdout}");
    assert!(dir.path().join("sphere.front.png").is_file());
    let verdict = common::trimesh_check(&out);
    assert!(verdict.watertight && verdict.winding_consistent, "{verdict:?}");
    assert!(verdict.faces <= 3300, "decimated: {verdict:?}");
    // A 40 mm sphere: volume 4/3·π·20³ ≈ 33 510 mm³ (faceting loses a little).
    assert!((verdict.volume - 33_510.0).abs() / 33_510.0 < 0.06, "{verdict:?}");
    // Wrong inputs get clear errors.
    let bad = orfeas(&["mesh", npy.to_str().unwrap(), "-o", dir.path().join("x.fbx").to_str().unwrap()]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("not one of glb, stl, obj, ply, 3mf"));
    std::fs::write(dir.path().join("junk.npy"), b"not numpy").unwrap();
    let bad = orfeas(&["mesh", dir.path().join("junk.npy").to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("is not a float32 C-order 3-D .npy"), "{}", text(&bad.stderr));
}

/// A .npy occupancy of a cube turned 45° about the view axis (z): in the print frame
/// it stands on an edge.
fn cube_on_edge_npy(n: usize) -> Vec<u8> {
    let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, {n}, {n}), }}");
    let pad = 64 - (10 + header.len() + 1) % 64;
    let header = format!("{header}{}\n", " ".repeat(pad % 64));
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    let c = (n - 1) as f32 / 2.0;
    let s = std::f32::consts::FRAC_1_SQRT_2;
    for z in 0..n {
        for y in 0..n {
            for x in 0..n {
                let p = [x as f32 - c, y as f32 - c, z as f32 - c].map(|v| v / c);
                let q = [s * p[0] - s * p[1], s * p[0] + s * p[1], p[2]];
                out.extend_from_slice(&(0.5 - q.iter().fold(0f32, |m, v| m.max(v.abs()))).to_le_bytes());
            }
        }
    }
    out
}

/// The `bed contact: N mm²` figure of `orfeas mesh`'s report.
fn bed_contact(stdout: &str) -> f64 {
    let at = stdout.find("bed contact: ").unwrap_or_else(|| panic!("no bed contact in {stdout}")) + "bed contact: ".len();
    stdout[at..].split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn cli_mesh_lay_flat_puts_a_face_on_the_bed() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("cube.npy");
    std::fs::write(&npy, cube_on_edge_npy(48)).unwrap();
    let npy = npy.to_str().unwrap();
    let (edge, flat) = (dir.path().join("edge.stl"), dir.path().join("flat.stl"));
    let standing = orfeas(&["mesh", npy, "-o", edge.to_str().unwrap(), "--no-smooth", "--size-mm", "40"]);
    assert!(standing.status.success(), "{}", text(&standing.stderr));
    let laid = orfeas(&["mesh", npy, "-o", flat.to_str().unwrap(), "--no-smooth", "--size-mm", "40", "--lay-flat"]);
    assert!(laid.status.success(), "{}", text(&laid.stderr));
    let (standing, laid) = (text(&standing.stdout), text(&laid.stdout));
    // On its edge the cube touches the bed along a strip (the voxel chamfer, about a
    // millimetre wide) and its lower faces lean 45°; laid flat, a whole face rests on
    // the bed (about 28² mm²: the cube stays turned 45° on the bed, its 40 mm diagonal
    // the longest side).
    assert!(bed_contact(&laid) > 600.0, "{laid}");
    assert!(bed_contact(&laid) > 10.0 * bed_contact(&standing), "{standing}\n{laid}");
    assert!(standing.contains("warning overhangs"), "{standing}");
    for issue in ["small_bed_contact", "tips_over", "warning overhangs"] {
        assert!(!laid.contains(issue), "{issue}: {laid}");
    }
    let verdict = common::trimesh_check(&flat);
    assert!(verdict.watertight && verdict.winding_consistent, "{verdict:?}");
    // The turn keeps the longest side (40 mm) and so the volume.
    let before = common::trimesh_check(&edge);
    assert!((verdict.volume - before.volume).abs() < 0.01 * before.volume, "{verdict:?} vs {before:?}");
}

#[test]
fn cli_mesh_textures_colours_and_checks_the_build_volume() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("sphere.npy");
    std::fs::write(&npy, sphere_npy(40, 0.7)).unwrap();
    // Left half red, right half blue.
    let png = dir.path().join("front.png");
    image::RgbaImage::from_fn(16, 16, |x, _| if x < 8 { image::Rgba([220, 20, 20, 255]) } else { image::Rgba([20, 20, 220, 255]) }).save(&png).unwrap();
    let (png, npy) = (png.to_str().unwrap(), npy.to_str().unwrap());

    // A textured OBJ: the MTL and PNG it names sit beside it, and trimesh reads the texture.
    let obj = dir.path().join("ball.obj");
    let args = ["mesh", npy, "-o", obj.to_str().unwrap(), "--faces", "2000", "--size-mm", "40", "--texture", png, "--build-volume-mm", "30,30,30"];
    let result = orfeas(&args);
    let stdout = text(&result.stdout);
    assert!(result.status.success(), "{stdout}\n{}", text(&result.stderr));
    assert!(dir.path().join("ball.mtl").is_file() && dir.path().join("ball.png").is_file(), "{stdout}");
    assert!(std::fs::read_to_string(&obj).unwrap().contains("mtllib ball.mtl"));
    let verdict = common::trimesh_check(&obj);
    assert!(verdict.watertight && verdict.visual == "texture", "{verdict:?}");
    // 40 mm does not fit a 30 mm printer, and the report says so.
    assert!(stdout.contains("fits build volume: false") && stdout.contains("exceeds the build volume 30 × 30 × 30 mm"), "{stdout}");

    // A textured GLB is one file; a coloured PLY carries the image's colours per vertex.
    let glb = dir.path().join("ball.glb");
    let result = orfeas(&["mesh", npy, "-o", glb.to_str().unwrap(), "--faces", "2000", "--texture", png]);
    assert!(result.status.success(), "{}", text(&result.stderr));
    assert_eq!(common::trimesh_check(&glb).visual, "texture");
    let ply = dir.path().join("ball.ply");
    let result = orfeas(&["mesh", npy, "-o", ply.to_str().unwrap(), "--faces", "2000", "--colour", png]);
    assert!(result.status.success(), "{}", text(&result.stderr));
    let verdict = common::trimesh_check(&ply);
    assert!(verdict.watertight && verdict.visual == "vertex", "{verdict:?}");
    let bad = orfeas(&["mesh", npy, "-o", ply.to_str().unwrap(), "--colour", png, "--texture", png]);
    assert!(!bad.status.success(), "--colour and --texture exclude each other");
}
