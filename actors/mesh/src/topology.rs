//! The validator: what a slicer or viewer would find wrong with a mesh.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::union_find::UnionFind;
use crate::Mesh;

/// Faces with less area than this (in squared world units) count as degenerate.
const MIN_AREA: f64 = 1e-12;

/// Topological and geometric measures of a mesh, taken after welding by position.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Topology {
    /// Distinct positions used by at least one face.
    pub vertices: usize,
    /// Faces in the mesh, degenerate ones included.
    pub faces: usize,
    /// Distinct undirected edges of the faces with three distinct vertices.
    pub edges: usize,
    /// Edges used by exactly one face (holes).
    pub boundary_edges: usize,
    /// Edges used by more than two faces.
    pub non_manifold_edges: usize,
    /// Vertices whose faces form more than one fan (pinched vertices).
    pub non_manifold_vertices: usize,
    /// Edges whose two faces traverse them in the same direction (flipped winding).
    pub inconsistent_edges: usize,
    /// Faces with a repeated or out-of-range index, or with area below 1e-12.
    pub degenerate_faces: usize,
    /// Groups of faces connected through shared edges.
    pub components: usize,
    /// Euler characteristic V − E + F (2 per closed sphere-like component, 0 for a torus),
    /// counting only faces with three distinct valid vertices.
    pub euler: i64,
    /// Signed volume enclosed (divergence theorem): positive when faces point outward.
    /// Only meaningful for a closed mesh.
    pub volume: f64,
    /// Total surface area.
    pub area: f64,
    /// Lower corner of the axis-aligned box around the used positions (zeros when empty).
    pub bbox_min: [f32; 3],
    /// Upper corner of the axis-aligned box around the used positions (zeros when empty).
    pub bbox_max: [f32; 3],
}

impl Topology {
    /// True for a mesh a printer can take: at least one face, no hole, no non-manifold
    /// edge or vertex, consistent winding, no degenerate face, and positive volume
    /// (faces point outward).
    pub fn is_closed_manifold(&self) -> bool {
        self.faces > 0
            && self.boundary_edges == 0
            && self.non_manifold_edges == 0
            && self.non_manifold_vertices == 0
            && self.inconsistent_edges == 0
            && self.degenerate_faces == 0
            && self.volume > 0.0
    }
}

/// Measures `mesh` as a slicer would see it: positions with identical coordinates are
/// merged first (`-0.0` equals `0.0`), then edges, fans and components are counted.
///
/// Linear time apart from tiny per-vertex sorts: 0.35–0.5 s per million faces on one
/// shared core of the 2-vCPU build machine. Meshes beyond ~1.4 billion faces exceed its 32-bit corner ids.
pub fn check(mesh: &Mesh) -> Topology {
    let mut topo = Topology {
        faces: mesh.indices.len(),
        ..Topology::default()
    };
    let n = mesh.positions.len();
    let weld = weld_by_position(&mesh.positions);

    // Faces usable for topology: three distinct, in-range welded vertices.
    let mut faces: Vec<[u32; 3]> = Vec::with_capacity(mesh.indices.len());
    let mut used_welded = vec![false; n];
    let mut used = vec![false; n];
    for f in &mesh.indices {
        if f.iter().any(|&v| v as usize >= n) {
            topo.degenerate_faces += 1;
            continue;
        }
        for &v in f {
            used[v as usize] = true;
        }
        let w = f.map(|v| weld[v as usize]);
        if w[0] == w[1] || w[1] == w[2] || w[0] == w[2] {
            topo.degenerate_faces += 1;
            continue;
        }
        let [a, b, c] = f.map(|v| mesh.positions[v as usize].map(f64::from));
        let area = 0.5 * norm(cross(sub(b, a), sub(c, a)));
        if area.is_nan() || area < MIN_AREA {
            topo.degenerate_faces += 1;
        }
        for &v in &w {
            used_welded[v as usize] = true;
        }
        faces.push(w);
    }
    topo.vertices = used_welded.iter().filter(|&&u| u).count();

    measure_geometry(mesh, &used, &mut topo);
    count_edges_fans_components(&faces, n, &mut topo);
    topo.euler = topo.vertices as i64 - topo.edges as i64 + faces.len() as i64;
    topo
}

/// Bounding box of the positions that faces use (in range), `None` without any: the box
/// [`check`] reports, without the rest of the check.
pub fn used_bounds(mesh: &Mesh) -> Option<([f32; 3], [f32; 3])> {
    let n = mesh.positions.len();
    let mut used = vec![false; n];
    for f in mesh.indices.iter().filter(|f| f.iter().all(|&v| (v as usize) < n)) {
        for &v in f {
            used[v as usize] = true;
        }
    }
    bbox(mesh.positions.iter().zip(&used).filter(|(_, &u)| u).map(|(p, _)| *p))
}

/// Bounding box of the used positions, area and signed volume of the in-range faces.
fn measure_geometry(mesh: &Mesh, used: &[bool], topo: &mut Topology) {
    let points = mesh
        .positions
        .iter()
        .zip(used)
        .filter(|(_, &u)| u)
        .map(|(p, _)| *p);
    if let Some((lo, hi)) = bbox(points) {
        topo.bbox_min = lo;
        topo.bbox_max = hi;
    }
    // Relative to the box centre, so the volume sum does not lose digits far from the
    // origin (the volume of a closed mesh does not depend on the reference point).
    let origin: [f64; 3] =
        std::array::from_fn(|i| 0.5 * (f64::from(topo.bbox_min[i]) + f64::from(topo.bbox_max[i])));
    let n = mesh.positions.len();
    for f in &mesh.indices {
        if f.iter().any(|&v| v as usize >= n) {
            continue;
        }
        let [a, b, c] = f.map(|v| sub(mesh.positions[v as usize].map(f64::from), origin));
        topo.area += 0.5 * norm(cross(sub(b, a), sub(c, a)));
        topo.volume += dot(a, cross(b, c)) / 6.0;
    }
}

/// Fills the edge, fan and component counts from faces over welded ids `< n`.
fn count_edges_fans_components(faces: &[[u32; 3]], n: usize, topo: &mut Topology) {
    // Half-edges bucketed by their lower vertex (counting sort), then each small bucket
    // sorted by the upper vertex: equal neighbours are the faces sharing one edge. This
    // is several times faster than sorting all 3F half-edges by a 64-bit key.
    let mut start = vec![0u32; n + 1];
    for f in faces {
        for slot in 0..3 {
            start[f[slot].min(f[(slot + 1) % 3]) as usize + 1] += 1;
        }
    }
    for v in 0..n {
        start[v + 1] += start[v];
    }
    // (upper vertex, corner where the half-edge starts); corner = face * 3 + slot.
    let mut entries = vec![(0u32, 0u32); faces.len() * 3];
    let mut fill = start.clone();
    for (fi, f) in faces.iter().enumerate() {
        for slot in 0..3 {
            let (a, b) = (f[slot], f[(slot + 1) % 3]);
            let at = &mut fill[a.min(b) as usize];
            entries[*at as usize] = (a.max(b), (fi * 3 + slot) as u32);
            *at += 1;
        }
    }

    let mut face_sets = UnionFind::new(faces.len());
    // Corners of the same vertex are joined when their faces share an edge at that
    // vertex; a vertex whose corners end up in several sets has several fans.
    let mut corner_sets = UnionFind::new(faces.len() * 3);
    let start_vertex = |corner: u32| faces[(corner / 3) as usize][(corner % 3) as usize];
    let next = |corner: u32| corner - corner % 3 + (corner % 3 + 1) % 3;
    for low in 0..n {
        let bucket = &mut entries[start[low] as usize..start[low + 1] as usize];
        bucket.sort_unstable_by_key(|e| e.0);
        for group in bucket.chunk_by(|a, b| a.0 == b.0) {
            topo.edges += 1;
            match group.len() {
                1 => topo.boundary_edges += 1,
                2 => {
                    if start_vertex(group[0].1) == start_vertex(group[1].1) {
                        topo.inconsistent_edges += 1;
                    }
                }
                _ => topo.non_manifold_edges += 1,
            }
            // Corner of the lower and of the upper vertex of this edge in each face.
            let ends = |corner: u32| {
                if start_vertex(corner) as usize == low {
                    (corner, next(corner))
                } else {
                    (next(corner), corner)
                }
            };
            let (first_lo, first_hi) = ends(group[0].1);
            for &(_, corner) in &group[1..] {
                let (lo, hi) = ends(corner);
                corner_sets.union(first_lo, lo);
                corner_sets.union(first_hi, hi);
                face_sets.union(group[0].1 / 3, corner / 3);
            }
        }
    }

    // Welded ids are position indices, so a dense count works.
    let mut fans = vec![0u32; n];
    for corner in 0..(faces.len() * 3) as u32 {
        if corner_sets.find(corner) == corner {
            fans[start_vertex(corner) as usize] += 1;
        }
    }
    topo.non_manifold_vertices = fans.iter().filter(|&&k| k > 1).count();
    topo.components = (0..faces.len() as u32)
        .filter(|&f| face_sets.find(f) == f)
        .count();
}

/// Maps each position to the index of the first position with the same coordinates.
pub(crate) fn weld_by_position(positions: &[[f32; 3]]) -> Vec<u32> {
    let mut ids: HashMap<(u64, u32), u32, BuildHasherDefault<MixHasher>> =
        HashMap::with_capacity_and_hasher(positions.len(), Default::default());
    positions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            // Adding 0.0 turns -0.0 into 0.0 so both weld; NaNs weld only with
            // bit-identical NaNs.
            let [x, y, z] = p.map(|c| (c + 0.0).to_bits());
            *ids.entry((u64::from(x) << 32 | u64::from(y), z))
                .or_insert(i as u32)
        })
        .collect()
}

/// A small non-cryptographic hasher for position keys. std's SipHash made welding the
/// slowest step of [`check`]; the keys come from our own meshes, so flooding is no concern.
#[derive(Default)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        // murmur3's finaliser: hashbrown takes bucket bits from the low end and tag bits
        // from the high end, so both need the full entropy.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// Axis-aligned bounds of finite points, `None` when there are none.
pub(crate) fn bbox(points: impl Iterator<Item = [f32; 3]>) -> Option<([f32; 3], [f32; 3])> {
    points
        .filter(|p| p.iter().all(|c| c.is_finite()))
        .fold(None, |acc, p| match acc {
            None => Some((p, p)),
            Some((lo, hi)) => Some((
                std::array::from_fn(|i| lo[i].min(p[i])),
                std::array::from_fn(|i| hi[i].max(p[i])),
            )),
        })
}

/// Small 3-vector helpers, shared by the mesh checks.
pub(crate) fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub(crate) fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub(crate) fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub(crate) fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}
