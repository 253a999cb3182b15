#!/usr/bin/env python3
"""Write the example input images in examples/ (needs only numpy + the standard library).

    python examples/make_examples.py            # (re)write mug.png, star.png, apple-512.png
    python examples/make_examples.py --check    # exit non-zero unless the committed files are
                                                # byte-identical to freshly generated ones

The PNGs are written by hand (zlib + struct), deterministic: no randomness, no timestamps.
Shapes are drawn with 4x4 supersampling for anti-aliased edges.
"""

from __future__ import annotations

import argparse
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SS = 4  # supersampling factor per axis


# ------------------------------------------------------------------------------------------
# PNG writing
# ------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(img: np.ndarray) -> bytes:
    """8-bit RGB or RGBA PNG from a uint8 array [H, W, 3|4]. Per row, the filter (None, Sub or
    Up) with the smallest sum of absolute signed bytes is used (the usual heuristic)."""
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] in (3, 4)
    h, w, c = img.shape
    color_type = 6 if c == 4 else 2
    rows = img.reshape(h, w * c).astype(np.int16)
    raw = bytearray()
    prev = np.zeros(w * c, dtype=np.int16)
    for y in range(h):
        row = rows[y]
        sub = row.copy()
        sub[c:] = row[c:] - row[:-c]
        up = row - prev
        cands = [(0, row), (1, sub), (2, up)]
        # pick the filter with the smallest sum of |signed bytes| (standard heuristic)
        best = min(cands, key=lambda fc: int(np.abs(((fc[1] + 128) % 256) - 128).sum()))
        raw.append(best[0])
        raw += (best[1] % 256).astype(np.uint8).tobytes()
        prev = row
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(bytes(raw), 9))
        + _chunk(b"IEND", b"")
    )


def read_png(data: bytes) -> np.ndarray:
    """Reader for the PNGs written above (8-bit RGB/RGBA, non-interlaced, filters 0-2 only)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w, h, c = 8, b"", 0, 0, 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ct = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ct in (2, 6) and body[12] == 0
            c = 4 if ct == 6 else 3
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * c)
    out = np.zeros((h, w * c), dtype=np.uint8)
    prev = np.zeros(w * c, dtype=np.uint8)
    for y in range(h):
        f, line = raw[y, 0], raw[y, 1:]
        if f == 0:
            cur = line.copy()
        elif f == 1:  # Sub: running sum per channel
            cur = (np.cumsum(line.reshape(w, c).astype(np.int64), axis=0) % 256).astype(np.uint8).ravel()
        elif f == 2:  # Up
            cur = line + prev
        else:
            raise ValueError(f"filter {f} not supported by this minimal reader")
        out[y] = cur
        prev = cur
    return out.reshape(h, w, c)


# ------------------------------------------------------------------------------------------
# Drawing helpers (float images in [0, 1], supersampled)
# ------------------------------------------------------------------------------------------


def grid(size: int):
    """Supersampled pixel-centre coordinates in [0, 1]: (y down, x right)."""
    n = size * SS
    c = (np.arange(n, dtype=np.float64) + 0.5) / n
    return np.meshgrid(c, c, indexing="ij")


def downsample(a: np.ndarray) -> np.ndarray:
    n = a.shape[0] // SS
    return a.reshape(n, SS, n, SS, *a.shape[2:]).mean(axis=(1, 3))


def to_u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)


def composite(layers, size: int, background=None) -> np.ndarray:
    """layers: list of (mask bool [n,n], rgb float [n,n,3]) painted in order (later on top).
    Returns uint8 RGBA (background None -> transparent) or RGB on the given colour."""
    n = size * SS
    rgb = np.zeros((n, n, 3))
    alpha = np.zeros((n, n))
    for mask, colour in layers:
        rgb[mask] = colour[mask]
        alpha[mask] = 1.0
    a = downsample(alpha)
    premul = downsample(rgb * alpha[..., None])
    if background is None:
        colour = np.where(a[..., None] > 0, premul / np.maximum(a[..., None], 1e-9), 0.0)
        return to_u8(np.concatenate([colour, a[..., None]], axis=2))
    bg = np.asarray(background, dtype=np.float64)
    return to_u8(premul + (1.0 - a[..., None]) * bg)


def shade(base, light: np.ndarray) -> np.ndarray:
    """Colour [n,n,3] = base colour scaled by a per-pixel light factor."""
    return np.clip(light[..., None] * np.asarray(base, dtype=np.float64), 0.0, 1.0)


# ------------------------------------------------------------------------------------------
# The examples
# ------------------------------------------------------------------------------------------


def mug(size: int = 256) -> np.ndarray:
    """A mug seen from the side: blue body with a lit left side and a darker rim band,
    an orange handle ring on the right, on a transparent background."""
    y, x = grid(size)
    cx, half_w, top, bottom = 0.42, 0.22, 0.22, 0.80
    body = (np.abs(x - cx) < half_w) & (y > top) & (y < bottom)
    # rounded bottom corners
    r = 0.05
    corner = (y > bottom - r) & (np.abs(x - cx) > half_w - r)
    corner_in = (y - (bottom - r)) ** 2 + (np.abs(x - cx) - (half_w - r)) ** 2 < r**2
    body &= ~corner | corner_in
    # cylinder shading across the body: brighter on the left
    u = np.clip((x - cx) / half_w, -1, 1)
    light = 0.55 + 0.45 * np.sqrt(1 - u**2) - 0.15 * u
    body_rgb = shade((0.15, 0.35, 0.85), light)
    rim = body & (y < top + 0.05)
    body_rgb[rim] = shade((0.95, 0.95, 0.98), 0.8 + 0.2 * light)[rim]
    # handle: elliptical ring to the right of the body
    hx, hy = cx + half_w, 0.50
    e = np.sqrt(((x - hx) / 0.16) ** 2 + ((y - hy) / 0.19) ** 2)
    handle = (e < 1.0) & (e > 0.62) & (x > cx)
    handle_rgb = shade((0.95, 0.5, 0.1), 0.7 + 0.3 * (1 - np.abs(e - 0.81) / 0.19))
    return composite([(handle, handle_rgb), (body, body_rgb)], size)


def star(size: int = 256) -> np.ndarray:
    """A saturated red five-pointed star on a plain near-white background (RGB, no alpha)."""
    y, x = grid(size)
    cx, cy, r_out, r_in = 0.5, 0.52, 0.40, 0.16
    ang = np.arctan2(x - cx, cy - y)  # 0 = up
    rad = np.hypot(x - cx, y - cy)
    # polygon test in polar form: distance to the star edge along each ray
    sector = 2 * np.pi / 5
    a = np.mod(ang + sector / 2, sector) - sector / 2  # angle relative to the nearest tip
    # edge between tip (r_out, 0) and inner vertex (r_in, sector/2)
    p1 = np.array([r_out, 0.0])
    p2 = np.array([r_in * np.cos(sector / 2), r_in * np.sin(sector / 2)])
    d = p2 - p1
    aa = np.abs(a)
    # ray (cos aa, sin aa) * t intersects p1 + s d: solve for t
    det = np.cos(aa) * (-d[1]) - np.sin(aa) * (-d[0])
    t = (p1[0] * (-d[1]) - p1[1] * (-d[0])) / det
    inside = rad < t
    light = 0.85 + 0.15 * np.cos(a * 5)  # subtle facet shading
    colour = shade((0.9, 0.08, 0.12), light)
    return composite([(inside, colour)], size, background=(0.96, 0.96, 0.94))


def apple(size: int = 512) -> np.ndarray:
    """A red apple (polar outline with a dimple on top and a flatter bottom) with a brown stem
    and a green leaf, on a transparent background."""
    y, x = grid(size)
    cx, cy, r0 = 0.5, 0.57, 0.34
    phi = np.arctan2(x - cx, cy - y)  # 0 = up
    rad = np.hypot((x - cx) / 1.06, y - cy)
    outline = r0 * (1 - 0.16 * np.exp(-((phi / 0.33) ** 2)))  # dimple around the stem
    outline *= 1 - 0.05 * np.exp(-(((np.abs(phi) - np.pi) / 0.45) ** 2))  # flatter bottom
    outline *= 1 + 0.04 * np.cos(2 * phi)  # a little wider at the shoulders
    body = rad < outline
    # spherical shading with a highlight up-left
    nx, ny = (x - cx) / 0.37, (y - cy) / 0.35
    nz = np.sqrt(np.clip(1 - nx**2 - ny**2, 0, 1))
    lambert = np.clip(-0.45 * nx - 0.5 * ny + 0.74 * nz, 0, 1)
    body_rgb = shade((0.85, 0.07, 0.08), 0.35 + 0.75 * lambert)
    spec = np.clip(1 - np.hypot(x - (cx - 0.12), y - (cy - 0.14)) / 0.06, 0, 1) ** 2
    body_rgb = np.clip(body_rgb + 0.6 * spec[..., None], 0, 1)
    # stem: slightly curved brown bar reaching down into the dimple
    top_y, dimple_y = 0.13, cy - r0 * 0.84 * 1.04 + 0.03
    sx = cx + 0.03 * ((dimple_y - y) / (dimple_y - top_y)) ** 2
    stem = (np.abs(x - sx) < 0.02) & (y > top_y) & (y < dimple_y)
    stem_rgb = shade((0.40, 0.25, 0.10), np.ones_like(x))
    # leaf: lens shape (intersection of two discs), tilted, its base touching the stem
    lx, ly, ang = cx + 0.10, 0.20, -0.45
    u = np.cos(ang) * (x - lx) - np.sin(ang) * (y - ly)
    v = np.sin(ang) * (x - lx) + np.cos(ang) * (y - ly)
    leaf = ((u**2 + (v - 0.06) ** 2) < 0.11**2) & ((u**2 + (v + 0.06) ** 2) < 0.11**2)
    leaf_rgb = shade((0.15, 0.65, 0.15), 0.75 + 0.25 * (v > 0))
    vein = leaf & (np.abs(v) < 0.004)
    leaf_rgb[vein] = shade((0.1, 0.4, 0.1), np.ones_like(x))[vein]
    return composite([(stem, stem_rgb), (leaf, leaf_rgb), (body, body_rgb)], size)


EXAMPLES = {
    "mug.png": lambda: mug(256),
    "star.png": lambda: star(256),
    "apple-512.png": lambda: apple(512),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare with the committed files")
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args()
    ok = True
    for name, make in EXAMPLES.items():
        data = png_bytes(make())
        path = args.out / name
        if args.check:
            same = path.exists() and path.read_bytes() == data
            print(f"{name}: {'identical' if same else 'DIFFERS'}")
            ok &= same
        else:
            path.write_bytes(data)
            print(f"wrote {path} ({len(data)} bytes)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
