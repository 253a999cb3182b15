//! Marching tetrahedra: volume → closed, welded, outward-oriented triangle mesh.
//!
//! Why tetrahedra and not marching cubes: within a tetrahedron the linear interpolant's
//! zero set is exactly one triangle or one quad, with no ambiguous cases. Every cube is
//! split the same way (Kuhn/Freudenthal: six tetrahedra around the main diagonal), so two
//! cubes sharing a face also share that face's diagonal and their polygons meet edge to
//! edge. With one virtual layer of empty samples around the grid, the result is a closed
//! 2-manifold by construction: no hole, no edge with more than two faces, no pinched
//! vertex.
//!
//! Vertices are keyed by the grid edge they lie on (7 edge directions per sample: x, y, z,
//! the three face diagonals and the main diagonal, all pointing to increasing indices), so
//! the output is welded. The keys live in three slabs — in-plane edges of the lower and
//! upper sample planes and the edges between them — and only the slots actually written
//! are cleared when the sweep moves up one layer, so memory is O(n_y · n_x) and time is
//! one pass over the samples plus work proportional to the surface.

use crate::{Mesh, MeshError, Volume};

/// Crossings are kept at least this fraction of a grid edge away from its end samples.
///
/// Why: a crossing at (or within rounding of) a sample would put several vertices on one
/// point and create zero-area triangles; that is what samples exactly at the iso level do
/// to other extractors. Moving a vertex by at most 1 % of a grid step is invisible, keeps
/// every triangle's area above ≈ 0.5 · (0.01 · step)², and leaves vertices on distinct
/// grid edges at distinct positions, so welding by position (as a slicer does) changes
/// nothing.
const T_MIN: f32 = 0.01;

/// Marks an edge slot that has no vertex yet.
const UNSET: u32 = u32::MAX;

/// Extracts the iso surface of `volume` as a closed, consistently oriented triangle mesh.
///
/// Samples exactly at the iso level and NaN samples count as empty; the grid is treated
/// as if surrounded by one layer of empty samples one grid step beyond the bounds, so a
/// solid touching the border is capped half a step outside it. Colours are not set.
///
/// Errors: `bad_volume` if the volume is malformed, `empty_surface` if no sample or every
/// sample is solid, `mesh_too_large` if the surface needs more than 2³² − 1 vertices.
pub fn extract(volume: &Volume) -> Result<Mesh, MeshError> {
    volume.validate()?;
    let [nz, ny, nx] = volume.dims;
    let total = nz * ny * nx;
    let mut sweep = Sweep::new(volume);
    for layer in 0..nz + 1 {
        sweep.layer(layer)?;
    }
    if sweep.solid == 0 || sweep.solid == total {
        return Err(MeshError::EmptySurface {
            solid: sweep.solid,
            total,
        });
    }
    Ok(Mesh {
        positions: sweep.positions,
        indices: sweep.indices,
        colors: None,
    })
}

/// One plane of padded samples: signed values and per-square corner masks.
struct Plane {
    /// Signed values (negative = solid), `py * px_n + px`, NaN on the padding ring.
    f: Vec<f32>,
    /// For the square with lower corner (py, px): bit 0 (py, px), bit 1 (py, px+1),
    /// bit 2 (py+1, px), bit 3 (py+1, px+1) set when that sample is solid.
    quad: Vec<u8>,
}

/// Vertex slots for one family of grid edges, cleared lazily.
struct Slab {
    slots: Vec<u32>,
    touched: Vec<usize>,
}

impl Slab {
    fn new(n: usize) -> Self {
        Self {
            slots: vec![UNSET; n],
            touched: Vec::new(),
        }
    }

    fn clear(&mut self) {
        for &i in &self.touched {
            self.slots[i] = UNSET;
        }
        self.touched.clear();
    }
}

/// The state of the sweep over cube layers along world z.
struct Sweep<'v> {
    volume: &'v Volume<'v>,
    /// Padded sizes: samples per row and rows per plane.
    px_n: usize,
    py_n: usize,
    /// Padded world coordinates per axis.
    xs: Vec<f32>,
    ys: Vec<f32>,
    zs: Vec<f32>,
    lower: Plane,
    upper: Plane,
    /// In-plane edges (x, y, xy) of the lower and upper planes, 3 slots per sample.
    lower_edges: Slab,
    upper_edges: Slab,
    /// Edges between the planes (z, xz, yz, xyz), 4 slots per sample.
    cross_edges: Slab,
    tables: Tables,
    solid: usize,
    positions: Vec<[f32; 3]>,
    indices: Vec<[u32; 3]>,
}

impl<'v> Sweep<'v> {
    fn new(volume: &'v Volume<'v>) -> Self {
        let [_, ny, nx] = volume.dims;
        let (px_n, py_n) = (nx + 2, ny + 2);
        let n = px_n * py_n;
        let empty_plane = || Plane {
            f: vec![f32::NAN; n],
            quad: vec![0; n],
        };
        let mut sweep = Self {
            volume,
            px_n,
            py_n,
            xs: volume.padded_coords(0),
            ys: volume.padded_coords(1),
            zs: volume.padded_coords(2),
            lower: empty_plane(),
            upper: empty_plane(),
            lower_edges: Slab::new(3 * n),
            upper_edges: Slab::new(3 * n),
            cross_edges: Slab::new(4 * n),
            tables: Tables::new(),
            solid: 0,
            positions: Vec::new(),
            indices: Vec::new(),
        };
        // Padded plane 0 is all padding: `lower` already is.
        sweep.load(1);
        sweep
    }

    /// Fills `upper` with padded plane `p` (0 and n_z + 1 are padding).
    fn load(&mut self, p: usize) {
        let (px_n, py_n) = (self.px_n, self.py_n);
        let [nz, ny, nx] = self.volume.dims;
        let plane = &mut self.upper;
        plane.f.fill(f32::NAN);
        if (1..=nz).contains(&p) {
            let src = &self.volume.data[(p - 1) * ny * nx..p * ny * nx];
            for (row, dst) in src
                .chunks_exact(nx)
                .zip(plane.f.chunks_exact_mut(px_n).skip(1))
            {
                for (d, &v) in dst[1..=nx].iter_mut().zip(row) {
                    *d = self.volume.signed(v);
                }
            }
        }
        let solid = |v: f32| (v < 0.0) as u8;
        let mut count = 0usize;
        for py in 0..py_n - 1 {
            let row = &plane.f[py * px_n..(py + 2) * px_n];
            let (lo, hi) = row.split_at(px_n);
            let quad = &mut plane.quad[py * px_n..(py + 1) * px_n];
            let mut left = solid(lo[0]) | solid(hi[0]) << 2;
            for px in 0..px_n - 1 {
                let (a, b) = (solid(lo[px + 1]), solid(hi[px + 1]));
                count += a as usize;
                let right = a << 1 | b << 3;
                quad[px] = left | right;
                left = right >> 1;
            }
        }
        // Counting the lower-right corner of every square visits rows 0..py_n - 1 and
        // columns 1..px_n once each; that covers every real sample (the rest is padding).
        self.solid += count;
    }

    /// Emits the triangles of cube layer `k` (between padded planes k and k + 1), then
    /// advances to the next layer.
    fn layer(&mut self, k: usize) -> Result<(), MeshError> {
        let px_n = self.px_n;
        for py in 0..self.py_n - 1 {
            for px in 0..px_n - 1 {
                let i = py * px_n + px;
                let mask = self.lower.quad[i] | self.upper.quad[i] << 4;
                if mask == 0 || mask == 0xff {
                    continue;
                }
                self.cube(k, py, px, mask)?;
            }
        }
        std::mem::swap(&mut self.lower, &mut self.upper);
        std::mem::swap(&mut self.lower_edges, &mut self.upper_edges);
        self.upper_edges.clear();
        self.cross_edges.clear();
        if k + 2 <= self.volume.dims[0] + 1 {
            self.load(k + 2);
        }
        Ok(())
    }

    fn cube(&mut self, k: usize, py: usize, px: usize, mask: u8) -> Result<(), MeshError> {
        let range = self.tables.range(mask);
        for p in range {
            let poly = self.tables.polys[p];
            let mut v = [0u32; 4];
            for (slot, &code) in v.iter_mut().zip(&poly.edges[..poly.len as usize]) {
                *slot = self.vertex(k, py, px, code)?;
            }
            if poly.len == 3 {
                self.indices.push([v[0], v[1], v[2]]);
            } else {
                // Split the quad along its shorter diagonal for better-shaped triangles;
                // either split keeps the cycle's orientation.
                let d = |a: u32, b: u32| {
                    let (a, b) = (self.positions[a as usize], self.positions[b as usize]);
                    (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)
                };
                if d(v[0], v[2]) <= d(v[1], v[3]) {
                    self.indices.push([v[0], v[1], v[2]]);
                    self.indices.push([v[0], v[2], v[3]]);
                } else {
                    self.indices.push([v[0], v[1], v[3]]);
                    self.indices.push([v[1], v[2], v[3]]);
                }
            }
        }
        Ok(())
    }

    /// The vertex on cube edge `code` (corner · 8 + direction) of cube (k, py, px),
    /// created on first use.
    fn vertex(&mut self, k: usize, py: usize, px: usize, code: u8) -> Result<u32, MeshError> {
        let (corner, dir) = ((code >> 3) as usize, (code & 7) as usize);
        let (cx, cy, cz) = (corner & 1, corner >> 1 & 1, corner >> 2);
        let (sy, sx) = (py + cy, px + cx);
        let s = sy * self.px_n + sx;
        let (slab, slot) = if dir & 4 != 0 {
            (&mut self.cross_edges, 4 * s + dir - 4)
        } else if cz == 0 {
            (&mut self.lower_edges, 3 * s + dir - 1)
        } else {
            (&mut self.upper_edges, 3 * s + dir - 1)
        };
        let existing = slab.slots[slot];
        if existing != UNSET {
            return Ok(existing);
        }
        let index = u32::try_from(self.positions.len())
            .ok()
            .filter(|&i| i != UNSET)
            .ok_or_else(|| MeshError::TooLarge {
                what: format!("vertex count {}", self.positions.len() + 1),
            })?;
        slab.slots[slot] = index;
        slab.touched.push(slot);

        let (ex, ey, ez) = (sx + (dir & 1), sy + (dir >> 1 & 1), cz + (dir >> 2));
        let plane = |z: usize| if z == 0 { &self.lower } else { &self.upper };
        let fa = plane(cz).f[s];
        let fb = plane(ez).f[ey * self.px_n + ex];
        // fa and fb lie on opposite sides, so t is in [0, 1] unless one is NaN or both
        // infinite; those (and the padding, which is NaN) take the midpoint.
        let t = fa / (fa - fb);
        let t = if t.is_finite() {
            t.clamp(T_MIN, 1.0 - T_MIN)
        } else {
            0.5
        };
        let lerp = |c: &[f32], a: usize, b: usize| c[a] + t * (c[b] - c[a]);
        self.positions.push([
            lerp(&self.xs, sx, ex),
            lerp(&self.ys, sy, ey),
            lerp(&self.zs, k + cz, k + ez),
        ]);
        Ok(index)
    }
}

/// A polygon of the surface inside one tetrahedron, as cube edge codes in
/// counter-clockwise order seen from the empty side.
#[derive(Clone, Copy, Default)]
struct Poly {
    len: u8,
    edges: [u8; 4],
}

/// For each of the 256 solid/empty patterns of a cube's corners, the polygons of its six
/// tetrahedra.
struct Tables {
    polys: Vec<Poly>,
    start: [u16; 257],
}

impl Tables {
    fn range(&self, mask: u8) -> std::ops::Range<usize> {
        self.start[mask as usize] as usize..self.start[mask as usize + 1] as usize
    }

    /// Builds the tables from the Kuhn decomposition. Corners are numbered
    /// `dx + 2 dy + 4 dz`; bit 1 is +x, bit 2 is +y, bit 4 is +z in world space.
    fn new() -> Self {
        // Each path 0 → a → a+b → 7 through the cube is one tetrahedron. Its signed volume
        // has the sign of the permutation (a, b, c) of (x, y, z); odd ones get their middle
        // vertices swapped so all six are positively oriented, which the case rules below
        // rely on.
        let perms: [([u8; 3], bool); 6] = [
            ([1, 2, 4], true),
            ([1, 4, 2], false),
            ([2, 1, 4], false),
            ([2, 4, 1], true),
            ([4, 1, 2], true),
            ([4, 2, 1], false),
        ];
        let tets: Vec<[u8; 4]> = perms
            .iter()
            .map(|&([a, b, _], even)| {
                if even {
                    [0, a, a | b, 7]
                } else {
                    [0, a | b, a, 7]
                }
            })
            .collect();

        let mut polys = Vec::new();
        let mut start = [0u16; 257];
        for (mask, first) in start.iter_mut().enumerate().take(256) {
            *first = polys.len() as u16;
            for tet in &tets {
                let solid: [bool; 4] = std::array::from_fn(|v| mask >> tet[v] & 1 == 1);
                if let Some(local) = tet_polygon(solid) {
                    let mut poly = Poly {
                        len: local.len() as u8,
                        ..Poly::default()
                    };
                    for (e, &(a, b)) in poly.edges.iter_mut().zip(&local) {
                        *e = edge_code(tet[a], tet[b]);
                    }
                    polys.push(poly);
                }
            }
        }
        start[256] = polys.len() as u16;
        Self { polys, start }
    }
}

/// The cube edge code (lower corner · 8 + direction bits) of the edge between corners
/// `a` and `b`. In a Kuhn tetrahedron one corner's bits are always a subset of the other's.
fn edge_code(a: u8, b: u8) -> u8 {
    let (lo, hi) = if a & b == a { (a, b) } else { (b, a) };
    lo * 8 + (hi ^ lo)
}

/// The surface polygon inside a positively oriented tetrahedron (vertices 0..4, `solid`
/// per vertex) as a cycle of tetrahedron edges, counter-clockwise seen from the empty side.
fn tet_polygon(solid: [bool; 4]) -> Option<Vec<(usize, usize)>> {
    // Completes (i, j) to an even permutation (i, j, k, l) of (0, 1, 2, 3): an even
    // permutation keeps the tetrahedron positively oriented.
    let complete = |i: usize, j: usize| -> (usize, usize) {
        let mut rest = (0..4).filter(|&v| v != i && v != j);
        let (k, l) = (rest.next().unwrap_or(0), rest.next().unwrap_or(0));
        let order = [i, j, k, l];
        let inversions = (0..4)
            .flat_map(|a| (a + 1..4).map(move |b| (a, b)))
            .filter(|&(a, b)| order[a] > order[b])
            .count();
        if inversions % 2 == 0 {
            (k, l)
        } else {
            (l, k)
        }
    };
    let count = solid.iter().filter(|&&s| s).count();
    match count {
        1 | 3 => {
            // The lone vertex i; (j, k, l) is the face opposite it, ordered so its normal
            // points away from i. Around a solid i the triangle must face away from i too;
            // around an empty i it must face toward i, so the order flips.
            let lone = solid.iter().position(|&s| s == (count == 1))?;
            let j = (lone + 1) % 4;
            let (k, l) = complete(lone, j);
            Some(if count == 1 {
                vec![(lone, j), (lone, k), (lone, l)]
            } else {
                vec![(lone, j), (lone, l), (lone, k)]
            })
        }
        2 => {
            // Solid (i, j), empty (k, l) with (i, j, k, l) even: the cycle
            // i-k, i-l, j-l, j-k faces from {i, j} toward {k, l} (checked on the
            // reference tetrahedron (0, x, y, z) with 0 and x solid).
            let i = solid.iter().position(|&s| s)?;
            let j = solid.iter().rposition(|&s| s)?;
            let (k, l) = complete(i, j);
            Some(vec![(i, k), (i, l), (j, l), (j, k)])
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_cover_every_crossing_edge_once_per_tetrahedron() {
        let tables = Tables::new();
        assert_eq!(tables.range(0).len(), 0);
        assert_eq!(tables.range(0xff).len(), 0);
        // A single solid corner 0 lies in all six tetrahedra: one triangle each.
        assert_eq!(tables.range(1).len(), 6);
        // Corner 1 (+x) lies in the two tetrahedra whose path starts with x.
        assert_eq!(tables.range(2).len(), 2);
        for mask in 1..255u8 {
            for p in tables.range(mask) {
                let poly = tables.polys[p];
                for &code in &poly.edges[..poly.len as usize] {
                    let (a, b) = (code >> 3, (code >> 3) + (code & 7));
                    assert!(b < 8 && a & b == a, "edge {a}-{b} is not a Kuhn edge");
                    assert_ne!(mask >> a & 1, mask >> b & 1, "edge {a}-{b} does not cross");
                }
            }
        }
    }

    #[test]
    fn tet_polygon_faces_away_from_the_solid_vertex() {
        // Reference tetrahedron (0, x, y, z), solid at the origin: normal along +(1,1,1).
        let p = [
            [0.0f32, 0.0, 0.0],
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
        ];
        for lone in 0..4 {
            for count in [1, 3] {
                let solid: [bool; 4] = std::array::from_fn(|v| (v == lone) == (count == 1));
                let poly = tet_polygon(solid).unwrap();
                let mid = |(a, b): (usize, usize)| -> [f32; 3] {
                    std::array::from_fn(|c| 0.5 * (p[a][c] + p[b][c]))
                };
                let (a, b, c) = (mid(poly[0]), mid(poly[1]), mid(poly[2]));
                let n = cross(sub(b, a), sub(c, a));
                let away = sub(a, p[lone]);
                let dot = n[0] * away[0] + n[1] * away[1] + n[2] * away[2];
                if count == 1 {
                    assert!(dot > 0.0, "lone solid {lone}: normal points into the solid");
                } else {
                    assert!(dot < 0.0, "lone empty {lone}: normal points into the solid");
                }
            }
        }
    }

    fn sub(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
        [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
    }

    fn cross(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
        [
            a[1] * b[2] - a[2] * b[1],
            a[2] * b[0] - a[0] * b[2],
            a[0] * b[1] - a[1] * b[0],
        ]
    }
}
