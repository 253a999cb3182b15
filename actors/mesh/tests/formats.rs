//! Every export format read back by a small independent reader: face counts, frames,
//! scale, winding and colours.

#[path = "support/shapes.rs"]
mod shapes;

use std::io::Read;

use orfeas_mesh::{
    export, export_files, process, project_texture, ExportFormat, Image, ImagePlane, Inside, Mesh,
    MeshOptions,
};
use shapes::*;

/// A decimated box 1.0 × 0.6 × 0.8 (world, Y up) with colours.
fn model() -> Mesh {
    let data = sample(48, -1.0, 1.0, cuboid([0.5, 0.3, 0.4]));
    let options = MeshOptions {
        target_faces: Some(3_000),
        ..MeshOptions::default()
    };
    let mut mesh = process(&volume(&data, 48, -1.0, 1.0, 0.0, Inside::Below), &options)
        .expect("process")
        .mesh;
    mesh.colors = Some(vec![[1.0, 0.215_86, 0.0]; mesh.positions.len()]); // sRGB (255, 128, 0)
    mesh
}

/// Signed volume and box of a triangle list.
fn measure(p: &[[f32; 3]], f: &[[u32; 3]]) -> (f64, [f32; 3], [f32; 3]) {
    let mut lo = [f32::INFINITY; 3];
    let mut hi = [f32::NEG_INFINITY; 3];
    for q in p {
        for i in 0..3 {
            lo[i] = lo[i].min(q[i]);
            hi[i] = hi[i].max(q[i]);
        }
    }
    let v = f
        .iter()
        .map(|t| {
            let [a, b, c] = t.map(|i| p[i as usize].map(f64::from));
            (a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
                + a[2] * (b[0] * c[1] - b[1] * c[0]))
                / 6.0
        })
        .sum();
    (v, lo, hi)
}

fn read_obj(bytes: &[u8]) -> (Vec<[f32; 3]>, Vec<[f32; 3]>, Vec<[u32; 3]>, usize) {
    let text = std::str::from_utf8(bytes).expect("utf-8");
    let (mut p, mut colors, mut f, mut normals) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for line in text.lines() {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("v") => {
                let xs: Vec<f32> = it.map(|t| t.parse().expect("number")).collect();
                p.push([xs[0], xs[1], xs[2]]);
                if xs.len() == 6 {
                    colors.push([xs[3], xs[4], xs[5]]);
                }
            }
            Some("vn") => normals += 1,
            Some("f") => {
                let v: Vec<u32> = it
                    .map(|t| {
                        let (a, n) = t.split_once("//").expect("v//vn");
                        assert_eq!(a, n);
                        a.parse::<u32>().expect("index") - 1
                    })
                    .collect();
                f.push([v[0], v[1], v[2]]);
            }
            _ => {}
        }
    }
    (p, colors, f, normals)
}

fn read_ply(bytes: &[u8]) -> (Vec<[f32; 3]>, Vec<[u8; 3]>, Vec<[u32; 3]>) {
    let end = bytes
        .windows(11)
        .position(|w| w == b"end_header\n")
        .expect("header")
        + 11;
    let header = std::str::from_utf8(&bytes[..end]).expect("ascii header");
    assert!(header.contains("format binary_little_endian 1.0"));
    let count = |what: &str| -> usize {
        header
            .lines()
            .find_map(|l| l.strip_prefix(&format!("element {what} ")))
            .expect("element")
            .parse()
            .expect("count")
    };
    let (nv, nf) = (count("vertex"), count("face"));
    let colored = header.contains("property uchar red");
    let stride = 24 + if colored { 3 } else { 0 };
    let body = &bytes[end..];
    let f32_at = |at: usize| f32::from_le_bytes(body[at..at + 4].try_into().expect("4"));
    let (mut p, mut c, mut f) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..nv {
        p.push([
            f32_at(i * stride),
            f32_at(i * stride + 4),
            f32_at(i * stride + 8),
        ]);
        if colored {
            let at = i * stride + 24;
            c.push([body[at], body[at + 1], body[at + 2]]);
        }
    }
    let mut at = nv * stride;
    for _ in 0..nf {
        assert_eq!(body[at], 3);
        let u = |k: usize| {
            u32::from_le_bytes(body[at + 1 + 4 * k..at + 5 + 4 * k].try_into().expect("4"))
        };
        f.push([u(0), u(1), u(2)]);
        at += 13;
    }
    assert_eq!(at, body.len(), "trailing bytes");
    (p, c, f)
}

/// Unzips a 3MF and parses its model part roughly (attribute scanning).
fn read_3mf(bytes: &[u8]) -> (String, Vec<[f32; 3]>, Vec<[u32; 3]>) {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("zip");
    let mut names: Vec<String> = archive.file_names().map(String::from).collect();
    names.sort();
    assert_eq!(
        names,
        ["3D/3dmodel.model", "[Content_Types].xml", "_rels/.rels"]
    );
    let mut rels = String::new();
    archive
        .by_name("_rels/.rels")
        .expect("rels")
        .read_to_string(&mut rels)
        .expect("utf-8");
    assert!(rels.contains("Target=\"/3D/3dmodel.model\""));
    let mut model = String::new();
    archive
        .by_name("3D/3dmodel.model")
        .expect("model")
        .read_to_string(&mut model)
        .expect("utf-8");
    let attr = |tag: &str, name: &str| -> f64 {
        let at = tag.find(&format!(" {name}=\"")).expect("attribute") + name.len() + 3;
        tag[at..at + tag[at..].find('"').expect("quote")]
            .parse()
            .expect("number")
    };
    let (mut p, mut f) = (Vec::new(), Vec::new());
    for tag in model.split('<') {
        if tag.starts_with("vertex ") {
            p.push(["x", "y", "z"].map(|a| attr(tag, a) as f32));
        } else if tag.starts_with("triangle ") {
            f.push(["v1", "v2", "v3"].map(|a| attr(tag, a) as u32));
        }
    }
    (model, p, f)
}

#[test]
fn obj_ply_3mf_read_back_in_the_world_and_print_frames() {
    let mesh = model();
    let faces = mesh.indices.len();
    let (world_volume, wlo, whi) = measure(&mesh.positions, &mesh.indices);
    assert!(world_volume > 0.0);

    // Without a size OBJ and PLY keep the world frame exactly.
    let (p, colors, f, normals) = read_obj(&export(&mesh, ExportFormat::Obj, None).unwrap());
    assert_eq!(
        (f.len(), p.len(), normals),
        (faces, mesh.positions.len(), mesh.positions.len())
    );
    assert_eq!(f, mesh.indices);
    assert_eq!(p, mesh.positions);
    assert!((colors[0][0] - 1.0).abs() < 1e-3 && (colors[0][1] - 0.502).abs() < 2e-3);
    let (p, c, f) = read_ply(&export(&mesh, ExportFormat::Ply, None).unwrap());
    assert_eq!((f.len(), p.len()), (faces, mesh.positions.len()));
    assert_eq!(p, mesh.positions);
    assert_eq!(c[0], [255, 128, 0]);

    // With a size: Z up, bottom centre at the origin, longest side = size.
    let size = 80.0f32;
    let longest = (0..3).map(|i| whi[i] - wlo[i]).fold(0.0, f32::max);
    let k = f64::from(size / longest);
    let check_print = |p: &[[f32; 3]], f: &[[u32; 3]], what: &str| {
        assert_eq!(f.len(), faces, "{what}");
        let (v, lo, hi) = measure(p, f);
        assert_close(v, world_volume * k.powi(3), 1e-4, what);
        assert!(lo[2].abs() < 1e-4, "{what}: rests on z = 0: {lo:?}");
        assert!(
            (lo[0] + hi[0]).abs() < 1e-3 && (lo[1] + hi[1]).abs() < 1e-3,
            "{what}: centred"
        );
        // World height (y) became z; world depth (z) became y.
        assert!(
            (f64::from(hi[2] - lo[2]) - f64::from(whi[1] - wlo[1]) * k).abs() < 1e-3,
            "{what}"
        );
        assert!(
            (f64::from(hi[1] - lo[1]) - f64::from(whi[2] - wlo[2]) * k).abs() < 1e-3,
            "{what}"
        );
    };
    let (p, _, f, _) = read_obj(&export(&mesh, ExportFormat::Obj, Some(size)).unwrap());
    check_print(&p, &f, "OBJ");
    let (p, _, f) = read_ply(&export(&mesh, ExportFormat::Ply, Some(size)).unwrap());
    check_print(&p, &f, "PLY");
    let (model, p, f) = read_3mf(&export(&mesh, ExportFormat::ThreeMf, Some(size)).unwrap());
    assert!(model.contains("unit=\"millimeter\""));
    assert!(model.contains("color=\"#FF8000\""));
    check_print(&p, &f, "3MF");
    // STL: 50 bytes per face, same placement.
    let stl = export(&mesh, ExportFormat::Stl, Some(size)).unwrap();
    assert_eq!(stl.len(), 84 + 50 * faces);
    let tris: Vec<[f32; 3]> = (0..faces)
        .flat_map(|i| {
            (1..4).map(move |v| std::array::from_fn(|c| (84 + 50 * i + 12 * v + 4 * c) as f32))
        })
        .collect();
    let at = |o: f32| f32::from_le_bytes(stl[o as usize..o as usize + 4].try_into().unwrap());
    let p: Vec<[f32; 3]> = tris.iter().map(|o| o.map(at)).collect();
    let f: Vec<[u32; 3]> = (0..faces as u32)
        .map(|i| [3 * i, 3 * i + 1, 3 * i + 2])
        .collect();
    check_print(&p, &f, "STL");
}

#[test]
fn glb_is_scaled_to_metres_keeps_y_up_and_stands_on_the_ground() {
    let mesh = model();
    let plain = export(&mesh, ExportFormat::Glb, None).unwrap();
    assert_eq!(plain, orfeas_mesh::to_glb(&mesh).unwrap());
    let glb = export(&mesh, ExportFormat::Glb, Some(100.0)).unwrap();
    let json_len = u32::from_le_bytes(glb[12..16].try_into().unwrap()) as usize;
    let root: serde_json::Value = serde_json::from_slice(&glb[20..20 + json_len]).unwrap();
    let pos = &root["accessors"][0];
    let (lo, hi): (Vec<f64>, Vec<f64>) = (
        serde_json::from_value(pos["min"].clone()).unwrap(),
        serde_json::from_value(pos["max"].clone()).unwrap(),
    );
    let ext: Vec<f64> = (0..3).map(|i| hi[i] - lo[i]).collect();
    assert!((ext[0] - 0.1).abs() < 1e-5, "longest side 0.1 m: {ext:?}");
    assert!(ext[1] < ext[2] && ext[2] < ext[0], "Y up kept: {ext:?}");
    // Placed like the print formats: bottom centre at the origin.
    assert_eq!(lo[1], 0.0, "stands on y = 0: {lo:?}");
    assert!(
        (lo[0] + hi[0]).abs() < 1e-6 && (lo[2] + hi[2]).abs() < 1e-6,
        "centred: {lo:?} {hi:?}"
    );
    // The world-frame GLB is where the model was.
    let json_len = u32::from_le_bytes(plain[12..16].try_into().unwrap()) as usize;
    let root: serde_json::Value = serde_json::from_slice(&plain[20..20 + json_len]).unwrap();
    let min: Vec<f32> = serde_json::from_value(root["accessors"][0]["min"].clone()).unwrap();
    let world_min = (0..3).map(|i| mesh.positions.iter().map(|p| p[i]).fold(f32::MAX, f32::min));
    assert_eq!(min, world_min.collect::<Vec<_>>());
}

#[test]
fn export_rejects_unusable_meshes() {
    for format in [
        ExportFormat::Glb,
        ExportFormat::Stl,
        ExportFormat::Obj,
        ExportFormat::Ply,
        ExportFormat::ThreeMf,
    ] {
        assert_eq!(
            export(&Mesh::default(), format, None).unwrap_err().code(),
            "bad_mesh"
        );
        let mut mesh = model();
        mesh.colors = Some(vec![[0.0; 3]; 2]);
        assert_eq!(
            export(&mesh, format, Some(10.0)).unwrap_err().code(),
            "bad_mesh"
        );
    }
}

/// A 32 × 32 image: a red-to-blue gradient inside a disc, transparent outside.
fn disc_image() -> Image {
    let mut rgba = Vec::new();
    for y in 0..32 {
        for x in 0..32 {
            let inside = (x as f32 - 15.5).hypot(y as f32 - 15.5) < 14.0;
            rgba.extend([
                8 * x as u8,
                40,
                255 - 8 * x as u8,
                if inside { 255 } else { 0 },
            ]);
        }
    }
    Image::new(32, 32, rgba).unwrap()
}

const PLANE: ImagePlane = ImagePlane {
    min: [-1.0, -1.0],
    max: [1.0, 1.0],
};

#[test]
fn textured_obj_comes_with_its_material_and_image() {
    let mesh = model();
    let texture = project_texture(&mesh, &disc_image(), &PLANE);
    let files = export_files(
        &mesh,
        ExportFormat::Obj,
        Some(80.0),
        Some(&texture),
        "apple",
    )
    .unwrap();
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["apple.obj", "apple.mtl", "apple.png"]);
    let obj = std::str::from_utf8(&files[0].bytes).unwrap();
    assert!(obj.contains("mtllib apple.mtl\n") && obj.contains("usemtl orfeas\n"));
    let count = |prefix: &str| obj.lines().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(count("v "), mesh.positions.len());
    assert_eq!(count("vt "), mesh.positions.len());
    assert_eq!(count("f "), mesh.indices.len());
    // No vertex colours when textured; every corner names the same v, vt and vn.
    assert!(obj
        .lines()
        .filter(|l| l.starts_with("v "))
        .all(|l| l.split(' ').count() == 4));
    for line in obj.lines().filter(|l| l.starts_with("f ")) {
        for corner in line.split(' ').skip(1) {
            let ids: Vec<&str> = corner.split('/').collect();
            assert!(
                ids.len() == 3 && ids[0] == ids[1] && ids[1] == ids[2],
                "{line}"
            );
        }
    }
    // OBJ's v grows upward: vt v = 1 − glTF v.
    let first_vt: Vec<f32> = obj
        .lines()
        .find(|l| l.starts_with("vt "))
        .unwrap()
        .split(' ')
        .skip(1)
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(first_vt, [texture.uvs[0][0], 1.0 - texture.uvs[0][1]]);
    let mtl = std::str::from_utf8(&files[1].bytes).unwrap();
    assert!(
        mtl.contains("newmtl orfeas\n") && mtl.contains("map_Kd apple.png\n"),
        "{mtl}"
    );
    assert_eq!(files[2].bytes, texture.png);
    // Print placement as without a texture.
    let (p, _, f, _) = read_obj(&export(&mesh, ExportFormat::Obj, Some(80.0)).unwrap());
    let textured: Vec<[f32; 3]> = obj
        .lines()
        .filter(|l| l.starts_with("v "))
        .map(|l| {
            let c: Vec<f32> = l.split(' ').skip(1).map(|t| t.parse().unwrap()).collect();
            [c[0], c[1], c[2]]
        })
        .collect();
    assert_eq!((textured, f.len()), (p, mesh.indices.len()));

    // Untextured, and the formats without textures: one file named after the stem.
    for format in [
        ExportFormat::Obj,
        ExportFormat::Stl,
        ExportFormat::Ply,
        ExportFormat::ThreeMf,
    ] {
        let t = (format != ExportFormat::Obj).then_some(&texture);
        let files = export_files(&mesh, format, None, t, "m").unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].name, format!("m.{}", format.extension()));
        assert_eq!(files[0].bytes, export(&mesh, format, None).unwrap());
    }
    for bad in ["", "a b", "dir/m", "m\n"] {
        let err = export_files(&mesh, ExportFormat::Obj, None, Some(&texture), bad).unwrap_err();
        assert_eq!(err.code(), "export_failed", "{bad:?}");
    }
    let mut short = texture.clone();
    short.uvs.pop();
    for format in [ExportFormat::Obj, ExportFormat::Glb] {
        let err = export_files(&mesh, format, None, Some(&short), "m").unwrap_err();
        assert_eq!(err.code(), "bad_mesh");
    }
}

#[test]
fn textured_glb_embeds_the_image_and_drops_vertex_colours() {
    let mesh = model();
    let texture = project_texture(&mesh, &disc_image(), &PLANE);
    let files = export_files(&mesh, ExportFormat::Glb, Some(100.0), Some(&texture), "m").unwrap();
    assert_eq!(files.len(), 1);
    let glb = &files[0].bytes;
    let json_len = u32::from_le_bytes(glb[12..16].try_into().unwrap()) as usize;
    let root: serde_json::Value = serde_json::from_slice(&glb[20..20 + json_len]).unwrap();
    let bin = &glb[20 + json_len + 8..];
    let prim = &root["meshes"][0]["primitives"][0];
    assert!(prim["attributes"]["COLOR_0"].is_null(), "{prim}");
    let uv = &root["accessors"][prim["attributes"]["TEXCOORD_0"].as_u64().unwrap() as usize];
    assert_eq!(
        (uv["type"].as_str(), uv["count"].as_u64()),
        (Some("VEC2"), Some(mesh.positions.len() as u64))
    );
    let material = &root["materials"][prim["material"].as_u64().unwrap() as usize];
    let pbr = &material["pbrMetallicRoughness"];
    assert_eq!(pbr["metallicFactor"].as_f64(), Some(0.0));
    let tex = &root["textures"][pbr["baseColorTexture"]["index"].as_u64().unwrap() as usize];
    let image = &root["images"][tex["source"].as_u64().unwrap() as usize];
    assert_eq!(image["mimeType"], "image/png");
    let view = &root["bufferViews"][image["bufferView"].as_u64().unwrap() as usize];
    let (at, len) = (
        view["byteOffset"].as_u64().unwrap() as usize,
        view["byteLength"].as_u64().unwrap() as usize,
    );
    assert_eq!(&bin[at..at + len], texture.png.as_slice());
    // The UVs in the binary chunk are the texture's.
    let uv_view = &root["bufferViews"][uv["bufferView"].as_u64().unwrap() as usize];
    let uv_at = uv_view["byteOffset"].as_u64().unwrap() as usize;
    let first =
        [0, 4].map(|o| f32::from_le_bytes(bin[uv_at + o..uv_at + o + 4].try_into().unwrap()));
    assert_eq!(first, texture.uvs[0]);
    // Placed like the untextured GLB.
    let plain = export(&mesh, ExportFormat::Glb, Some(100.0)).unwrap();
    let plain_len = u32::from_le_bytes(plain[12..16].try_into().unwrap()) as usize;
    let plain_root: serde_json::Value = serde_json::from_slice(&plain[20..20 + plain_len]).unwrap();
    assert_eq!(
        root["accessors"][0]["min"],
        plain_root["accessors"][0]["min"]
    );
    assert_eq!(
        root["accessors"][0]["max"],
        plain_root["accessors"][0]["max"]
    );
}
