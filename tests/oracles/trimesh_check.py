"""Independent check of mesh files written by orfeas, with trimesh.

Usage: python trimesh_check.py FILE...
Prints one JSON object per file: faces, watertight, winding_consistent, volume,
visual (trimesh's visual kind: texture, vertex, face or null).
"""
import json
import sys

import trimesh


def main() -> None:
    for path in sys.argv[1:]:
        mesh = trimesh.load(path, force="mesh", process=True)
        print(json.dumps({
            "file": path,
            "faces": int(len(mesh.faces)),
            "watertight": bool(mesh.is_watertight),
            "winding_consistent": bool(mesh.is_winding_consistent),
            "volume": float(mesh.volume),
            "visual": mesh.visual.kind,
        }))


if __name__ == "__main__":
    main()
