#!/usr/bin/env python3
"""Generate orfeas' built-in TorchScript models and their manifests.

    python models/generate.py            # (re)write models/<name>/model.pt + manifest.toml, then verify
    python models/generate.py --check    # regenerate into a temp dir and compare with the committed files
    python models/generate.py --bench    # time one forward pass of each model (CPU, 2 threads)
    python models/generate.py --measure-mem   # measure peak RSS per batch item (CPU)

Needs only torch (2.13.0, the version `tch` links against), numpy and the standard library.
The models are deterministic, contain no weights and no randomness.

Model contract (see models/README.md):
    forward(images: float32 [B, 4, H, W], RGBA in [0, 1], row 0 = top) -> float32 [B, D, G, G]
    axis 1 = world z (toward the viewer), axis 2 = world y (up), axis 3 = world x (right);
    sample i of n along an axis sits at bounds_min + i / (n - 1) * (bounds_max - bounds_min).
    output_kind "occupancy": value > iso (0.0) is solid; the outermost layer is always < iso.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

MODELS_DIR = Path(__file__).resolve().parent

# Value forced onto the outermost layer of samples (world units, occupancy < iso = outside).
BORDER_VALUE = -0.05
# Replacement for samples that land exactly on iso (kept outside).
ISO_NUDGE = -1.0e-6


# --------------------------------------------------------------------------------------------
# TorchScript helpers (scripted together with the modules that call them)
# --------------------------------------------------------------------------------------------


def min_plus_rows(cost: Tensor, f: Tensor, chunk: int) -> Tensor:
    """out[r, j] = min_j' cost[j, j'] + f[r, j'] for f [R, W], cost [W, W].

    Brute force over blocks of `chunk` rows so that the broadcast temporary ([chunk, W, W]
    fp32, ~2 MB at W = 130) stays in cache: about 3-10x faster on CPU than one big
    broadcast for a whole batch. The reduction runs over the innermost (contiguous) axis.
    """
    n = f.size(0)
    w = f.size(1)
    f = f.contiguous()  # a transposed view here would make the sums (and amin) strided
    parts: List[Tensor] = []
    for start in range(0, n, chunk):
        block = f[start : start + chunk]
        parts.append((cost.view(1, w, w) + block.unsqueeze(1)).amin(dim=2))
    return torch.cat(parts, 0)


def edt_sq(feature: Tensor, chunk: int) -> Tensor:
    """Exact squared Euclidean distance (in pixels) from every pixel to the nearest True pixel.

    feature: bool [B, H, W]. Returns float32 [B, H, W]; about 1e8 where an item has no True
    pixel at all. Separable brute force (two 1-D min-plus passes, O(H*W*(H+W)) per item):
    exact (small integers in fp32), deterministic, and each row of each batch item is
    computed independently of the others.
    """
    b = feature.size(0)
    h = feature.size(1)
    w = feature.size(2)
    big = torch.full_like(feature, 1.0e8, dtype=torch.float32)
    f = torch.where(feature, torch.zeros_like(big), big)
    ih = torch.arange(h, dtype=torch.float32, device=feature.device)
    iw = torch.arange(w, dtype=torch.float32, device=feature.device)
    cost_h = (ih.unsqueeze(1) - ih.unsqueeze(0)) ** 2  # [i, i']
    cost_w = (iw.unsqueeze(1) - iw.unsqueeze(0)) ** 2  # [j, j']
    # along columns: g_t[b, j, i] = min_i' (i - i')^2 + f[b, i', j]
    g_t = min_plus_rows(cost_h, f.transpose(1, 2).contiguous().view(b * w, h), chunk).view(b, w, h)
    # along rows: d[b, i, j] = min_j' (j - j')^2 + g[b, i, j']
    return min_plus_rows(cost_w, g_t.transpose(1, 2).contiguous().view(b * h, w), chunk).view(b, h, w)


def smooth(x: Tensor, iterations: int) -> Tensor:
    """3x3 box blur of [B, H, W] `iterations` times; edges are averaged over valid pixels only."""
    y = x.unsqueeze(1)
    for _ in range(iterations):
        y = F.avg_pool2d(y, 3, 1, 1, False, False)
    return y.squeeze(1)


def finish_occupancy(occ: Tensor, border_value: float, iso_nudge: float) -> Tensor:
    """In place on a fresh contiguous [B, D, H, W] volume: force the outermost layer of samples
    outside (<= border_value < iso, so the surface always closes inside the grid) and move
    samples that are exactly iso (0) to iso_nudge."""
    occ[:, 0].clamp_(max=border_value)
    occ[:, -1].clamp_(max=border_value)
    occ[:, :, 0].clamp_(max=border_value)
    occ[:, :, -1].clamp_(max=border_value)
    occ[:, :, :, 0].clamp_(max=border_value)
    occ[:, :, :, -1].clamp_(max=border_value)
    return occ.masked_fill_(occ == 0.0, iso_nudge)


def check_input(images: Tensor):
    if images.dim() != 4 or images.size(1) != 4:
        raise RuntimeError("expected images of shape [B, 4, H, W] (RGBA in [0, 1])")


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class Inflate(torch.nn.Module):
    """Silhouette -> smooth closed solid by distance-transform inflation.

    1. mask = alpha > 0.5; the image border counts as background.
    2. sd = exact signed Euclidean distance to the silhouette edge in pixels (+ inside),
       lightly smoothed (3x3 box blur) to take out the pixel staircase. Well inside the
       silhouette (more than a few px from the edge) a stronger blur is blended in for the
       profile (d below), which softens medial-axis creases.
    3. r = local radius: the radius of the largest inscribed disc that covers the pixel
       ("local thickness", from distance transforms of the level sets {sd >= s} at a
       geometric ladder of s up to R = max sd). For a disc silhouette r = R everywhere.
    4. height h = sqrt(d * (2r - d)) with d = max(sd, 0) <= r: every inscribed disc becomes
       (about) a sphere, so a disc gives a sphere and a thin handle a round tube instead of
       a fin. Outside the silhouette h = sd < 0 (grows with the distance).
    5. h (pixels -> world units) is resampled to the G x G grid (bilinear, align_corners=True:
       pixel centres map onto the bounds), rows flipped so +y is up, and
       occupancy(z, y, x) = h(y, x) - |z|  (front/back symmetric, smooth, > 0 inside).
    """

    def __init__(self, grid: int = 96, depth: int = 96, edt_chunk: int = 32, thickness_scale: int = 2):
        super().__init__()
        self.grid = grid
        self.depth = depth
        self.alpha_threshold = 0.5
        self.sd_smooth = 2
        self.r_smooth = 2
        self.interior_smooth = 16
        self.edge_keep = 2.0
        self.edge_ramp = 4.0
        # Local-thickness levels s_k = R * ratio^k, k = 0 .. levels-1.
        self.levels = 9
        self.thickness_scale = thickness_scale
        self.edt_chunk = edt_chunk
        self.level_ratio = 0.7
        self.border_value = BORDER_VALUE
        self.iso_nudge = ISO_NUDGE

    def forward(self, images: Tensor) -> Tensor:
        check_input(images)
        x = images.float()
        hh = x.size(2)
        ww = x.size(3)

        # 1. foreground mask, padded with a background ring (the image border is background)
        fg = F.pad(x[:, 3:4], [1, 1, 1, 1], "constant", 0.0).squeeze(1) > self.alpha_threshold

        # 2. signed distance to the silhouette edge (pixel units, + inside), cropped back
        d_out = torch.sqrt(edt_sq(fg, self.edt_chunk))  # 0 on the foreground
        d_in = torch.sqrt(edt_sq(torch.logical_not(fg), self.edt_chunk))  # 0 on the background
        sd = torch.where(fg, d_in - 0.5, 0.5 - d_out)[:, 1 : hh + 1, 1 : ww + 1]
        sd = torch.clamp(sd, min=-float(hh + ww))  # empty silhouette: finite values
        sd = smooth(sd, self.sd_smooth)

        # 3. local radius r, computed at 1/thickness_scale resolution (it is a coarse property
        # and this is the expensive part: one distance transform per level)
        q = self.thickness_scale
        lt = sd if q == 1 else F.max_pool2d(sd.unsqueeze(1), q).squeeze(1)  # keeps the peak R
        big_r = torch.clamp(lt.amax(dim=[1, 2], keepdim=True), min=1.0e-3)  # [B, 1, 1]
        r = torch.clamp(lt, min=0.0)
        s_prev = big_r
        phi_prev = torch.zeros_like(lt)
        t = 1.0
        for k in range(self.levels):
            s = big_r * t
            # phi <= 0 where the pixel lies in a disc of radius s inside the silhouette
            phi = torch.sqrt(edt_sq(lt >= s, self.edt_chunk)) * float(q) - s
            if k == 0:
                cand = s.expand_as(lt)
            else:  # interpolate between this level and the one above where that one fails
                frac = -phi / torch.clamp(phi_prev - phi, min=1.0e-6)
                interp = s + (s_prev - s) * torch.clamp(frac, 0.0, 1.0)
                cand = torch.where(phi_prev > 0.0, interp, s_prev.expand_as(lt))
            r = torch.maximum(r, torch.where(phi <= 0.0, cand, torch.zeros_like(lt)))
            s_prev = s
            phi_prev = phi
            t = t * self.level_ratio
        if q != 1:
            r = F.interpolate(r.unsqueeze(1), size=[hh, ww], mode="bilinear", align_corners=False)
            r = r.squeeze(1)
        r = smooth(r, self.r_smooth)

        # 4. rounded height profile. d is sd blurred more strongly away from the edge: that
        # softens the medial-axis creases and the faint radial facets of the distance
        # transform of a pixelated outline, while thin parts (within edge_keep px of the
        # edge) keep their exact distances. Near the top of each sphere the profile is flat,
        # so the blur lowers the apex only to second order.
        blurred = smooth(sd, self.interior_smooth)
        w = torch.clamp((sd - self.edge_keep) / self.edge_ramp, 0.0, 1.0)
        soft = sd + w * (blurred - sd)
        r = torch.maximum(r, soft)
        d = torch.clamp(soft, min=0.0)
        h_in = torch.sqrt(torch.clamp(d * (2.0 * r - d), min=0.0))
        h = torch.where(soft > 0.0, h_in, soft) * (2.0 / float(ww - 1))  # pixels -> world

        # 5. resample to the grid, flip rows (image row 0 = top = largest y), extrude in z
        hg = F.interpolate(
            h.unsqueeze(1), size=[self.grid, self.grid], mode="bilinear", align_corners=True
        )
        hg = torch.flip(hg, [2])  # [B, 1, y, x]
        z = torch.linspace(-1.0, 1.0, self.depth, dtype=torch.float32, device=x.device)
        occ = (hg - torch.abs(z).view(1, self.depth, 1, 1)).contiguous()  # [B, z, y, x]
        return finish_occupancy(occ, self.border_value, self.iso_nudge)


class Null(torch.nn.Module):
    """A fixed sphere of radius 0.6 (occupancy = 0.6 - |p|) for every batch item."""

    def __init__(self, grid: int = 32):
        super().__init__()
        self.grid = grid
        self.radius = 0.6
        self.border_value = BORDER_VALUE
        self.iso_nudge = ISO_NUDGE

    def forward(self, images: Tensor) -> Tensor:
        check_input(images)
        n = self.grid
        c = torch.linspace(-1.0, 1.0, n, dtype=torch.float32, device=images.device)
        r2 = c.view(n, 1, 1) ** 2 + c.view(1, n, 1) ** 2 + c.view(1, 1, n) ** 2
        occ = (self.radius - torch.sqrt(r2)).unsqueeze(0).contiguous()
        occ = finish_occupancy(occ, self.border_value, self.iso_nudge)
        return occ.expand(images.size(0), n, n, n).contiguous()


# --------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------

# mem_per_item_mb: peak activation memory per batch item, fp32, on CPU (tracemalloc does
# not see torch's allocations, so: tensor sizes + peak RSS of a child process).
# inflate, from tensor sizes: the [96, 96, 96] fp32 output volume (3.5 MB, built and finished
#   in place) + its == iso mask (0.9 MB) + ~40 maps of [128, 128] or [64, 64] fp32 (~2.5 MB)
#   ~= 7 MB per item; the distance-transform temporaries ([32, 130, 130] fp32 blocks, 2.2 MB)
#   do not grow with the batch. Measured (`generate.py --measure-mem`): 8.9 MiB per item
#   (peak RSS of B=5 minus B=1, / 4) and 9.0 MiB (B=17 vs B=1). Declared with headroom: 12.
# null: one [32, 32, 32] fp32 volume per item (0.13 MB); measured 0.2 MiB. Declared: 1.
MODELS = {
    "inflate": {
        "factory": lambda: Inflate(grid=96, depth=96),
        "manifest": {
            "name": "inflate",
            "version": "1.0.0",
            "description": "Silhouette (alpha > 0.5) inflated into a smooth closed solid "
            "by distance-transform (local-thickness) inflation; no weights.",
            "input_size": [128, 128],
            "input_channels": 4,
            "output_kind": "occupancy",
            "grid": [96, 96, 96],
            "iso": 0.0,
            "bounds_min": [-1.0, -1.0, -1.0],
            "bounds_max": [1.0, 1.0, 1.0],
            "mem_per_item_mb": 12,
            "precision": "fp32",
            "max_batch": 16,
        },
        "mem_comment": "peak activation memory per item, fp32, CPU: ~7 MB from tensor sizes, "
        "9.0 MiB measured (peak RSS, B=5 and B=17 vs B=1); with headroom",
    },
    "null": {
        "factory": lambda: Null(grid=32),
        "manifest": {
            "name": "null",
            "version": "1.0.0",
            "description": "Fixed sphere (occupancy 0.6 - |p|) for every item, ignoring "
            "the image: measures system overhead.",
            "input_size": [64, 64],
            "input_channels": 4,
            "output_kind": "occupancy",
            "grid": [32, 32, 32],
            "iso": 0.0,
            "bounds_min": [-1.0, -1.0, -1.0],
            "bounds_max": [1.0, 1.0, 1.0],
            "mem_per_item_mb": 1,
            "precision": "fp32",
            "max_batch": 16,
        },
        "mem_comment": "peak activation memory per item, fp32: one 32^3 volume (0.13 MB), "
        "0.2 MiB measured; rounded up",
    },
}

FIELD_COMMENTS = {
    "input_size": "[H, W]",
    "output_kind": "occupancy: value > iso is solid; sdf: value < iso is solid",
    "grid": "[D, H, W] of the output = world [z, y, x]",
    "bounds_min": "world x, y, z",
    "bounds_max": "world x, y, z",
    "precision": "fp32 | fp16 | bf16 (on CUDA)",
}


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def manifest_text(name: str) -> str:
    spec = MODELS[name]
    lines = [f"# Generated by models/generate.py; do not edit by hand."]
    for key, value in spec["manifest"].items():
        line = f"{key} = {toml_value(value)}"
        comment = spec["mem_comment"] if key == "mem_per_item_mb" else FIELD_COMMENTS.get(key)
        if comment:
            line = f"{line:<34} # {comment}"
        lines.append(line)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def write_models(out_dir: Path) -> None:
    for name, spec in MODELS.items():
        d = out_dir / name
        d.mkdir(parents=True, exist_ok=True)
        module = torch.jit.script(spec["factory"]().eval())
        torch.jit.save(module, str(d / "model.pt"))
        (d / "manifest.toml").write_text(manifest_text(name))
        print(f"wrote {d / 'model.pt'} ({(d / 'model.pt').stat().st_size} bytes) and manifest.toml")


def load(out_dir: Path, name: str):
    m = torch.jit.load(str(out_dir / name / "model.pt"), map_location="cpu")
    m.eval()
    manifest = tomllib.loads((out_dir / name / "manifest.toml").read_text())
    return m, manifest


# --------------------------------------------------------------------------------------------
# Deterministic test images
# --------------------------------------------------------------------------------------------


def _coords(size: int):
    c = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(c, c, indexing="ij")  # row, column (row 0 = top)
    return yy / size, xx / size  # in (0, 1)


def _rgba(alpha: Tensor, size: int) -> Tensor:
    yy, xx = _coords(size)
    rgb = torch.stack([0.2 + 0.6 * xx, 0.3 + 0.4 * yy, 0.8 - 0.5 * xx * yy])
    return torch.cat([rgb * alpha, alpha.unsqueeze(0)], 0)


def disc_image(size: int, diameter: float = 0.8) -> Tensor:
    """A centred disc whose diameter is `diameter` of the image width."""
    yy, xx = _coords(size)
    inside = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < (diameter / 2) ** 2
    return _rgba(inside.float(), size)


def check_batch(size: int) -> Tensor:
    """Fixed, deterministic input batch: disc, mug-like shape, off-centre ellipse, star, empty,
    full frame (touches the border)."""
    yy, xx = _coords(size)
    disc = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.4**2
    body = ((xx - 0.42).abs() < 0.25) & ((yy - 0.5).abs() < 0.32)
    rr = ((xx - 0.7) ** 2 / 0.8 + (yy - 0.5) ** 2).sqrt()
    handle = (rr < 0.17) & (rr > 0.11)
    mug = body | handle
    ellipse = ((xx - 0.35) / 0.25) ** 2 + ((yy - 0.6) / 0.12) ** 2 < 1
    ang = torch.atan2(yy - 0.5, xx - 0.5)
    rad = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2).sqrt()
    star = rad < 0.2 + 0.2 * torch.cos(5 * ang).clamp(min=0) ** 2
    empty = torch.zeros(size, size, dtype=torch.bool)
    full = torch.ones(size, size, dtype=torch.bool)
    items = [disc, mug, ellipse, star, empty, full]
    return torch.stack([_rgba(m.float(), size) for m in items])


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def components_3d(solid: np.ndarray) -> int:
    """Number of 6-connected components of a boolean volume (iterative flood fill)."""
    seen = np.zeros_like(solid)
    count = 0
    for start in zip(*np.nonzero(solid)):
        if seen[start]:
            continue
        count += 1
        stack = [start]
        seen[start] = True
        while stack:
            z, y, x = stack.pop()
            for dz, dy, dx in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
                n = (z + dz, y + dy, x + dx)
                if all(0 <= n[i] < solid.shape[i] for i in range(3)) and solid[n] and not seen[n]:
                    seen[n] = True
                    stack.append(n)
    return count


def extents(occ: Tensor, manifest: dict) -> dict:
    """World-space extent of the samples with occ > iso, per axis x, y, z."""
    solid = occ > manifest["iso"]
    out = {}
    lo, hi = manifest["bounds_min"], manifest["bounds_max"]
    for axis_name, tensor_dim, bi in (("x", 2, 0), ("y", 1, 1), ("z", 0, 2)):
        n = occ.shape[tensor_dim]
        other = [d for d in range(3) if d != tensor_dim]
        idx = torch.nonzero(solid.any(dim=other[1]).any(dim=other[0])).flatten()
        if idx.numel() == 0:
            out[axis_name] = None
            continue
        w = lambda i: lo[bi] + float(i) / (n - 1) * (hi[bi] - lo[bi])
        out[axis_name] = (round(w(idx.min()), 4), round(w(idx.max()), 4))
    return out


def verify(out_dir: Path) -> None:
    """Load each saved model back, run B=1 and B=3, check the contract; inflate disc test."""
    for name in MODELS:
        m, man = load(out_dir, name)
        h, w = man["input_size"]
        assert man["input_channels"] == 4
        batch = check_batch(h)
        expect = tuple(man["grid"])
        with torch.no_grad():
            for b in (1, 3):
                y = m(batch[:b])
                assert y.dtype == torch.float32, y.dtype
                assert tuple(y.shape) == (b, *expect), (name, y.shape)
                assert y.is_contiguous()
            full = m(batch)
        assert tuple(full.shape) == (batch.shape[0], *expect)
        assert torch.isfinite(full).all(), name
        assert not (full == man["iso"]).any(), f"{name}: a sample is exactly iso"
        for face in (full[:, 0], full[:, -1], full[:, :, 0], full[:, :, -1], full[:, :, :, 0], full[:, :, :, -1]):
            assert (face < man["iso"]).all(), f"{name}: outermost layer not outside"
        # each batch item is independent: item k of a batch == item k run alone
        for k in range(batch.shape[0]):
            with torch.no_grad():
                alone = m(batch[k : k + 1])
            assert torch.equal(alone[0], full[k]), f"{name}: item {k} depends on the batch"
        print(f"{name}: loads, B=1/B=3/B={batch.shape[0]} shapes {list(full.shape[1:])} ok, "
              f"border outside, items independent")

        if name == "inflate":
            with torch.no_grad():
                occ = m(disc_image(h, 0.8).unsqueeze(0))[0]
            solid = (occ > man["iso"]).numpy()
            ncomp = components_3d(solid)
            ext = extents(occ, man)
            print(f"inflate disc (diameter 0.8 of the image): {int(solid.sum())} solid samples, "
                  f"{ncomp} component(s), extents {ext}")
            assert ncomp == 1, "disc must give a single blob"
            for axis in ("x", "y", "z"):
                lo_, hi_ = ext[axis]
                assert -0.86 < lo_ < -0.7 and 0.7 < hi_ < 0.86, (axis, ext[axis])
            # background pixels clearly outside: the empty image has no solid sample
            assert not (full[4] > 0).any()
            # the mug-like item has its handle hole open (z = 0, y = 0, inside the ring)
            mug = full[1]
            solid_mug = (mug > 0).numpy()
            print(f"inflate mug-like item: {components_3d(solid_mug)} component(s), "
                  f"extents {extents(mug, man)}")
            assert components_3d(solid_mug) == 1


def check(committed: Path) -> int:
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        write_models(tmp_dir)
        for name in MODELS:
            missing = [f for f in ("model.pt", "manifest.toml") if not (committed / name / f).exists()]
            if missing:
                print(f"{name}: MISSING {', '.join(str(committed / name / f) for f in missing)}")
                ok = False
                continue
            a, man_a = load(committed, name)
            b, man_b = load(tmp_dir, name)
            if (committed / name / "manifest.toml").read_text() != (tmp_dir / name / "manifest.toml").read_text():
                print(f"{name}: committed manifest.toml differs from the generated one")
                ok = False
            batch = check_batch(man_a["input_size"][0])
            with torch.no_grad():
                ya, yb = a(batch), b(batch)
            expect = (batch.shape[0], *man_a["grid"])
            if tuple(ya.shape) != expect or tuple(yb.shape) != expect:
                print(f"{name}: shape {tuple(ya.shape)} / {tuple(yb.shape)} != manifest {expect}")
                ok = False
            elif not torch.equal(ya, yb):
                print(f"{name}: committed model output differs (max abs diff "
                      f"{(ya - yb).abs().max().item():.3g})")
                ok = False
            else:
                same_bytes = (committed / name / "model.pt").read_bytes() == (tmp_dir / name / "model.pt").read_bytes()
                print(f"{name}: outputs identical, shape {list(expect)} matches the manifest"
                      f"{'' if same_bytes else ' (model.pt bytes differ, outputs equal)'}")
    if ok:
        try:
            verify(committed)
        except AssertionError as e:
            print(f"verification failed: {e}")
            ok = False
    print("check OK" if ok else "check FAILED")
    return 0 if ok else 1


def bench(out_dir: Path, threads: int) -> None:
    torch.set_num_threads(threads)
    print(f"load average {os.getloadavg()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    for name in MODELS:
        m, man = load(out_dir, name)
        h, w = man["input_size"]
        for b in (1, 8):
            x = check_batch(h)[[k % 4 for k in range(b)]].contiguous()
            with torch.no_grad():
                for _ in range(3):  # warm-up (profiling executor)
                    m(x)
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    m(x)
                    times.append(time.perf_counter() - t0)
            print(f"{name}: B={b} forward median {1000 * sorted(times)[len(times) // 2]:.1f} ms "
                  f"(min {1000 * min(times):.1f} ms), {threads} thread(s)")


_MEM_CHILD = r"""
import resource, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
import generate
m, man = generate.load(generate.Path(sys.argv[2]), sys.argv[3])
b = int(sys.argv[4])
x = generate.check_batch(man["input_size"][0])[[k % 4 for k in range(b)]].contiguous()
with torch.no_grad():
    m(x[:1]); m(x[:1])
    for _ in range(2):
        m(x)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def measure_mem(out_dir: Path) -> None:
    for name in MODELS:
        peaks = {}
        for b in (1, 5, 17):
            r = subprocess.run(
                [sys.executable, "-c", _MEM_CHILD, str(MODELS_DIR), str(out_dir), name, str(b)],
                check=True, capture_output=True, text=True,
            )
            peaks[b] = int(r.stdout.split()[-1]) / 1024.0  # ru_maxrss is KiB on Linux
        print(f"{name}: peak RSS B=1 {peaks[1]:.1f} MiB, B=5 {peaks[5]:.1f} MiB, B=17 "
              f"{peaks[17]:.1f} MiB -> {(peaks[5] - peaks[1]) / 4:.1f} MiB per item (B=5 vs 1), "
              f"{(peaks[17] - peaks[1]) / 16:.1f} MiB per item (B=17 vs 1)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare committed models with regenerated ones")
    p.add_argument("--bench", action="store_true", help="time forward passes (CPU, 2 threads)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for --bench (default 2)")
    p.add_argument("--measure-mem", action="store_true", help="measure peak RSS per batch item")
    p.add_argument("--out", type=Path, default=MODELS_DIR, help="output directory (default: models/)")
    args = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))  # the machines have 2 cores
    if args.check:
        return check(args.out)
    if args.bench:
        bench(args.out, args.threads)
        return 0
    if args.measure_mem:
        measure_mem(args.out)
        return 0
    write_models(args.out)
    verify(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
