//! A uniform grid of faces: each face is listed in every cell its bounding box
//! touches. Two queries share it: the self-intersection count (pairs of faces that
//! share a cell) and the wall probe (the nearest face along a ray, walking the cells
//! the ray passes through). Without it both were a scan of every face per query.

/// Faces bucketed by the cells their bounding boxes overlap (compressed rows:
/// the faces of cell `c` are `entries[start[c]..start[c + 1]]`).
pub(crate) struct FaceGrid {
    /// Low corner of the grid (the mesh's bounding box).
    pub lo: [f64; 3],
    /// Edge of a cubic cell.
    pub h: f64,
    /// Cells along x, y, z.
    pub res: [usize; 3],
    /// Each face's bounding box, indexed like the faces given to [`FaceGrid::build`].
    pub boxes: Vec<([f64; 3], [f64; 3])>,
    /// Row starts, one per cell plus the end.
    pub start: Vec<u32>,
    /// Face indices, cell after cell.
    pub entries: Vec<u32>,
}

impl FaceGrid {
    /// Buckets `faces` (indices into `p`). Cells are about two mean edge lengths
    /// wide, with no more than ~4 cells per face and at most 1024 along an axis, so
    /// a cell holds a handful of faces on a typical mesh. `None` without faces or
    /// finite positions.
    pub fn build(p: &[[f64; 3]], faces: &[[usize; 3]]) -> Option<Self> {
        if faces.is_empty() {
            return None;
        }
        let mut lo = [f64::INFINITY; 3];
        let mut hi = [f64::NEG_INFINITY; 3];
        for f in faces {
            for &v in f {
                for i in 0..3 {
                    lo[i] = lo[i].min(p[v][i]);
                    hi[i] = hi[i].max(p[v][i]);
                }
            }
        }
        if !(0..3).all(|i| lo[i].is_finite() && hi[i].is_finite()) {
            return None;
        }
        let ext: [f64; 3] = std::array::from_fn(|i| (hi[i] - lo[i]).max(1e-12));
        let edge_sum: f64 = faces.iter().map(|f| dist(p[f[0]], p[f[1]])).sum();
        let mean_edge = edge_sum / faces.len() as f64;
        let volume_cap = (ext[0] * ext[1] * ext[2] / (4.0 * faces.len() as f64)).cbrt();
        let h = (2.0 * mean_edge).max(volume_cap).max(1e-12);
        let res: [usize; 3] = std::array::from_fn(|i| ((ext[i] / h).ceil() as usize).clamp(1, 1024));
        let boxes: Vec<([f64; 3], [f64; 3])> = faces
            .iter()
            .map(|f| {
                let [a, b, c] = f.map(|v| p[v]);
                (
                    std::array::from_fn(|i| a[i].min(b[i]).min(c[i])),
                    std::array::from_fn(|i| a[i].max(b[i]).max(c[i])),
                )
            })
            .collect();
        let mut grid = FaceGrid { lo, h, res, boxes, start: Vec::new(), entries: Vec::new() };
        // Each face's cell range, found once for both passes of the counting sort.
        let ranges: Vec<[[usize; 2]; 3]> = grid
            .boxes
            .iter()
            .map(|b| std::array::from_fn(|i| [grid.cell_of(b.0[i], i), grid.cell_of(b.1[i], i)]))
            .collect();
        let cells = res[0] * res[1] * res[2];
        let mut start = vec![0u32; cells + 1];
        for r in &ranges {
            grid.for_cells(r, |c| start[c + 1] += 1);
        }
        for c in 0..cells {
            start[c + 1] += start[c];
        }
        let mut fill = start.clone();
        let mut entries = vec![0u32; start[cells] as usize];
        for (fi, r) in ranges.iter().enumerate() {
            grid.for_cells(r, |c| {
                entries[fill[c] as usize] = fi as u32;
                fill[c] += 1;
            });
        }
        grid.start = start;
        grid.entries = entries;
        Some(grid)
    }

    /// Number of cells.
    pub fn cells(&self) -> usize {
        self.res[0] * self.res[1] * self.res[2]
    }

    /// The cell along `axis` holding coordinate `x` (clamped into the grid).
    pub fn cell_of(&self, x: f64, axis: usize) -> usize {
        // Clamped at 0 first, the cast truncates a non-negative value, which is its
        // floor: the same cell as `floor().max(0.0)` for every input, NaN (cell 0)
        // included, without a libm call on targets lacking a rounding instruction
        // (this runs for every face and pair of the print report).
        (((x - self.lo[axis]) / self.h).max(0.0) as usize).min(self.res[axis] - 1)
    }

    /// Linear index of cell (x, y, z).
    pub fn index(&self, x: usize, y: usize, z: usize) -> usize {
        (z * self.res[1] + y) * self.res[0] + x
    }

    /// The faces listed in cell `c`.
    pub fn faces_in(&self, c: usize) -> &[u32] {
        &self.entries[self.start[c] as usize..self.start[c + 1] as usize]
    }

    #[inline]
    fn for_cells(&self, r: &[[usize; 2]; 3], mut f: impl FnMut(usize)) {
        for z in r[2][0]..=r[2][1] {
            for y in r[1][0]..=r[1][1] {
                for x in r[0][0]..=r[0][1] {
                    f(self.index(x, y, z));
                }
            }
        }
    }

    /// Walks the cells a ray from `origin` along the unit vector `dir` passes through,
    /// nearest first (Amanatides & Woo), calling `visit(cell, t_exit)` with the ray
    /// parameter at which it leaves the cell; stops when `visit` returns `false` or the
    /// ray leaves the grid. `origin` must lie inside the grid's box (a face centre does).
    pub fn walk(&self, origin: [f64; 3], dir: [f64; 3], mut visit: impl FnMut(usize, f64) -> bool) {
        let mut cell: [usize; 3] = std::array::from_fn(|i| self.cell_of(origin[i], i));
        let mut step = [0isize; 3];
        let mut t_max = [f64::INFINITY; 3];
        let mut t_delta = [f64::INFINITY; 3];
        for i in 0..3 {
            if dir[i] > 0.0 {
                step[i] = 1;
                let boundary = self.lo[i] + (cell[i] + 1) as f64 * self.h;
                t_max[i] = (boundary - origin[i]) / dir[i];
                t_delta[i] = self.h / dir[i];
            } else if dir[i] < 0.0 {
                step[i] = -1;
                let boundary = self.lo[i] + cell[i] as f64 * self.h;
                t_max[i] = (boundary - origin[i]) / dir[i];
                t_delta[i] = -self.h / dir[i];
            }
        }
        loop {
            let axis = if t_max[0] <= t_max[1] && t_max[0] <= t_max[2] {
                0
            } else if t_max[1] <= t_max[2] {
                1
            } else {
                2
            };
            // The last cell along an axis extends to infinity in clamped lookups,
            // so leaving the grid means stepping past the last cell.
            let t_exit = t_max[axis].max(0.0);
            let last = if step[axis] > 0 { cell[axis] + 1 == self.res[axis] } else { cell[axis] == 0 };
            if !visit(self.index(cell[0], cell[1], cell[2]), if last { f64::INFINITY } else { t_exit }) || last {
                return;
            }
            if !t_exit.is_finite() {
                return;
            }
            cell[axis] = (cell[axis] as isize + step[axis]) as usize;
            t_max[axis] += t_delta[axis];
        }
    }
}

fn dist(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}
