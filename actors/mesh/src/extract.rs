//! Marching cubes: volume → closed, welded, outward-oriented triangle mesh.
//!
//! The surface inside each cube is traced as closed loops along the cube's faces. On a
//! face whose solid corners are diagonal (the ambiguous case) the two solid corners are
//! always cut off separately. That choice depends only on the face's four samples, so the
//! two cubes sharing a face draw the same segments on it, traversed in opposite
//! directions, and their polygons meet edge to edge. Around a crossing vertex, each of
//! the four cube faces that contain its grid edge carries exactly one segment ending at
//! it, so the polygons of the four cubes form a single fan. With one virtual layer of
//! empty samples around the grid the result is therefore a closed 2-manifold by
//! construction: no hole, no edge with more than two faces, no pinched vertex.
//!
//! Loops are triangulated as fans (quads along the shorter diagonal). No triangle has
//! zero area: its corners lie strictly inside three distinct edges of one cube, and a
//! line meets a cube's boundary in at most two points unless it lies in a face, where
//! the same holds for the face's boundary.
//!
//! Why marching cubes rather than tetrahedra or surface nets: tetrahedra (6 per cube)
//! are just as safe but give about three times the faces, which every later step pays
//! for (decimation most); surface nets give as many faces as marching cubes but pinch
//! vertices and edges wherever a cube holds two sheets (measured in `../shared/mesh.md`).
//!
//! Vertices are keyed by the grid edge they lie on, so the output is welded. The keys
//! live in three slabs — x and y edges of the lower and upper sample planes and the z
//! edges between them — and only the slots actually written are cleared when the sweep
//! moves up one layer, so memory is O(n_y · n_x) and time is one pass over the samples
//! plus work proportional to the surface.

use crate::{Mesh, MeshError, Volume};

/// Crossings are kept at least this fraction of a grid edge away from its end samples.
///
/// Why: a crossing at (or within rounding of) a sample would put several vertices on one
/// point and create zero-area triangles; that is what samples exactly at the iso level do
/// to other extractors. Moving a vertex by at most 1 % of a grid step is invisible, keeps
/// every triangle's area well above rounding, and leaves vertices on distinct grid edges
/// at distinct positions, so welding by position (as a slicer does) changes nothing.
const T_MIN: f32 = 0.01;

/// Marks an edge slot that has no vertex yet.
const UNSET: u32 = u32::MAX;

/// The longest loop a cube can hold (every one of its 12 edges crossing).
const MAX_LOOP: usize = 12;

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
    /// x and y edges of the lower and upper planes, 2 slots per sample.
    lower_edges: Slab,
    upper_edges: Slab,
    /// z edges between the planes, 1 slot per sample.
    cross_edges: Slab,
    tables: Tables,
    /// Scratch: the solid bit of each sample of the plane being loaded.
    bits: Vec<u8>,
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
            lower_edges: Slab::new(2 * n),
            upper_edges: Slab::new(2 * n),
            cross_edges: Slab::new(n),
            tables: Tables::new(),
            bits: vec![0; n],
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
            // The padding ring is never written, so it stays NaN from `Sweep::new`.
        } else {
            plane.f.fill(f32::NAN);
        }
        // One solid bit per sample (NaN padding is empty), then each square's four bits
        // from two rows of them: no loop-carried state, so both passes vectorise.
        for (bit, &v) in self.bits.iter_mut().zip(&plane.f) {
            *bit = (v < 0.0) as u8;
        }
        let count: usize = self.bits.iter().map(|&b| usize::from(b)).sum();
        for py in 0..py_n - 1 {
            let (lo, hi) = (
                &self.bits[py * px_n..][..px_n],
                &self.bits[(py + 1) * px_n..][..px_n],
            );
            let quad = &mut plane.quad[py * px_n..][..px_n - 1];
            let corners = lo.iter().zip(&lo[1..]).zip(hi.iter().zip(&hi[1..]));
            for (q, ((&a, &b), (&c, &d))) in quad.iter_mut().zip(corners) {
                *q = a | b << 1 | c << 2 | d << 3;
            }
        }
        self.solid += count;
    }

    /// Emits the triangles of cube layer `k` (between padded planes k and k + 1), then
    /// advances to the next layer.
    fn layer(&mut self, k: usize) -> Result<(), MeshError> {
        let px_n = self.px_n;
        // Eight squares whose corners are all empty (0) or all solid (0x0f) in both
        // planes hold no surface; most of a volume is like that, so skip them a word at
        // a time.
        const ALL_SOLID: u64 = 0x0f0f_0f0f_0f0f_0f0f;
        let word = |q: &[u8], i: usize| {
            q.get(i..i + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([1; 8])))
        };
        for py in 0..self.py_n - 1 {
            let mut px = 0;
            while px < px_n - 1 {
                let i = py * px_n + px;
                if px + 8 < px_n {
                    let (a, b) = (word(&self.lower.quad, i), word(&self.upper.quad, i));
                    if a == b && (a == Some(0) || a == Some(ALL_SOLID)) {
                        px += 8;
                        continue;
                    }
                }
                let mask = self.lower.quad[i] | self.upper.quad[i] << 4;
                if mask != 0 && mask != 0xff {
                    self.cube(k, py, px, mask)?;
                }
                px += 1;
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
        let mut v = [0u32; MAX_LOOP];
        let mut codes = [0u8; MAX_LOOP];
        for l in self.tables.loops(mask) {
            let n = self.tables.codes(l).len();
            codes[..n].copy_from_slice(self.tables.codes(l));
            for (slot, &code) in v.iter_mut().zip(&codes[..n]) {
                *slot = self.vertex(k, py, px, code)?;
            }
            if n == 4 {
                // Split a quad along its shorter diagonal for better-shaped triangles;
                // either split keeps the loop's orientation.
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
            } else {
                for i in 1..n - 1 {
                    self.indices.push([v[0], v[i], v[i + 1]]);
                }
            }
        }
        Ok(())
    }

    /// The vertex on cube edge `code` (corner · 8 + axis bit) of cube (k, py, px),
    /// created on first use.
    fn vertex(&mut self, k: usize, py: usize, px: usize, code: u8) -> Result<u32, MeshError> {
        let (corner, dir) = ((code >> 3) as usize, (code & 7) as usize);
        let (cx, cy, cz) = (corner & 1, corner >> 1 & 1, corner >> 2);
        let (sy, sx) = (py + cy, px + cx);
        let s = sy * self.px_n + sx;
        let (slab, slot) = match (dir, cz) {
            (4, _) => (&mut self.cross_edges, s),
            (_, 0) => (&mut self.lower_edges, 2 * s + (dir >> 1)),
            _ => (&mut self.upper_edges, 2 * s + (dir >> 1)),
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

/// For each of the 256 solid/empty patterns of a cube's corners, its surface loops as
/// cube edge codes (lower corner · 8 + axis bit), counter-clockwise seen from the empty
/// side, each with its triangulation. Corners are numbered `dx + 2 dy + 4 dz`.
struct Tables {
    codes: Vec<u8>,
    /// Loop `l` is `codes[starts[l]..starts[l + 1]]`.
    starts: Vec<u16>,
    /// The loops of mask `m` are `by_mask[m]..by_mask[m + 1]`.
    by_mask: [u16; 257],
}

impl Tables {
    fn loops(&self, mask: u8) -> std::ops::Range<usize> {
        self.by_mask[mask as usize] as usize..self.by_mask[mask as usize + 1] as usize
    }

    fn codes(&self, l: usize) -> &[u8] {
        &self.codes[self.starts[l] as usize..self.starts[l + 1] as usize]
    }

    fn new() -> Self {
        let mut codes = Vec::new();
        let mut starts = vec![0u16];
        let mut by_mask = [0u16; 257];
        for (mask, first) in by_mask.iter_mut().enumerate().take(256) {
            *first = (starts.len() - 1) as u16;
            for cycle in cube_loops(mask as u8) {
                codes.extend(fan_order(cycle));
                starts.push(codes.len() as u16);
            }
        }
        by_mask[256] = (starts.len() - 1) as u16;
        Self {
            codes,
            starts,
            by_mask,
        }
    }
}

/// Rotates a loop so that the fan from its first vertex only adds diagonals between
/// vertices on no common cube face.
///
/// Why: two vertices on one cube face that the face's segments do not join lie on an
/// ambiguous face, and the cube on its other side may hold a loop through both too. If
/// both cubes drew that diagonal, four triangles would share it. A diagonal between
/// vertices on no common face belongs to this cube alone. Such an apex exists for every
/// loop of every pattern (checked by a test over all 256); a quad's diagonals are always
/// safe (two vertices of a quad on one face are joined on it), so quads keep the
/// shorter-diagonal split.
fn fan_order(mut cycle: Vec<u8>) -> Vec<u8> {
    let n = cycle.len();
    if n > 4 {
        if let Some(a) = (0..n).find(|&a| safe_apex(&cycle, a)) {
            cycle.rotate_left(a);
        }
    }
    cycle
}

/// Whether every fan diagonal from vertex `a` of `cycle` joins vertices on no common face.
fn safe_apex(cycle: &[u8], a: usize) -> bool {
    let n = cycle.len();
    (2..n - 1).all(|k| !share_face(cycle[a], cycle[(a + k) % n]))
}

/// Whether two cube edges (by code) lie on a common face of the cube.
fn share_face(a: u8, b: u8) -> bool {
    (0..3).any(|axis| {
        let bit = 1u8 << axis;
        // An edge lies on the face (axis, side) when it does not run along the axis and
        // its corner is on that side.
        let on = |code: u8, side: u8| code & 7 != bit && (code >> 3) & bit == side;
        [0, bit].into_iter().any(|side| on(a, side) && on(b, side))
    })
}

/// The code of the cube edge between corners `a` and `b` (which differ in one bit).
fn edge_code(a: u8, b: u8) -> u8 {
    a.min(b) * 8 + (a ^ b)
}

fn corner_position(c: u8) -> [f32; 3] {
    [c & 1, c >> 1 & 1, c >> 2 & 1].map(f32::from)
}

/// The surface loops of one corner pattern, traced along the cube's faces.
///
/// On each face, every crossing edge is joined to one other: with two crossings to each
/// other, with four (solid corners diagonal) each solid corner's two edges together. The
/// segment is directed so that, seen from outside the cube, the solid side is on its
/// right; then the loops run counter-clockwise seen from the empty side, and the cube on
/// the other side of the face (whose outside is this cube's inside) draws the same
/// segment the other way round.
fn cube_loops(mask: u8) -> Vec<Vec<u8>> {
    let solid = |c: u8| mask >> c & 1 == 1;
    let mid = |(a, b): (u8, u8)| {
        let (pa, pb) = (corner_position(a), corner_position(b));
        [0, 1, 2].map(|i| 0.5 * (pa[i] + pb[i]))
    };
    // next[edge code] = the edge code after it in its loop.
    let mut next = [u8::MAX; 64];
    for axis in 0..3 {
        let bit = 1u8 << axis;
        for side in [0u8, bit] {
            let mut normal = [0.0f32; 3];
            normal[axis] = if side == 0 { -1.0 } else { 1.0 };
            let corners: Vec<u8> = (0..8u8).filter(|c| c & bit == side).collect();
            let edges: Vec<(u8, u8)> = corners
                .iter()
                .flat_map(|&a| corners.iter().map(move |&b| (a, b)))
                .filter(|&(a, b)| a < b && (a ^ b).count_ones() == 1)
                .collect();
            let crossing: Vec<(u8, u8)> = edges
                .iter()
                .copied()
                .filter(|&(a, b)| solid(a) != solid(b))
                .collect();
            let mut segments = Vec::new();
            match crossing.len() {
                0 => {}
                2 => {
                    let s = corners.iter().copied().find(|&c| solid(c));
                    segments.extend(s.map(|s| (crossing[0], crossing[1], s)));
                }
                _ => {
                    for &s in corners.iter().filter(|&&c| solid(c)) {
                        let mut own = crossing.iter().copied().filter(|&(a, b)| a == s || b == s);
                        if let (Some(e1), Some(e2)) = (own.next(), own.next()) {
                            segments.push((e1, e2, s));
                        }
                    }
                }
            }
            for (e1, e2, s) in segments {
                let (p1, p2, ps) = (mid(e1), mid(e2), corner_position(s));
                let d = sub(p2, p1);
                let r = sub(ps, p1);
                let right = dot(cross(d, r), normal) < 0.0;
                let (from, to) = if right { (e1, e2) } else { (e2, e1) };
                next[edge_code(from.0, from.1) as usize] = edge_code(to.0, to.1);
            }
        }
    }
    let mut loops = Vec::new();
    let mut seen = [false; 64];
    for start in 0..64u8 {
        if next[start as usize] == u8::MAX || seen[start as usize] {
            continue;
        }
        let mut cycle = Vec::new();
        let mut e = start;
        while !seen[e as usize] {
            seen[e as usize] = true;
            cycle.push(e);
            e = next[e as usize];
        }
        loops.push(cycle);
    }
    loops
}

fn sub(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn dot(a: [f32; 3], b: [f32; 3]) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_trace_every_crossing_edge_once_in_closed_loops() {
        let tables = Tables::new();
        assert_eq!(tables.loops(0).len(), 0);
        assert_eq!(tables.loops(0xff).len(), 0);
        for mask in 1..255u8 {
            let mut used = Vec::new();
            for l in tables.loops(mask) {
                let codes = tables.codes(l);
                assert!((3..=MAX_LOOP).contains(&codes.len()), "mask {mask:#x}");
                for &code in codes {
                    let (a, b) = (code >> 3, (code >> 3) + (code & 7));
                    assert!(matches!(code & 7, 1 | 2 | 4) && a & (code & 7) == 0);
                    assert_ne!(mask >> a & 1, mask >> b & 1, "edge {a}-{b} does not cross");
                    used.push(code);
                }
            }
            // Every crossing edge lies on exactly one loop: that is what welds the
            // four cubes around a grid edge into one fan.
            let crossing = (0..8u8)
                .flat_map(|a| [1u8, 2, 4].map(|d| (a, d)))
                .filter(|&(a, d)| a & d == 0 && (mask >> a & 1) != (mask >> (a | d) & 1))
                .count();
            used.sort_unstable();
            used.dedup();
            assert_eq!(used.len(), crossing, "mask {mask:#x}");
            for l in tables.loops(mask) {
                let codes = tables.codes(l);
                assert!(codes.len() == 4 || safe_apex(codes, 0), "mask {mask:#x}");
                if codes.len() == 4 {
                    assert!(safe_apex(codes, 0) && safe_apex(codes, 1), "mask {mask:#x}");
                }
            }
        }
    }

    #[test]
    fn a_lone_solid_corner_gives_one_triangle_facing_away() {
        for corner in 0..8u8 {
            for lone_solid in [true, false] {
                let mask = if lone_solid {
                    1 << corner
                } else {
                    !(1u8 << corner)
                };
                let loops = cube_loops(mask);
                assert_eq!(loops.len(), 1);
                let p: Vec<[f32; 3]> = loops[0]
                    .iter()
                    .map(|&code| {
                        let (a, b) = (code >> 3, (code >> 3) + (code & 7));
                        let (pa, pb) = (corner_position(a), corner_position(b));
                        [0, 1, 2].map(|i| 0.5 * (pa[i] + pb[i]))
                    })
                    .collect();
                let n = cross(sub(p[1], p[0]), sub(p[2], p[0]));
                let away = sub(p[0], corner_position(corner));
                if lone_solid {
                    assert!(dot(n, away) > 0.0, "corner {corner}: faces into the solid");
                } else {
                    assert!(dot(n, away) < 0.0, "corner {corner}: faces into the solid");
                }
            }
        }
    }

    #[test]
    fn ambiguous_faces_separate_the_solid_corners() {
        // Corners 0 and 3 solid: diagonal on the z = 0 face, and nowhere connected.
        let loops = cube_loops(0b0000_1001);
        assert_eq!(loops.len(), 2);
        assert!(loops.iter().all(|l| l.len() == 3));
        // In the complement, solid corners 1 and 2 are the ones cut off on z = 0, so the
        // empty corners 0 and 3 join across that face: one ring of six around them.
        let loops = cube_loops(!0b0000_1001);
        assert_eq!(loops.len(), 1);
        assert_eq!(loops[0].len(), 6);
    }
}
