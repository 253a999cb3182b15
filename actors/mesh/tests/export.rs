//! GLB and STL exports read back and compared with the mesh they came from.

#[path = "support/shapes.rs"]
mod shapes;

use gltf_json as json;
use orfeas_mesh::{extract, to_glb, to_stl, Inside, Mesh};
use shapes::*;

fn sphere() -> Mesh {
    let data = sample(24, -1.0, 1.0, ball([0.2, 0.3, -0.1], 0.5));
    extract(&volume(&data, 24, -1.0, 1.0, 0.0, Inside::Below)).expect("sphere extracts")
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn f32_at(bytes: &[u8], at: usize) -> f32 {
    f32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Splits a GLB into its parsed JSON root and its BIN chunk, checking the framing.
fn parse_glb(glb: &[u8]) -> (json::Root, &[u8]) {
    assert_eq!(&glb[0..4], b"glTF");
    assert_eq!(u32_at(glb, 4), 2);
    assert_eq!(u32_at(glb, 8) as usize, glb.len());
    let json_len = u32_at(glb, 12) as usize;
    assert_eq!(&glb[16..20], b"JSON");
    assert_eq!(json_len % 4, 0);
    let json_chunk = &glb[20..20 + json_len];
    let bin_at = 20 + json_len;
    let bin_len = u32_at(glb, bin_at) as usize;
    assert_eq!(&glb[bin_at + 4..bin_at + 8], b"BIN\0");
    assert_eq!(bin_len % 4, 0);
    assert_eq!(bin_at + 8 + bin_len, glb.len());
    let root = json::Root::from_slice(json_chunk).expect("JSON chunk parses");
    (root, &glb[bin_at + 8..])
}

#[test]
fn glb_round_trips_counts_bounds_and_data() {
    let mut mesh = sphere();
    mesh.colors = Some(vec![[0.8, 0.4, 0.2]; mesh.positions.len()]);
    let glb = to_glb(&mesh).expect("export succeeds");
    let (root, bin) = parse_glb(&glb);

    assert_eq!(root.asset.version, "2.0");
    assert_eq!(root.asset.generator.as_deref(), Some("orfeas"));
    assert_eq!(
        (root.meshes.len(), root.nodes.len(), root.scenes.len()),
        (1, 1, 1)
    );
    assert_eq!(root.buffers.len(), 1);
    assert_eq!(root.buffers[0].byte_length.0 as usize, bin.len());

    let prim = &root.meshes[0].primitives[0];
    let attr = |s: json::mesh::Semantic| {
        let index = prim
            .attributes
            .get(&json::validation::Checked::Valid(s))
            .expect("attribute present");
        &root.accessors[index.value()]
    };
    let position = attr(json::mesh::Semantic::Positions);
    let normal = attr(json::mesh::Semantic::Normals);
    let color = attr(json::mesh::Semantic::Colors(0));
    let indices = &root.accessors[prim.indices.expect("indexed").value()];
    let n = mesh.positions.len() as u64;
    assert_eq!((position.count.0, normal.count.0, color.count.0), (n, n, n));
    assert_eq!(indices.count.0, 3 * mesh.indices.len() as u64);

    // min/max equal the mesh's bounds exactly.
    let bounds = |v: &Option<json::Value>| -> Vec<f32> {
        serde_json::from_value(v.clone().expect("min/max present")).expect("numbers")
    };
    for axis in 0..3 {
        let lo = mesh
            .positions
            .iter()
            .map(|p| p[axis])
            .fold(f32::INFINITY, f32::min);
        let hi = mesh
            .positions
            .iter()
            .map(|p| p[axis])
            .fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(bounds(&position.min)[axis], lo);
        assert_eq!(bounds(&position.max)[axis], hi);
    }

    // The bytes behind the accessors are the mesh.
    let view = |a: &json::Accessor| {
        let v = &root.buffer_views[a.buffer_view.expect("has a view").value()];
        let at =
            v.byte_offset.map_or(0, |o| o.0 as usize) + a.byte_offset.map_or(0, |o| o.0 as usize);
        (at, v.byte_length.0 as usize)
    };
    let (at, len) = view(position);
    assert_eq!(len, 12 * mesh.positions.len());
    for (i, p) in mesh.positions.iter().enumerate() {
        for (c, &x) in p.iter().enumerate() {
            assert_eq!(f32_at(bin, at + 12 * i + 4 * c), x);
        }
    }
    let (at, _) = view(normal);
    for i in 0..mesh.positions.len() {
        let v: Vec<f32> = (0..3).map(|c| f32_at(bin, at + 12 * i + 4 * c)).collect();
        let len = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        assert!((len - 1.0).abs() < 1e-5, "normal {i} has length {len}");
    }
    let (at, _) = view(indices);
    for (i, f) in mesh.indices.iter().enumerate() {
        for (c, &v) in f.iter().enumerate() {
            assert_eq!(u32_at(bin, at + 12 * i + 4 * c), v);
        }
    }
}

#[test]
fn glb_without_colours_has_no_color_attribute() {
    let glb = to_glb(&sphere()).expect("export succeeds");
    let (root, _) = parse_glb(&glb);
    assert_eq!(root.meshes[0].primitives[0].attributes.len(), 2);
}

#[test]
fn glb_rejects_unusable_meshes() {
    assert_eq!(to_glb(&Mesh::default()).unwrap_err().code(), "bad_mesh");
    let mut mesh = sphere();
    mesh.indices.push([0, 1, mesh.positions.len() as u32]);
    assert_eq!(to_glb(&mesh).unwrap_err().code(), "bad_mesh");
    let mut mesh = sphere();
    mesh.positions[0][1] = f32::NAN;
    assert_eq!(to_glb(&mesh).unwrap_err().code(), "bad_mesh");
    let mut mesh = sphere();
    mesh.colors = Some(vec![[1.0; 3]; 3]);
    assert_eq!(to_glb(&mesh).unwrap_err().code(), "bad_mesh");
}

#[test]
fn stl_has_the_right_size_and_rests_on_the_bed() {
    let mesh = sphere();
    let stl = to_stl(&mesh);
    assert_eq!(stl.len(), 84 + 50 * mesh.indices.len());
    assert!(
        !stl.starts_with(b"solid"),
        "would be mistaken for ASCII STL"
    );
    assert_eq!(u32_at(&stl, 80) as usize, mesh.indices.len());

    let mut lo = [f32::INFINITY; 3];
    let mut hi = [f32::NEG_INFINITY; 3];
    let mut volume = 0.0f64;
    for f in 0..mesh.indices.len() {
        let rec = 84 + 50 * f;
        let v: Vec<[f32; 3]> = (1..4)
            .map(|k| std::array::from_fn(|c| f32_at(&stl, rec + 12 * k + 4 * c)))
            .collect();
        for p in &v {
            for c in 0..3 {
                lo[c] = lo[c].min(p[c]);
                hi[c] = hi[c].max(p[c]);
            }
        }
        let p = v.iter().map(|p| p.map(f64::from)).collect::<Vec<_>>();
        volume += (p[0][0] * (p[1][1] * p[2][2] - p[1][2] * p[2][1])
            - p[0][1] * (p[1][0] * p[2][2] - p[1][2] * p[2][0])
            + p[0][2] * (p[1][0] * p[2][1] - p[1][1] * p[2][0]))
            / 6.0;
        // The stored normal agrees with the winding.
        let n: [f32; 3] = std::array::from_fn(|c| f32_at(&stl, rec + 4 * c));
        let e1 = [v[1][0] - v[0][0], v[1][1] - v[0][1], v[1][2] - v[0][2]];
        let e2 = [v[2][0] - v[0][0], v[2][1] - v[0][1], v[2][2] - v[0][2]];
        let cr = [
            e1[1] * e2[2] - e1[2] * e2[1],
            e1[2] * e2[0] - e1[0] * e2[2],
            e1[0] * e2[1] - e1[1] * e2[0],
        ];
        assert!(n[0] * cr[0] + n[1] * cr[1] + n[2] * cr[2] > 0.0);
    }
    assert_eq!(lo[2], 0.0, "rests on z = 0");
    assert!(
        (lo[0] + hi[0]).abs() < 1e-5 && (lo[1] + hi[1]).abs() < 1e-5,
        "centred: {lo:?} {hi:?}"
    );
    assert_close(volume, ball_volume(0.5), 0.05, "STL volume (winding kept)");
    // Y-up height became Z-up height.
    let h_world = {
        let ys = mesh.positions.iter().map(|p| p[1]);
        ys.clone().fold(f32::NEG_INFINITY, f32::max) - ys.fold(f32::INFINITY, f32::min)
    };
    assert!((hi[2] - h_world).abs() < 1e-5);
}

#[test]
fn stl_of_an_empty_mesh_is_a_bare_header() {
    let stl = to_stl(&Mesh::default());
    assert_eq!(stl.len(), 84);
    assert_eq!(u32_at(&stl, 80), 0);
}
