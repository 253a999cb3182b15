"""Python baselines for md/benchmarks.md "Mesh pipeline" (same SDF as
examples/bench_pipeline.rs: a ball, a ring and 24 floaters on [-1, 1]^3).

    $ORFEAS_PYTHON actors/mesh/benches-py/bench_baselines.py [n ...]

Needs numpy, scikit-image, PyMCubes, pymeshlab. Extraction: best of 3. The
Hunyuan3D-style chain (skimage marching cubes -> pymeshlab: remove small
components, duplicate and null faces -> quadric edge collapse to 40k faces with
Hunyuan3D-2's FaceReducer settings) runs once per size (it is slow).
"""

import sys
import time

import mcubes
import numpy as np
import pymeshlab
from skimage import measure


def sdf(n):
    c = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    z, y, x = np.meshgrid(c, c, c, indexing="ij")  # [z, y, x] C order like Volume
    d = np.sqrt(x * x + y * y + z * z) - 0.55
    ring = np.hypot(np.sqrt(x * x + z * z) - 0.7, y) - 0.12
    d = np.minimum(d, ring)
    for k in range(24):
        a = k * 0.9
        cx, cy, cz = 0.88 * np.cos(a), -0.8 + k * 0.07, 0.88 * np.sin(a)
        d = np.minimum(d, np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) - 0.035)
    return d.astype(np.float32)


def best(f, runs=3):
    out, t_best = None, float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        out = f()
        t_best = min(t_best, time.perf_counter() - t)
    return t_best, out


def hunyuan_chain(vol, target=40_000):
    t = time.perf_counter()
    v, f, _, _ = measure.marching_cubes(vol, 0.0, method="lewiner")
    ms = pymeshlab.MeshSet()
    ms.add_mesh(pymeshlab.Mesh(vertex_matrix=v.astype(np.float64), face_matrix=f.astype(np.int32)))
    ms.meshing_remove_connected_component_by_diameter(mincomponentdiag=pymeshlab.PercentageValue(10.0))
    ms.meshing_remove_duplicate_faces()
    ms.meshing_remove_null_faces()
    ms.meshing_decimation_quadric_edge_collapse(
        targetfacenum=target, qualitythr=1.0, preserveboundary=True, boundaryweight=3,
        preservenormal=True, preservetopology=True, autoclean=True,
    )
    faces = ms.current_mesh().face_number()
    return time.perf_counter() - t, faces


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [128, 256, 512]
    for n in sizes:
        vol = sdf(n)
        t_sk, (v, f, _, _) = best(lambda: measure.marching_cubes(vol, 0.0, method="lewiner"))
        print(f"{n}^3 skimage marching_cubes: {t_sk * 1e3:.0f} ms, {len(f)} faces", flush=True)
        t_mc, (v, f) = best(lambda: mcubes.marching_cubes(vol, 0.0))
        print(f"{n}^3 PyMCubes: {t_mc * 1e3:.0f} ms, {len(f)} faces", flush=True)
        if n <= 256:
            t_chain, faces = hunyuan_chain(vol)
            print(f"{n}^3 Hunyuan-style chain to 40k: {t_chain * 1e3:.0f} ms, {faces} faces", flush=True)


if __name__ == "__main__":
    main()
