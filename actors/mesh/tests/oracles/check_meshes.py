"""Independent oracles for orfeas-mesh exports (run by tests/oracles.rs).

Reads a JSON manifest: a list of {"path", "faces", "volume", "rel_tol", "genus"} and,
for textured files, "texture": [width, height].
For each file: trimesh loads it (STL, GLB, OBJ, PLY, 3MF) and must find it watertight,
winding-consistent, with exactly `faces` faces and a volume within `rel_tol` of the
analytic `volume`; manifold3d must accept it as a manifold (status NoError) with the
expected genus. A textured file must load with texture visuals: one UV in [0, 1] per
vertex and the material's image (an OBJ's through its MTL) of the given size. Prints
one line per file; exits 1 on the first failure list.
"""

import json
import sys

import manifold3d
import numpy as np
import trimesh


def check(entry):
    problems = []
    mesh = trimesh.load(entry["path"], force="mesh")
    if len(mesh.faces) != entry["faces"]:
        problems.append(f"faces {len(mesh.faces)} != {entry['faces']}")
    if not mesh.is_watertight:
        problems.append("trimesh: not watertight")
    if not mesh.is_winding_consistent:
        problems.append("trimesh: winding not consistent")
    rel = abs(mesh.volume - entry["volume"]) / entry["volume"]
    if rel > entry["rel_tol"]:
        problems.append(f"volume {mesh.volume:.6g} vs {entry['volume']:.6g} (rel {rel:.4f})")
    if "texture" in entry:
        visual = mesh.visual
        if visual.kind != "texture":
            problems.append(f"visual kind {visual.kind}, expected texture")
        else:
            uv = np.asarray(visual.uv)
            if uv.shape != (len(mesh.vertices), 2) or uv.min() < 0 or uv.max() > 1:
                problems.append(f"uv shape {uv.shape} range [{uv.min()}, {uv.max()}]")
            image = getattr(visual.material, "image", None) or getattr(
                visual.material, "baseColorTexture", None
            )
            size = list(image.size) if image is not None else None
            if size != entry["texture"]:
                problems.append(f"texture image size {size} != {entry['texture']}")
    m = manifold3d.Manifold(
        manifold3d.Mesh(
            vert_properties=np.asarray(mesh.vertices, dtype=np.float32),
            tri_verts=np.asarray(mesh.faces, dtype=np.uint32),
        )
    )
    if m.status() != manifold3d.Error.NoError:
        problems.append(f"manifold3d: {m.status()}")
    elif m.genus() != entry["genus"]:
        problems.append(f"manifold3d genus {m.genus()} != {entry['genus']}")
    print(
        f"{entry['path']}: faces {len(mesh.faces)} watertight {mesh.is_watertight} "
        f"volume {mesh.volume:.6g} (expected {entry['volume']:.6g}) "
        f"manifold3d {m.status()} -> {'OK' if not problems else problems}"
    )
    return problems


def main():
    entries = json.load(open(sys.argv[1]))
    failed = [(e["path"], p) for e in entries if (p := check(e))]
    print(f"trimesh {trimesh.__version__}, manifold3d {getattr(manifold3d, '__version__', '?')}")
    if failed:
        for path, problems in failed:
            print(f"FAIL {path}: {problems}")
        sys.exit(1)


if __name__ == "__main__":
    main()
