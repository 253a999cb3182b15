use std::time::Instant;
use orfeas_mesh::*;
fn main() {
    let n: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(256);
    let c = |i: usize| -1.0 + 2.0 * i as f32 / (n - 1) as f32;
    let mut data = Vec::new();
    for k in 0..n { for j in 0..n { for i in 0..n {
        let (x,y,z)=(c(i),c(j),c(k));
        let ball = (x * x + y * y + z * z).sqrt() - 0.55;
        let ring = ((x * x + z * z).sqrt() - 0.7).hypot(y) - 0.12;
        data.push(ball.min(ring));
    }}}
    let v = Volume { data: &data, dims: [n;3], bounds_min: [-1.0;3], bounds_max: [1.0;3], iso: 0.0, inside: Inside::Below };
    let m = extract(&v).unwrap();
    let idx: Vec<u32> = m.indices.iter().flatten().copied().collect();
    for opt in [meshopt::SimplifyOptions::None, meshopt::SimplifyOptions::Regularize] {
    let t = Instant::now();
    let mut err = 0.0;
    let out = meshopt::simplify_decoder(&idx, &m.positions, 40_000*3, 1.0, opt, Some(&mut err));
    let dt = t.elapsed();
    let mm = Mesh { positions: m.positions.clone(), indices: out.chunks(3).map(|c| [c[0],c[1],c[2]]).collect(), colors: None };
    let topo = check(&mm);
    println!("{n}: {} faces -> {} in {:?}, err {err}, {:?}", m.indices.len(), mm.indices.len(), dt, (topo.boundary_edges, topo.non_manifold_edges, topo.non_manifold_vertices, topo.degenerate_faces, topo.inconsistent_edges, topo.euler));
    }
}
