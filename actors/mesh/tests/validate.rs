//! The validator against hand-made meshes with known defects.

use orfeas_mesh::{check, Mesh};

/// Unit cube [0, 1]³, outward counter-clockwise faces.
fn cube() -> Mesh {
    let positions = (0..8)
        .map(|c| [(c & 1) as f32, (c >> 1 & 1) as f32, (c >> 2 & 1) as f32])
        .collect();
    #[rustfmt::skip]
    let indices = vec![
        [0, 2, 1], [1, 2, 3], // z = 0, facing -z
        [4, 5, 6], [5, 7, 6], // z = 1
        [0, 1, 4], [1, 5, 4], // y = 0
        [2, 6, 3], [3, 6, 7], // y = 1
        [0, 4, 2], [2, 4, 6], // x = 0
        [1, 3, 5], [3, 7, 5], // x = 1
    ];
    Mesh {
        positions,
        indices,
        colors: None,
    }
}

/// Two tetrahedra `(p0, p1, p2, p3)`, each positively oriented
/// (det(p1 − p0, p2 − p0, p3 − p0) > 0), with outward faces.
fn two_tetrahedra(a: [[f32; 3]; 4], b: [[f32; 3]; 4]) -> Mesh {
    let faces = [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]];
    Mesh {
        positions: a.iter().chain(&b).copied().collect(),
        indices: faces
            .iter()
            .chain(&faces.map(|f: [u32; 3]| f.map(|v| v + 4)))
            .copied()
            .collect(),
        colors: None,
    }
}

const O: [f32; 3] = [0.0, 0.0, 0.0];
const X: [f32; 3] = [1.0, 0.0, 0.0];
const Y: [f32; 3] = [0.0, 1.0, 0.0];
const Z: [f32; 3] = [0.0, 0.0, 1.0];

fn neg(v: [f32; 3]) -> [f32; 3] {
    v.map(|c| -c)
}

#[test]
fn check_cube_is_closed_with_exact_measures() {
    let topo = check(&cube());
    assert!(topo.is_closed_manifold(), "{topo:?}");
    assert_eq!((topo.vertices, topo.edges, topo.faces), (8, 18, 12));
    assert_eq!((topo.euler, topo.components), (2, 1));
    assert!((topo.volume - 1.0).abs() < 1e-12 && (topo.area - 6.0).abs() < 1e-12);
    assert_eq!((topo.bbox_min, topo.bbox_max), ([0.0; 3], [1.0; 3]));
}

#[test]
fn check_welds_a_triangle_soup_by_position() {
    let cube = cube();
    let soup = Mesh {
        positions: cube
            .indices
            .iter()
            .flatten()
            .map(|&v| cube.positions[v as usize])
            .collect(),
        indices: (0..12).map(|f| [3 * f, 3 * f + 1, 3 * f + 2]).collect(),
        colors: None,
    };
    let topo = check(&soup);
    assert!(topo.is_closed_manifold(), "{topo:?}");
    assert_eq!((topo.vertices, topo.euler), (8, 2));
}

#[test]
fn check_detects_a_hole() {
    let mut mesh = cube();
    mesh.indices.remove(3);
    let topo = check(&mesh);
    assert_eq!(topo.boundary_edges, 3);
    assert_eq!(topo.euler, 1);
    assert!(!topo.is_closed_manifold());
}

#[test]
fn check_detects_a_flipped_face() {
    let mut mesh = cube();
    mesh.indices[5].swap(0, 1);
    let topo = check(&mesh);
    assert_eq!(topo.inconsistent_edges, 3);
    assert_eq!(topo.boundary_edges, 0);
    assert!(!topo.is_closed_manifold());
}

#[test]
fn check_detects_inside_out_meshes() {
    let mut mesh = cube();
    for f in &mut mesh.indices {
        f.swap(1, 2);
    }
    let topo = check(&mesh);
    assert_eq!(topo.inconsistent_edges, 0);
    assert!((topo.volume + 1.0).abs() < 1e-12);
    assert!(!topo.is_closed_manifold());
}

#[test]
fn check_detects_a_non_manifold_edge() {
    // Two closed tetrahedra sharing the edge O–Z (the second is the first turned half a
    // turn about z): that edge has four faces.
    let topo = check(&two_tetrahedra([O, X, Y, Z], [O, neg(X), neg(Y), Z]));
    assert_eq!(topo.non_manifold_edges, 1, "{topo:?}");
    assert_eq!((topo.boundary_edges, topo.inconsistent_edges), (0, 0));
    assert!(!topo.is_closed_manifold());
}

#[test]
fn check_detects_a_pinched_vertex() {
    // Two closed tetrahedra touching at one corner: every edge is fine, the corner is not.
    let topo = check(&two_tetrahedra([O, X, Y, Z], [O, neg(Y), neg(X), neg(Z)]));
    assert_eq!(topo.non_manifold_vertices, 1, "{topo:?}");
    assert_eq!(
        (
            topo.boundary_edges,
            topo.non_manifold_edges,
            topo.inconsistent_edges
        ),
        (0, 0, 0)
    );
    assert_eq!(topo.components, 2, "faces connect through edges only");
    assert!(topo.volume > 0.0);
    assert!(!topo.is_closed_manifold());
}

#[test]
fn check_detects_degenerate_faces() {
    let mut mesh = cube();
    mesh.positions.push([0.5, 0.5, 0.5]);
    mesh.indices.push([8, 8, 0]); // repeated index
    mesh.indices.push([0, 1, 99]); // out of range
    let topo = check(&mesh);
    assert_eq!(topo.degenerate_faces, 2);
    assert!(!topo.is_closed_manifold());

    // Zero area with three distinct vertices: a needle split into the cube's top face.
    let mut mesh = cube();
    mesh.positions.push([0.5, 1.0, 1.0]); // on the edge 6-7
    mesh.indices[3] = [5, 7, 8];
    mesh.indices.push([5, 8, 6]);
    mesh.indices.push([6, 8, 7]); // collinear: area 0
    let topo = check(&mesh);
    assert_eq!(topo.degenerate_faces, 1, "{topo:?}");
}

#[test]
fn check_empty_mesh_is_not_closed() {
    let topo = check(&Mesh::default());
    assert_eq!(
        (topo.faces, topo.vertices, topo.components, topo.euler),
        (0, 0, 0, 0)
    );
    assert!(!topo.is_closed_manifold());
}
