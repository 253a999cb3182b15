#!/usr/bin/env python3
"""Compare orfeas' print reports with what admesh, PrusaSlicer and trimesh measure.

    slicer_compare.py OUT_DIR NAME...     # OUT_DIR/NAME.stl + OUT_DIR/NAME.report.json each

For each model: size, volume, shells and manifoldness from `admesh` and `prusa-slicer
--info`; the filament PrusaSlicer extrudes at 100 % and at its default 20 % infill; whether
it warns of empty layers (parts in mid-air) and whether it generates support material
(auto supports, its default overhang threshold); trimesh's overhang area (faces with
n.z < -cos 45 deg, the bed excluded) and the area of the cross-section at z = 0.1 mm (the
middle of a 0.2 mm first layer: what the slicer puts on the bed). Prints two Markdown
tables (md/mesh.md, "Against a slicer"). Needs admesh, prusa-slicer and a Python with
trimesh and numpy.
"""

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import trimesh


def admesh(stl: Path) -> dict:
    out = subprocess.run(["admesh", str(stl)], capture_output=True, text=True, check=True).stdout
    num = lambda pat: float(re.search(pat, out).group(1))
    size = [num(rf"Max {a} =\s*(-?[\d.]+)") - num(rf"Min {a} =\s*(-?[\d.]+)") for a in "XYZ"]
    return {"size": size, "volume": num(r"Volume\s*:\s*(-?[\d.]+)"), "parts": int(num(r"Number of parts\s*:\s*(\d+)")),
            "disconnected": int(num(r"Total disconnected facets\s*:\s*(\d+)"))}


def prusa_info(stl: Path) -> dict:
    out = subprocess.run(["prusa-slicer", "--loglevel", "1", "--info", str(stl)], capture_output=True, text=True, check=True).stdout
    kv = dict(re.findall(r"^(\w+) = +(.+)$", out, re.M))
    return {"size": [float(kv[f"size_{a}"]) for a in "xyz"], "volume": float(kv["volume"]), "parts": int(kv["number_of_parts"]),
            "manifold": kv["manifold"].strip()}


def prusa_slice(stl: Path, *args: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        gcode = Path(tmp) / "out.gcode"
        run = subprocess.run(["prusa-slicer", "--loglevel", "2", "--export-gcode", *args, "--output", str(gcode), str(stl)],
                             capture_output=True, text=True)
        text = gcode.read_text() if gcode.exists() else ""
    cm3 = re.search(r"^; filament used \[cm3\] = ([\d.]+)", text, re.M)
    support_moves = 0
    in_support = False
    for line in text.splitlines():
        if line.startswith(";TYPE:"):
            in_support = line.startswith(";TYPE:Support material")
        elif in_support and line.startswith("G1") and " E" in line:
            support_moves += 1
    return {"cm3": float(cm3.group(1)) if cm3 else None, "empty_layers": "Empty layer" in run.stdout + run.stderr,
            "support_moves": support_moves}


def trimesh_measures(stl: Path) -> dict:
    mesh = trimesh.load(str(stl), force="mesh")
    z0 = mesh.bounds[0][2]
    nz = mesh.face_normals[:, 2]
    on_bed = (mesh.vertices[mesh.faces][:, :, 2] <= z0 + 0.1).all(axis=1) & (nz < -0.5)
    overhang = (~on_bed) & (nz < -np.cos(np.radians(45)))
    return {"overhang": float(mesh.area_faces[overhang].sum()), "first_layer": section_area(mesh, z0 + 0.1),
            "floating": int(sum(1 for part in mesh.split(only_watertight=False) if part.bounds[0][2] > z0 + 0.1))}


def section_area(mesh, z: float) -> float:
    """Area of the closed mesh's cross-section at height z: each face crossing the plane
    gives a segment, turned counter-clockwise around the solid (along z x outward normal),
    and the shoelace sum over all segments is the enclosed area (no loops needed; holes
    subtract themselves). Standard library + numpy: trimesh's own section needs scipy."""
    tri = mesh.vertices[mesh.faces]
    d = tri[:, :, 2] - z
    d = np.where(d == 0.0, 1e-12, d)  # a vertex exactly on the plane counts as above
    area = 0.0
    for f in np.nonzero((d.min(axis=1) < 0) & (d.max(axis=1) > 0))[0]:
        pts = []
        for i, j in ((0, 1), (1, 2), (2, 0)):
            if (d[f, i] < 0) != (d[f, j] < 0):
                t = d[f, i] / (d[f, i] - d[f, j])
                pts.append(tri[f, i] + t * (tri[f, j] - tri[f, i]))
        p, q = pts[0], pts[1]
        n = mesh.face_normals[f]
        tangent = np.array([-n[1], n[0]])  # z x n, projected
        if (q[:2] - p[:2]) @ tangent < 0:
            p, q = q, p
        area += 0.5 * (p[0] * q[1] - q[0] * p[1])
    return float(area)



def main() -> int:
    out_dir, names = Path(sys.argv[1]), sys.argv[2:]
    geo = ["| model | size mm: orfeas | admesh | PrusaSlicer | volume mm³: orfeas | admesh | PrusaSlicer | shells: orfeas | admesh | PrusaSlicer | closed, manifold: orfeas | admesh disconnected facets | PrusaSlicer manifold |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    prn = ["| model | orfeas solid cm³ | PrusaSlicer filament, 100 % infill | at its default 20 % | floating parts: orfeas | trimesh | PrusaSlicer empty-layer warning | overhang mm²: orfeas | trimesh | PrusaSlicer support moves | bed contact mm²: orfeas | first-layer section (z = 0.1 mm), trimesh |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda s: " × ".join(f"{v:.2f}" for v in s)
    for name in names:
        stl = out_dir / f"{name}.stl"
        report = json.loads((out_dir / f"{name}.report.json").read_text())["report"]
        checks = report["checks"]
        a, p, t = admesh(stl), prusa_info(stl), trimesh_measures(stl)
        full = prusa_slice(stl, "--fill-density", "100%", "--fill-pattern", "rectilinear")
        default = prusa_slice(stl)
        supports = prusa_slice(stl, "--support-material", "--support-material-auto")
        geo.append(f"| {name} | {fmt(report['bbox_mm'])} | {fmt(a['size'])} | {fmt(p['size'])} | {report['volume_mm3']:.0f} | {a['volume']:.0f} | {p['volume']:.0f} | "
                   f"{report['components']} | {a['parts']} | {p['parts']} | {report['closed'] and report['two_manifold']} | {a['disconnected']} | {p['manifold']} |")
        prn.append(f"| {name} | {report['volume_mm3'] / 1000:.1f} | {full['cm3']} | {default['cm3']} | {checks['floating_parts']} | {t['floating']} | "
                   f"{'yes' if default['empty_layers'] else 'no'} | {checks['overhang_mm2']:.0f} | {t['overhang']:.0f} | {supports['support_moves']} | "
                   f"{checks['bed_contact_mm2']:.1f} | {t['first_layer']:.1f} |")
    print("\n".join(geo))
    print()
    print("\n".join(prn))
    return 0


if __name__ == "__main__":
    sys.exit(main())
