#!/usr/bin/env python3
"""Generate orfeas' built-in TorchScript models and their manifests.

    python models/generate.py            # (re)write models/<name>/model.pt + manifest.toml, then verify
    python models/generate.py --only relief   # (re)write just one model (repeatable), then verify it
    python models/generate.py --check    # regenerate into a temp dir and compare with the committed files
    python models/generate.py --bench    # time one forward pass of each model (CPU, 2 threads)
    python models/generate.py --measure-mem   # measure peak RSS per batch item (CPU)
    python models/generate.py --reference [DIR]   # write the benchmark's reference network (random
                                             # weights, ~56 M parameters, ~224 MB; not committed) to
                                             # DIR, default ~/.cache/orfeas/models/reference
    python models/generate.py --pipelines   # (re)write the tiny pipeline test models
                                             # (models/testing/triposr-tiny, hunyuan-tiny), then verify
    python models/generate.py --real-size [DIR]   # write the real-size pipelines (TripoSR-like,
                                             # Hunyuan3D-2.1-like; random weights, GBs; not committed)
                                             # to DIR, default ~/.cache/orfeas/models
    python models/generate.py --bench-pipelines [DIR]   # time their stages by batch size (CPU)
    python models/generate.py --bench-decode-cache [DIR] [--uncached OLD/decode.pt]   # one job's decode of
                                             # the Hunyuan-like model before / after its prepare stage

Needs only torch (2.13.0, the version `tch` links against), numpy and the standard library.
The models are deterministic, contain no weights and no randomness.

Model contract (see models/README.md):
    forward(images: float32 [B, 4, H, W], RGBA in [0, 1], row 0 = top) -> float32 [B, D, G, G]
    axis 1 = world z (toward the viewer), axis 2 = world y (up), axis 3 = world x (right);
    sample i of n along an axis sits at bounds_min + i / (n - 1) * (bounds_max - bounds_min).
    output_kind "occupancy": value > iso (0.0) is solid; the outermost layer is always < iso.
    Models with a [params] table in the manifest (relief) also take an optional second input
    forward(images, params: float32 [B, P]) whose columns follow the table's order; without it
    the defaults of the table (baked into the model) apply.
    Test models (oom) live under models/testing/<name>/, out of a node's default model set.
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
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

MODELS_DIR = Path(__file__).resolve().parent

# Value forced onto the outermost layer of samples (world units, occupancy < iso = outside).
BORDER_VALUE = -0.05
# Replacement for samples that land exactly on iso (kept outside).
ISO_NUDGE = -1.0e-6
# What the `oom` test model raises for a batch larger than 2 (the wording of a real CUDA
# out-of-memory error, so callers detect it the same way).
OOM_TEST_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB (orfeas test model: batch larger than 2)"
# What the `fault` test model raises for an item with fault = 1 (an ordinary error of one
# input) and fault = 2 (the wording of a CUDA error that leaves the device unusable).
FAULT_ITEM_MESSAGE = "orfeas test model: this item is refused (fault = 1)"
FAULT_DEVICE_MESSAGE = "CUDA error: an illegal memory access was encountered (orfeas test model: fault = 2)"


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


def edt_sq_band(feature: Tensor, band: int) -> Tensor:
    """Squared Euclidean distance (in pixels) to the nearest True pixel, exact up to `band`:
    min(edt_sq_band, band^2) == min(exact squared distance, band^2).

    feature: bool [B, H, W]. Separable like edt_sq, but each 1-D min-plus pass only looks
    `band` pixels either way (2 * band + 1 shifted minima per pass instead of a W x W
    brute force): a nearest True pixel within `band` lies inside the (2 band + 1)^2 window,
    and anything farther comes out >= band^2. Pixels with no True pixel in the window get
    ~1e6. Exact small integers in fp32, deterministic, per item elementwise.
    """
    h = feature.size(1)
    w = feature.size(2)
    big = 1.0e6  # + band^2 stays exact in fp32
    f = torch.where(feature, torch.zeros_like(feature, dtype=torch.float32),
                    torch.full_like(feature, big, dtype=torch.float32))
    # along columns (over rows i): g[i, j] = min_|s| <= band f[i + s, j] + s^2
    fp = F.pad(f.unsqueeze(1), [0, 0, band, band], "constant", big).squeeze(1)
    g = f
    for s in range(1, band + 1):
        s2 = float(s * s)
        g = torch.minimum(g, torch.minimum(fp[:, band + s : band + s + h], fp[:, band - s : band - s + h]) + s2)
    # along rows (over columns j)
    gp = F.pad(g.unsqueeze(1), [band, band, 0, 0], "constant", big).squeeze(1)
    d = g
    for s in range(1, band + 1):
        s2 = float(s * s)
        d = torch.minimum(d, torch.minimum(gp[:, :, band + s : band + s + w], gp[:, :, band - s : band - s + w]) + s2)
    return d


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


class Relief(torch.nn.Module):
    """Height field on a base plate (relief / lithophane) from luminance, cut out by alpha.

    forward(images [B, 4, H, W], params: Optional [B, 3] = None) -> [B, D, G, G]

    params columns: 0 = base_thickness, 1 = max_height (world units along z), 2 = invert
    (>= 0.5: lithophane, dark is thick). Without params (or for non-finite entries) the
    defaults baked in here (= the manifest's [params] table) are used. base_thickness and
    max_height are clamped to >= 0; when their sum exceeds max_thickness both are scaled
    down by the same factor, so the plate always fits inside the grid with a margin.

    1. footprint = alpha > 0.5 (an opaque image is the whole square plate; transparent
       background is cut away); signed Euclidean distance to its edge in pixels (exact up to
       `sd_band` px, clamped beyond) on a canvas padded with `pad` background pixels, lightly
       smoothed (smooth outline).
    2. luminance L = 0.2126 R + 0.7152 G + 0.0722 B inside the footprint, extended a few
       pixels outward (normalised convolution, so the edge does not sag toward the
       background colour), one 3x3 box blur (anti-aliasing for the 128 -> 96 resampling);
       v = L, or 1 - L when inverted; thickness t = base + max_height * v.
    3. The image square (outer pixel edges) spans world x, y in [-1, 1] (row 0 = top = +y);
       the grid spans [-extent, extent] (> 1, so the outline never touches the grid border),
       sampled bilinearly (grid_sample, align_corners=False: pixel edges at +-1).
    4. The plate is centred in z: back face at z0 = -(base + max_height) / 2 (flat), front
       face at z0 + t(x, y) facing the viewer (+z);
       occupancy = min(z0 + t(x, y) - z, z - z0, sd_xy(x, y)), all in world units:
       linear in z (the front surface is exact between samples), > 0 inside, closed.
    """

    def __init__(
        self,
        grid: int = 96,
        depth: int = 48,
        extent: float = 1.05,
        z_half: float = 0.5,
        base_thickness: float = 0.1,
        max_height: float = 0.3,
        invert: bool = False,
        max_thickness: float = 0.9,
        pad: int = 4,
        sd_band: int = 8,
    ):
        super().__init__()
        self.grid = grid
        self.depth = depth
        self.extent = extent
        self.z_half = z_half
        self.base_thickness = base_thickness
        self.max_height = max_height
        self.invert = 1.0 if invert else 0.0
        self.max_thickness = max_thickness
        self.pad = pad
        self.sd_band = sd_band
        self.alpha_threshold = 0.5
        self.sd_smooth = 2
        self.fill_iterations = 3
        self.lum_smooth = 1
        self.border_value = BORDER_VALUE
        self.iso_nudge = ISO_NUDGE

    def forward(self, images: Tensor, params: Optional[Tensor] = None) -> Tensor:
        check_input(images)
        x = images.float()
        b = x.size(0)
        hh = x.size(2)
        ww = x.size(3)
        dev = x.device

        # parameters [B, 3]: base_thickness, max_height, invert
        defaults = torch.tensor(
            [self.base_thickness, self.max_height, self.invert], dtype=torch.float32, device=dev
        ).view(1, 3).expand(b, 3)
        if params is None:
            p = defaults
        else:
            if params.dim() != 2 or params.size(0) != b or params.size(1) != 3:
                raise RuntimeError(
                    "expected params of shape [B, 3] (base_thickness, max_height, invert) "
                    "matching the batch of images"
                )
            p = params.to(device=dev, dtype=torch.float32)
            p = torch.where(torch.isfinite(p), p, defaults)
        base = torch.clamp(p[:, 0], min=0.0)
        height = torch.clamp(p[:, 1], min=0.0)
        fit = torch.clamp(self.max_thickness / torch.clamp(base + height, min=1.0e-12), max=1.0)
        base = base * fit
        height = height * fit
        inv = (p[:, 2] >= 0.5).float()

        # 1. footprint and its signed distance (pixels, + inside) on the padded canvas
        q = self.pad
        fg = F.pad(x[:, 3:4], [q, q, q, q], "constant", 0.0).squeeze(1) > self.alpha_threshold
        # (distances are only needed near the outline: truncated at sd_band pixels, which
        # leaves the smoothed sd exact within sd_band - sd_smooth px of the outline; farther
        # out |sd| ~ sd_band px ~ 0.12 world, larger than a grid cell diagonal, so the
        # surface and its neighbouring samples are unaffected)
        k = self.sd_band
        d_out = torch.sqrt(torch.clamp(edt_sq_band(fg, k), max=float(k * k)))  # 0 on the footprint
        d_in = torch.sqrt(torch.clamp(edt_sq_band(torch.logical_not(fg), k), max=float(k * k)))
        sd = torch.where(fg, d_in - 0.5, 0.5 - d_out)  # in [0.5 - k, k - 0.5]
        sd = smooth(sd, self.sd_smooth) * (2.0 / float(ww))  # pixels -> world

        # 2. luminance inside the footprint, extended outward, -> thickness (world)
        rgb = torch.clamp(x[:, 0:3], 0.0, 1.0)
        lum = 0.2126 * rgb[:, 0:1] + 0.7152 * rgb[:, 1:2] + 0.0722 * rgb[:, 2:3]
        w = fg.float()
        lum = F.pad(lum, [q, q, q, q], "constant", 0.0).squeeze(1) * w
        num = smooth(lum, self.fill_iterations)
        den = smooth(w, self.fill_iterations)
        lum = torch.where(fg, lum, num / torch.clamp(den, min=1.0e-6))
        lum = smooth(lum, self.lum_smooth)
        v = lum + inv.view(b, 1, 1) * (1.0 - 2.0 * lum)
        thick = base.view(b, 1, 1) + height.view(b, 1, 1) * v

        # 3. resample both maps onto the grid's x, y samples (rows flipped: +y is up)
        g = self.grid
        c = torch.linspace(-self.extent, self.extent, g, dtype=torch.float32, device=dev)
        gx = (c / (1.0 + 2.0 * float(q) / float(ww))).view(1, g).expand(g, g)
        gy = (-c / (1.0 + 2.0 * float(q) / float(hh))).view(g, 1).expand(g, g)
        coords = torch.stack([gx, gy], 2).unsqueeze(0).expand(b, g, g, 2)
        maps = F.grid_sample(
            torch.stack([thick, sd], 1), coords, mode="bilinear", padding_mode="border", align_corners=False
        )  # [B, 2, y, x]

        # 4. plate centred in z, back face flat, front face = back + thickness
        z0 = (-0.5 * (base + height)).view(b, 1, 1, 1)
        z = torch.linspace(-self.z_half, self.z_half, self.depth, dtype=torch.float32, device=dev)
        z = z.view(1, self.depth, 1, 1)
        occ = (z0 + maps[:, 0:1] - z).contiguous()  # [B, z, y, x], the only full-size volume
        occ.clamp_(max=z - z0).clamp_(max=maps[:, 1:2])  # min(front - z, z - back, sd_xy)
        return finish_occupancy(occ, self.border_value, self.iso_nudge)


class OomTest(torch.nn.Module):
    """TEST model: `null`'s sphere, but a batch of more than `max_ok_batch` items raises the
    message of a CUDA out-of-memory error, so the caller's split-the-batch-and-retry path
    can be tested on CPU through the same interface as on a GPU.

    forward(images, params: Optional [B, 1] = None): params[:, 0] = max_ok_batch per item
    (non-finite -> the default); a batch raises when it is larger than the smallest
    max_ok_batch of its items, so a job with max_ok_batch = 0 does not fit even alone."""

    def __init__(self, grid: int = 16, max_ok_batch: int = 2):
        super().__init__()
        self.grid = grid
        self.radius = 0.6
        self.max_ok_batch = max_ok_batch
        self.message = OOM_TEST_MESSAGE
        self.border_value = BORDER_VALUE
        self.iso_nudge = ISO_NUDGE

    def forward(self, images: Tensor, params: Optional[Tensor] = None) -> Tensor:
        check_input(images)
        limit = self.max_ok_batch
        if params is not None:
            if params.dim() != 2 or params.size(0) != images.size(0) or params.size(1) != 1:
                raise RuntimeError("expected params of shape [B, 1] (max_ok_batch) matching the batch of images")
            p = params.to(device=images.device, dtype=torch.float32)[:, 0]
            p = torch.where(torch.isfinite(p), p, torch.full_like(p, float(self.max_ok_batch)))
            limit = int(torch.floor(p.min()))
        if images.size(0) > limit:
            raise RuntimeError(self.message)
        n = self.grid
        c = torch.linspace(-1.0, 1.0, n, dtype=torch.float32, device=images.device)
        r2 = c.view(n, 1, 1) ** 2 + c.view(1, n, 1) ** 2 + c.view(1, 1, n) ** 2
        occ = (self.radius - torch.sqrt(r2)).unsqueeze(0).contiguous()
        occ = finish_occupancy(occ, self.border_value, self.iso_nudge)
        return occ.expand(images.size(0), n, n, n).contiguous()


class FaultTest(torch.nn.Module):
    """TEST model: `null`'s sphere, but an item can make the forward pass fail, so a node's
    handling of failing inputs can be tested on CPU through the same interface as on a GPU.

    forward(images, params: Optional [B, 1] = None): params[:, 0] = fault per item (rounded;
    non-finite -> 0). A batch with any item of fault 2 raises FAULT_DEVICE_MESSAGE (what a
    CUDA illegal memory access says: the device is unusable afterwards); otherwise one with
    any item of fault 1 raises FAULT_ITEM_MESSAGE (an ordinary error caused by that input)."""

    def __init__(self, grid: int = 16):
        super().__init__()
        self.grid = grid
        self.radius = 0.6
        self.item_message = FAULT_ITEM_MESSAGE
        self.device_message = FAULT_DEVICE_MESSAGE
        self.border_value = BORDER_VALUE
        self.iso_nudge = ISO_NUDGE

    def forward(self, images: Tensor, params: Optional[Tensor] = None) -> Tensor:
        check_input(images)
        if params is not None:
            if params.dim() != 2 or params.size(0) != images.size(0) or params.size(1) != 1:
                raise RuntimeError("expected params of shape [B, 1] (fault) matching the batch of images")
            p = params.to(device=images.device, dtype=torch.float32)[:, 0]
            p = torch.round(torch.where(torch.isfinite(p), p, torch.zeros_like(p)))
            if bool((p == 2.0).any()):
                raise RuntimeError(self.device_message)
            if bool((p == 1.0).any()):
                raise RuntimeError(self.item_message)
        n = self.grid
        c = torch.linspace(-1.0, 1.0, n, dtype=torch.float32, device=images.device)
        r2 = c.view(n, 1, 1) ** 2 + c.view(1, n, 1) ** 2 + c.view(1, 1, n) ** 2
        occ = (self.radius - torch.sqrt(r2)).unsqueeze(0).contiguous()
        occ = finish_occupancy(occ, self.border_value, self.iso_nudge)
        return occ.expand(images.size(0), n, n, n).contiguous()


class Reference(torch.nn.Module):
    """Benchmark reference: an image-to-volume network of realistic size with random weights.

    Encoder (4 strided 2-D convolutions, 4 -> 512 channels, 128^2 -> 8^2) -> two linear layers
    through a 1024-wide latent -> 3-D decoder (4 transposed 3-D convolutions, 256 -> 16
    channels, 4^3 -> 64^3) -> one 3-D convolution to one channel. About 56 M parameters
    (224 MB in fp32), ~2.6 G multiply-adds per item; the shape of a TripoSR-style network's
    compute, not its quality: the output is random but obeys the model contract (occupancy,
    outermost layer outside), so a node can serve it.
    """

    def __init__(self, size: int = 128, grid: int = 64):
        super().__init__()
        assert size == 128 and grid == 64, "layer sizes below are fixed for 128 -> 64^3"
        chans = [4, 64, 128, 256, 512]
        self.encoder = torch.nn.Sequential(*[
            layer
            for cin, cout in zip(chans[:-1], chans[1:])
            for layer in (torch.nn.Conv2d(cin, cout, 4, 2, 1), torch.nn.GroupNorm(8 if cout >= 64 else 1, cout), torch.nn.SiLU())
        ])
        self.to_latent = torch.nn.Linear(512 * 8 * 8, 1024)
        self.from_latent = torch.nn.Linear(1024, 256 * 4 * 4 * 4)
        dchans = [256, 128, 64, 32, 16]
        self.decoder = torch.nn.Sequential(*[
            layer
            for cin, cout in zip(dchans[:-1], dchans[1:])
            for layer in (torch.nn.ConvTranspose3d(cin, cout, 4, 2, 1), torch.nn.GroupNorm(8, cout), torch.nn.SiLU())
        ])
        self.head = torch.nn.Conv3d(16, 1, 3, 1, 1)
        self.border_value = BORDER_VALUE
        self.iso_nudge = ISO_NUDGE

    def forward(self, images: Tensor) -> Tensor:
        check_input(images)
        b = images.size(0)
        x = self.encoder(images)
        z = F.silu(self.to_latent(x.flatten(1)))
        v = self.from_latent(z).view(b, 256, 4, 4, 4)
        occ = self.head(self.decoder(v)).squeeze(1).float().contiguous()
        return finish_occupancy(occ, self.border_value, self.iso_nudge)


REFERENCE_MANIFEST = {
    "name": "reference",
    "version": "1.0.0",
    "description": "BENCHMARK ONLY: encoder -> latent -> 3-D decoder with random weights (~56 M "
    "parameters); realistic compute, meaningless shapes.",
    "input_size": [128, 128],
    "input_channels": 4,
    "output_kind": "occupancy",
    "grid": [64, 64, 64],
    "iso": 0.0,
    "bounds_min": [-1.0, -1.0, -1.0],
    "bounds_max": [1.0, 1.0, 1.0],
    # activations per item, fp32: the 16 x 64^3 decoder output (16.8 MB) and its GroupNorm /
    # SiLU temporaries (~3 such tensors live at the peak) plus the 32 x 32^3 layer before it
    # -> ~60 MB; declared with headroom. fp16 halves it.
    "mem_per_item_mb": 128,
    "precision": "fp16",
    "max_batch": 16,
}


def write_reference(out_dir: Path) -> None:
    """Write the reference network (seeded random weights) and its manifest to out_dir."""
    torch.manual_seed(0)
    module = Reference().eval()
    n_params = sum(p.numel() for p in module.parameters())
    out_dir.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(module)
    torch.jit.save(scripted, str(out_dir / "model.pt"))
    lines = ["# Generated by models/generate.py --reference; benchmark only, not committed."]
    lines += [f"{k} = {toml_value(v)}" for k, v in REFERENCE_MANIFEST.items()]
    (out_dir / "manifest.toml").write_text("\n".join(lines) + "\n")
    with torch.no_grad():
        y = scripted(check_batch(128)[:2])
    assert tuple(y.shape) == (2, 64, 64, 64), y.shape
    check_contract("reference", y, REFERENCE_MANIFEST)
    print(f"wrote {out_dir / 'model.pt'} ({(out_dir / 'model.pt').stat().st_size / 1e6:.0f} MB, "
          f"{n_params / 1e6:.1f} M parameters) and manifest.toml")


# --------------------------------------------------------------------------------------------
# Matting models (models/matting/): image -> alpha, for the learned matting stage
# --------------------------------------------------------------------------------------------
#
# Contract (models/README.md, "Matting models"):
#     forward(images: float32 [B, 3, H, W], RGB in [0, 1], row 0 = top) -> float32 [B, 1, H, W]
#     alpha in [0, 1] (1 = object), H x W = the manifest's input_size; any normalisation the
#     network wants happens inside forward.


def check_matting_input(images: Tensor):
    if images.dim() != 4 or images.size(1) != 3:
        raise RuntimeError("expected images of shape [B, 3, H, W] (RGB in [0, 1])")


class TinyModnet(torch.nn.Module):
    """A MODNet-shaped matting network (Ke et al. 2022, MIT licence), small and with seeded
    random weights: a low-resolution semantic branch (strided encoder to 1/32, squeeze-and-
    excitation, upsampled to 1/8), a high-resolution detail branch (image and encoder
    features at 1/4 and 1/2) and a fusion branch to full resolution, ending in a sigmoid.
    Its output is meaningless; it exists so the learned stage, its contract check and its
    device/precision path run end to end with the same tensor shapes a real export has."""

    def __init__(self):
        super().__init__()

        def conv(cin: int, cout: int, stride: int = 1) -> torch.nn.Module:
            return torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, stride, 1), torch.nn.ReLU())

        self.enc2 = conv(3, 8, 2)
        self.enc4 = conv(8, 16, 2)
        self.enc8 = conv(16, 24, 2)
        self.enc16 = conv(24, 32, 2)
        self.enc32 = conv(32, 32, 2)
        self.se = torch.nn.Sequential(torch.nn.Linear(32, 8), torch.nn.ReLU(), torch.nn.Linear(8, 32), torch.nn.Sigmoid())
        self.lr8 = conv(32, 16)
        self.hr4 = conv(3 + 16, 16)
        self.hr4_lr = conv(16 + 16, 16)
        self.hr2 = conv(16 + 8, 16)
        self.fuse2 = conv(16 + 16, 16)
        self.fuse = conv(16 + 3, 8)
        self.head = torch.nn.Conv2d(8, 1, 1)
        # With random weights every alpha lands near 0.42 (+-0.01, logit -0.29): this gain
        # and shift spread the logits around 0 so the test variant cuts out some (meaningless)
        # part of each image and a `generate` with it completes. Trained weights need neither.
        with torch.no_grad():
            self.head.weight.mul_(60.0)
            self.head.bias.add_(0.30).mul_(60.0)

    def forward(self, images: Tensor) -> Tensor:
        check_matting_input(images)
        h, w = images.size(2), images.size(3)
        x = (images - 0.5) / 0.5  # MODNet's normalisation, inside the model
        e2 = self.enc2(x)
        e4 = self.enc4(e2)
        e32 = self.enc32(self.enc16(self.enc8(e4)))
        e32 = e32 * self.se(e32.mean(dim=(2, 3))).unsqueeze(2).unsqueeze(3)
        lr8 = self.lr8(F.interpolate(e32, size=[h // 8, w // 8], mode="bilinear", align_corners=False))
        img4 = F.interpolate(x, size=[h // 4, w // 4], mode="bilinear", align_corners=False)
        hr4 = self.hr4(torch.cat([img4, e4], 1))
        hr4 = self.hr4_lr(torch.cat([hr4, F.interpolate(lr8, size=[h // 4, w // 4], mode="bilinear", align_corners=False)], 1))
        hr2 = self.hr2(torch.cat([F.interpolate(hr4, size=[h // 2, w // 2], mode="bilinear", align_corners=False), e2], 1))
        f2 = self.fuse2(torch.cat([F.interpolate(lr8, size=[h // 2, w // 2], mode="bilinear", align_corners=False), hr2], 1))
        f = self.fuse(torch.cat([F.interpolate(f2, size=[h, w], mode="bilinear", align_corners=False), x], 1))
        return torch.sigmoid(self.head(f)).contiguous()


class DiscMatte(torch.nn.Module):
    """TEST matting model: alpha = 1 inside the central disc of radius `radius` (a fraction
    of the smaller side), 0 outside, whatever the image shows — an output a flood fill never
    gives, so a test can see the learned stage was called."""

    def __init__(self, radius: float = 0.3):
        super().__init__()
        self.radius = radius

    def forward(self, images: Tensor) -> Tensor:
        check_matting_input(images)
        b, h, w = images.size(0), images.size(2), images.size(3)
        ys = (torch.arange(h, dtype=torch.float32, device=images.device) + 0.5 - h / 2.0) / min(h, w)
        xs = (torch.arange(w, dtype=torch.float32, device=images.device) + 0.5 - w / 2.0) / min(h, w)
        r = torch.sqrt(ys.view(h, 1) ** 2 + xs.view(1, w) ** 2)
        alpha = (r < self.radius).to(images.dtype)
        return alpha.view(1, 1, h, w).expand(b, 1, h, w).contiguous()


class HalfSizeMatte(torch.nn.Module):
    """TEST matting model that breaks the contract: alpha at half the input size."""

    def forward(self, images: Tensor) -> Tensor:
        check_matting_input(images)
        return F.avg_pool2d(images.mean(1, keepdim=True), 2)


class LogitMatte(torch.nn.Module):
    """TEST matting model that breaks the contract: raw logits (outside [0, 1]), the usual
    mistake of exporting a network without its final sigmoid."""

    def forward(self, images: Tensor) -> Tensor:
        check_matting_input(images)
        return images.mean(1, keepdim=True) * 8.0 - 4.0


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
# relief, from tensor sizes: one [48, 96, 96] fp32 volume (1.8 MB, built and finished in
#   place) + its == iso mask (0.4 MB) + ~15 maps of [136, 136] fp32 (1.1 MB) ~= 3.3 MB per
#   item (the banded distance transform works on such maps too). Measured
#   (`generate.py --measure-mem`, 3 runs): 3.1-3.5 MiB per item (B=5 vs B=1) and 3.0-3.3 MiB (B=17 vs
#   B=1). Declared with headroom (and CUDA's 2 MiB allocation rounding): 5.
# oom (test model): one [16, 16, 16] fp32 volume per item (16 KB). Declared: 1.
RELIEF_MEM_MB = 5
RELIEF_MEM_COMMENT = ("peak activation memory per item, fp32, CPU: ~3.3 MB from tensor sizes, "
                      "3.0-3.5 MiB measured (peak RSS, B=5 and B=17 vs B=1); with headroom")

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
    "relief": {
        "factory": lambda: Relief(grid=96, depth=48, extent=1.05, z_half=0.5, base_thickness=0.1,
                                  max_height=0.3, invert=False, max_thickness=0.9),
        "manifest": {
            "name": "relief",
            "version": "1.0.0",
            "description": "Height field on a base plate (relief / lithophane) from luminance, "
            "cut out by alpha (opaque image = square plate); optional params [B, 3] = "
            "(base_thickness, max_height, invert); no weights.",
            "input_size": [128, 128],
            "input_channels": 4,
            "output_kind": "occupancy",
            "grid": [48, 96, 96],
            "iso": 0.0,
            "bounds_min": [-1.05, -1.05, -0.5],
            "bounds_max": [1.05, 1.05, 0.5],
            "mem_per_item_mb": RELIEF_MEM_MB,
            "precision": "fp32",
            "max_batch": 16,
            "preprocess": "full_frame",
        },
        "mem_comment": RELIEF_MEM_COMMENT,
        # Defaults of the optional `params` input, in tensor column order; written as the
        # manifest's [params] table (invert is a bool there, 0.0 / 1.0 in the tensor).
        "params": {
            "base_thickness": 0.1,
            "max_height": 0.3,
            "invert": False,
        },
        "params_comments": {
            "base_thickness": "params[:, 0], world units: plate under the relief",
            "max_height": "params[:, 1], world units: extra thickness at v = 1 (base + max_height <= 0.9)",
            "invert": "params[:, 2] (0.0 / 1.0): false = bright is thick, true = lithophane (dark is thick)",
        },
    },
    # Test models live under models/testing/ so that a node loading "every model in models/"
    # does not pick them up; point the node's models dir at models/testing to use them.
    "oom": {
        "dir": "testing/oom",
        "testing": True,
        "max_ok_batch": 2,  # larger batches raise OOM_TEST_MESSAGE
        "factory": lambda: OomTest(grid=16, max_ok_batch=2),
        "manifest": {
            "name": "oom",
            "version": "1.0.0",
            "description": "TEST model: null's sphere, but B > 2 raises a 'CUDA out of memory' "
            "RuntimeError, to test batch splitting on CPU.",
            "input_size": [32, 32],
            "input_channels": 4,
            "output_kind": "occupancy",
            "grid": [16, 16, 16],
            "iso": 0.0,
            "bounds_min": [-1.0, -1.0, -1.0],
            "bounds_max": [1.0, 1.0, 1.0],
            "mem_per_item_mb": 1,
            "precision": "fp32",
            "max_batch": 16,
        },
        "mem_comment": "one 16^3 volume per item (16 KB); rounded up. max_batch is deliberately "
        "larger than the batches that run",
        "params": {
            "max_ok_batch": 2,
        },
        "params_comments": {
            "max_ok_batch": "params[:, 0]: a batch larger than its items' smallest value raises (0 = never fits)",
        },
        "check_params": lambda b: torch.tensor([[2.0], [float("nan")], [5.0]][:b] + [[3.0]] * max(0, b - 3)),
    },
    "fault": {
        "dir": "testing/fault",
        "testing": True,
        "factory": lambda: FaultTest(grid=16),
        "manifest": {
            "name": "fault",
            "version": "1.0.0",
            "description": "TEST model: null's sphere, but an item with fault = 1 makes the batch raise "
            "an ordinary error and fault = 2 a 'CUDA error: an illegal memory access', to test failing "
            "inputs on CPU.",
            "input_size": [32, 32],
            "input_channels": 4,
            "output_kind": "occupancy",
            "grid": [16, 16, 16],
            "iso": 0.0,
            "bounds_min": [-1.0, -1.0, -1.0],
            "bounds_max": [1.0, 1.0, 1.0],
            "mem_per_item_mb": 1,
            "precision": "fp32",
            "max_batch": 8,
        },
        "mem_comment": "one 16^3 volume per item (16 KB); rounded up",
        "params": {
            "fault": 0,
        },
        "params_comments": {
            "fault": "params[:, 0]: 0 = none, 1 = the batch raises an ordinary error, 2 = it raises a device-fatal CUDA error",
        },
        "check_params": lambda b: torch.tensor([[0.0], [float("nan")], [0.2]][:b] + [[0.0]] * max(0, b - 3)),
    },
}


def model_dir(out_dir: Path, name: str) -> Path:
    """Folder of model `name` under `out_dir` (models/<name>, or models/testing/<name>)."""
    return out_dir / MODELS[name].get("dir", name)


def default_params(name: str, batch: int) -> Optional[Tensor]:
    """The manifest's [params] defaults as the [B, P] float32 tensor the model accepts."""
    params = MODELS[name].get("params")
    if params is None:
        return None
    row = [float(v) for v in params.values()]  # bool -> 0.0 / 1.0
    return torch.tensor([row] * batch, dtype=torch.float32)


def check_params(name: str, batch: int) -> Tensor:
    """Fixed per-item params of model `name` for --check and verification."""
    custom = MODELS[name].get("check_params")
    if custom is not None:
        return custom(batch)
    return relief_check_params(batch)


def relief_check_params(batch: int) -> Tensor:
    """Fixed per-item relief params for --check: varied, including clamped and non-finite."""
    rows = [
        [0.05, 0.4, 1.0],
        [0.2, 0.1, 0.0],
        [0.0, 0.25, 1.0],
        [2.0, 3.0, 0.0],  # too thick: scaled down to 0.9 in total
        [float("nan"), 0.3, 1.0],  # non-finite -> default
        [0.1, 0.3, 0.7],  # invert >= 0.5
    ]
    return torch.tensor([rows[k % len(rows)] for k in range(batch)], dtype=torch.float32)

FIELD_COMMENTS = {
    "preprocess": "object: cut out, crop, recentre | full_frame: whole image, letterboxed",
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
    if "params" in spec:
        lines.append("")
        header = "[params]"
        lines.append(f"{header:<34} # defaults of the optional forward input params: float32 [B, "
                     f"{len(spec['params'])}], columns in this order")
        for key, value in spec["params"].items():
            line = f"{key} = {toml_value(value)}"
            comment = spec.get("params_comments", {}).get(key)
            if comment:
                line = f"{line:<34} # {comment}"
            lines.append(line)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def write_models(out_dir: Path, names: Optional[List[str]] = None) -> None:
    for name, spec in MODELS.items():
        if names is not None and name not in names:
            continue
        d = model_dir(out_dir, name)
        d.mkdir(parents=True, exist_ok=True)
        module = torch.jit.script(spec["factory"]().eval())
        torch.jit.save(module, str(d / "model.pt"))
        (d / "manifest.toml").write_text(manifest_text(name))
        print(f"wrote {d / 'model.pt'} ({(d / 'model.pt').stat().st_size} bytes) and manifest.toml")


def load(out_dir: Path, name: str):
    d = model_dir(out_dir, name)
    m = torch.jit.load(str(d / "model.pt"), map_location="cpu")
    m.eval()
    manifest = tomllib.loads((d / "manifest.toml").read_text())
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


def model_batch(name: str, size: int) -> Tensor:
    """check_batch(size), cut to the largest batch a test model runs without raising."""
    batch = check_batch(size)
    cap = MODELS[name].get("max_ok_batch")
    return batch if cap is None else batch[:cap]


def check_contract(name: str, full: Tensor, man: dict) -> None:
    """Finite values, no sample exactly at iso, outermost layer outside."""
    assert torch.isfinite(full).all(), name
    assert not (full == man["iso"]).any(), f"{name}: a sample is exactly iso"
    for face in (full[:, 0], full[:, -1], full[:, :, 0], full[:, :, -1], full[:, :, :, 0], full[:, :, :, -1]):
        assert (face < man["iso"]).all(), f"{name}: outermost layer not outside"


def verify(out_dir: Path, names: Optional[List[str]] = None) -> None:
    """Load each saved model back, run B=1, B=3 and the whole check batch, check the contract;
    model-specific tests for inflate, relief and oom."""
    for name in MODELS:
        if names is not None and name not in names:
            continue
        spec = MODELS[name]
        m, man = load(out_dir, name)
        h, w = man["input_size"]
        assert man["input_channels"] == 4
        assert man.get("params") == spec.get("params"), f"{name}: manifest [params] differ"
        batch = model_batch(name, h)
        nb = batch.shape[0]
        expect = tuple(man["grid"])
        with torch.no_grad():
            for b in (1, 3):
                if b > nb:
                    continue
                y = m(batch[:b])
                assert y.dtype == torch.float32, y.dtype
                assert tuple(y.shape) == (b, *expect), (name, y.shape)
                assert y.is_contiguous()
            full = m(batch)
        assert tuple(full.shape) == (nb, *expect)
        check_contract(name, full, man)
        # each batch item is independent: item k of a batch == item k run alone
        for k in range(nb):
            with torch.no_grad():
                alone = m(batch[k : k + 1])
            assert torch.equal(alone[0], full[k]), f"{name}: item {k} depends on the batch"
        sizes = "/".join(f"B={b}" for b in sorted({b for b in (1, 3) if b <= nb} | {nb}))
        print(f"{name}: loads, {sizes} shapes {list(full.shape[1:])} ok, border outside, items independent")

        if "params" in spec:
            # forward(images) == forward(images, manifest defaults); per-item params are
            # independent too (item k with its params == item k alone with the same params)
            with torch.no_grad():
                assert torch.equal(m(batch, default_params(name, nb)), full), f"{name}: defaults differ"
                pk = check_params(name, nb)
                full_p = m(batch, pk)
                check_contract(name, full_p, man)
                for k in range(nb):
                    assert torch.equal(m(batch[k : k + 1], pk[k : k + 1])[0], full_p[k]), (
                        f"{name}: item {k} with params depends on the batch")
            print(f"{name}: forward(images) == forward(images, [params] defaults); per-item params "
                  f"ok, items independent")

        if name == "inflate":
            verify_inflate(m, man, full)
        elif name == "relief":
            verify_relief(m, man, full)
        elif name == "oom":
            verify_oom(m, man, full)
        elif name == "fault":
            verify_fault(m, man, full)


def verify_inflate(m, man: dict, full: Tensor) -> None:
    h = man["input_size"][0]
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


def axis_coords(man: dict, axis: int) -> Tensor:
    """World coordinates of the samples along world axis 0 = x, 1 = y, 2 = z."""
    n = man["grid"][2 - axis]
    lo, hi = man["bounds_min"][axis], man["bounds_max"][axis]
    return torch.tensor([lo + i / (n - 1) * (hi - lo) for i in range(n)], dtype=torch.float64)


def surfaces_z(occ: Tensor, man: dict):
    """Front (largest z) and back (smallest z) surface heights per (y, x) column of a [D, G, G]
    occupancy volume, by linear interpolation of the zero crossings; NaN where a column has
    no solid sample."""
    z = axis_coords(man, 2)
    dz = float(z[1] - z[0])
    o = occ.double()
    solid = o > man["iso"]
    d = o.shape[0]
    idx = torch.arange(d).view(d, 1, 1).expand_as(o)
    has = solid.any(0)
    top = torch.where(solid, idx, torch.full_like(idx, -1)).amax(0).clamp(0, d - 2)
    bot = torch.where(solid, idx, torch.full_like(idx, d)).amin(0).clamp(1, d - 1)
    g = lambda t, i: torch.gather(t, 0, i.unsqueeze(0))[0]
    ot, ot1 = g(o, top), g(o, top + 1)
    ob, ob1 = g(o, bot), g(o, bot - 1)
    front = z[top] + ot / (ot - ot1) * dz
    back = z[bot] - ob / (ob - ob1) * dz
    nan = torch.full_like(front, float("nan"))
    return torch.where(has, front, nan), torch.where(has, back, nan)


def gradient_image(size: int) -> Tensor:
    """Opaque grey vertical gradient: luminance 1 at the top edge, 0 at the bottom edge
    (pixel centres at (row + 0.5) / size), i.e. luminance (y + 1) / 2 in world y."""
    yy, _ = _coords(size)
    lum = 1.0 - yy
    return torch.stack([lum, lum, lum, torch.ones_like(lum)])


def verify_relief(m, man: dict, full: Tensor) -> None:
    h = man["input_size"][0]
    xs, ys = axis_coords(man, 0), axis_coords(man, 1)
    base, max_h = float(MODELS["relief"]["params"]["base_thickness"]), float(MODELS["relief"]["params"]["max_height"])
    grad = gradient_image(h).unsqueeze(0)
    with torch.no_grad():
        plain = m(grad)[0]
        inverted = m(grad, torch.tensor([[base, max_h, 1.0]]))[0]
    interior_y = ys.abs() < 0.9
    interior_x = xs.abs() < 0.9
    for label, occ, want_fn in (
        ("gradient", plain, lambda y: base + max_h * (y + 1) / 2),
        ("gradient, invert", inverted, lambda y: base + max_h * (1 - (y + 1) / 2)),
    ):
        front, back = surfaces_z(occ, man)
        z0 = -(base + max_h) / 2
        f_in = front[interior_y][:, interior_x]
        b_in = back[interior_y][:, interior_x]
        want = (z0 + want_fn(ys[interior_y])).view(-1, 1)
        err = (f_in - want).abs().max().item()
        col = front[:, xs.abs().argmin()]  # x = 0 column, along y (bottom -> top)
        steps = col[interior_y][1:] - col[interior_y][:-1]
        ext = extents(occ, man)
        print(f"relief {label} (opaque, bright at the top): extents {ext}; back face z "
              f"{b_in.min().item():.4f}..{b_in.max().item():.4f}; front face at x=0: y=-0.9 -> "
              f"{col[interior_y][0].item():.4f}, y=0 -> {col[ys.abs().argmin()].item():.4f}, y=0.9 -> "
              f"{col[interior_y][-1].item():.4f}; max |front - expected| (|x|,|y| < 0.9) {err:.4f}")
        assert ((steps > 0).all() if "invert" not in label else (steps < 0).all()), f"{label}: not monotonic"
        assert err < 0.01, f"{label}: front surface off by {err}"
        assert (b_in - z0).abs().max().item() < 1.0e-4, f"{label}: back face not flat at {z0}"
        for axis in ("x", "y"):  # opaque image = the whole square plate, edges at +-1
            lo_, hi_ = ext[axis]
            assert -1.0 <= lo_ < -0.95 and 0.95 < hi_ <= 1.0, (label, axis, ext[axis])
        assert components_3d((occ > 0).numpy()) == 1

    # transparent background: a disc of diameter 0.8 of the image -> round cut-out relief
    with torch.no_grad():
        disc = m(disc_image(h, 0.8).unsqueeze(0))[0]
    solid = disc > man["iso"]
    ext = extents(disc, man)
    foot = solid.any(0)  # [y, x]
    rr = (ys.view(-1, 1) ** 2 + xs.view(1, -1) ** 2).sqrt()
    r_in, r_out = rr[foot].max().item(), rr[~foot].min().item()
    dx = float(xs[1] - xs[0])
    r_area = (foot.sum().item() * dx * dx / np.pi) ** 0.5
    ncomp = components_3d(solid.numpy())
    print(f"relief disc (diameter 0.8, transparent background): {int(solid.sum())} solid samples, "
          f"{ncomp} component(s), extents {ext}; footprint radius by area {r_area:.4f}, farthest "
          f"solid sample {r_in:.4f}, nearest empty sample {r_out:.4f}")
    assert ncomp == 1
    assert abs(r_area - 0.8) < 0.02 and 0.78 < r_in < 0.81 and 0.78 < r_out < 0.82, (r_area, r_in, r_out)
    assert not (full[4] > 0).any(), "empty image must give no solid"
    # the thickest plate the params allow keeps a margin of >= 1 sample outside in z
    with torch.no_grad():
        thick = m(torch.stack([gradient_image(h)] * 2), torch.tensor([[5.0, 5.0, 0.0], [5.0, 5.0, 1.0]]))
    for layer in (thick[:, 0], thick[:, 1], thick[:, -2], thick[:, -1]):
        assert (layer < 0).all(), "thickest plate: no margin in z"
    front, back = surfaces_z(thick[0], man)
    print(f"relief thickest params (5, 5 -> scaled to 0.9 total): z from {back.nanmean().item():.4f} "
          f"to {front[~front.isnan()].max().item():.4f}")
    try:
        with torch.no_grad():
            m(grad, torch.zeros(2, 3))
    except torch.jit.Error as e:
        assert "expected params of shape [B, 3]" in str(e)
    else:
        raise AssertionError("relief: params of the wrong shape must raise")


def verify_oom(m, man: dict, full: Tensor) -> None:
    h = man["input_size"][0]
    n = man["grid"][0]
    reference = torch.jit.script(Null(grid=n).eval())
    with torch.no_grad():
        for b in (1, 2):
            x = check_batch(h)[:b]
            assert torch.equal(m(x), reference(x)), "oom: differs from null's sphere"
        for b in (3, 16):
            try:
                m(check_batch(h)[[k % 6 for k in range(b)]])
            except torch.jit.Error as e:  # what libtorch throws (c10::Error / JITException)
                msg = str(e)
                assert "out of memory" in msg.lower() and OOM_TEST_MESSAGE in msg, msg
            else:
                raise AssertionError(f"oom: B={b} did not raise")
    # per-item max_ok_batch: the smallest of the batch decides; 0 never fits
    with torch.no_grad():
        assert torch.equal(m(check_batch(h)[:3], torch.tensor([[3.0], [5.0], [4.0]])), reference(check_batch(h)[:3]))
        for params in (torch.tensor([[0.0]]), torch.tensor([[1.0], [4.0]])):
            try:
                m(check_batch(h)[: params.shape[0]], params)
            except torch.jit.Error as e:
                assert OOM_TEST_MESSAGE in str(e), str(e)
            else:
                raise AssertionError(f"oom: params {params.tolist()} did not raise")
    print(f"oom: B<=2 equals null's sphere (grid {n}); B=3 and B=16 raise RuntimeError with "
          f"{OOM_TEST_MESSAGE!r}")


def verify_fault(m, man: dict, full: Tensor) -> None:
    h = man["input_size"][0]
    n = man["grid"][0]
    reference = torch.jit.script(Null(grid=n).eval())
    x = check_batch(h)[:3]
    with torch.no_grad():
        assert torch.equal(m(x), reference(x)), "fault: differs from null's sphere"
        assert torch.equal(m(x, torch.zeros(3, 1)), reference(x)), "fault: fault 0 differs"
        for params, message in (([[0.0], [1.0], [0.0]], FAULT_ITEM_MESSAGE), ([[1.0], [2.0], [0.0]], FAULT_DEVICE_MESSAGE),
                                ([[2.0], [0.0], [0.0]], FAULT_DEVICE_MESSAGE)):
            try:
                m(x, torch.tensor(params))
            except torch.jit.Error as e:
                assert message in str(e), str(e)
            else:
                raise AssertionError(f"fault: params {params} did not raise")
    print(f"fault: fault 0 equals null's sphere (grid {n}); fault 1 raises {FAULT_ITEM_MESSAGE!r}, "
          f"fault 2 raises {FAULT_DEVICE_MESSAGE!r}")


def write_pipelines(out_dir: Path, names: List[str]) -> None:
    import pipelines

    for name in names:
        d = pipelines.write(out_dir, name)
        size = pipelines.CONFIGS[name]["input"]
        pipelines.verify(d, name, check_batch(size)[:3])


def check_pipelines(committed: Path) -> bool:
    """Tiny pipeline models: regenerated stages give the committed outputs, then verify."""
    import pipelines

    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name in pipelines.TINY:
            dc = committed / "testing" / name
            if not (dc / "pipeline.toml").exists():
                print(f"{name}: MISSING {dc / 'pipeline.toml'}")
                ok = False
                continue
            fresh = pipelines.write(Path(tmp), name)
            images = check_batch(pipelines.CONFIGS[name]["input"])[:3]
            ok = pipelines.compare(dc, fresh, name, images) and ok
            try:
                pipelines.verify(dc, name, images)
            except AssertionError as e:
                print(f"verification failed: {e}")
                ok = False
    return ok


# --------------------------------------------------------------------------------------------
# Matting models: specs, generation, verification
# --------------------------------------------------------------------------------------------

MATTING_FIELD_COMMENTS = {
    "kind": "a matting model (models/matting/), not a 3-D model",
    "input_size": "[H, W]: the image is resized (stretched) to this; alpha comes back at this size",
    "precision": "fp32 | fp16 | bf16 (on CUDA)",
}

MATTING = {
    "tiny-modnet": {
        "dir": "matting/tiny-modnet",
        "factory": TinyModnet,
        "manifest": {
            "kind": "matting",
            "name": "tiny-modnet",
            "version": "1.0.0",
            "description": "TEST VARIANT with random weights (torch.manual_seed(0)): MODNet's "
            "architecture in small (43 k parameters), meaningless alpha. Replace model.pt with a "
            "real export (models/README.md) to matte photos.",
            "input_size": [256, 256],
            "precision": "fp32",
        },
    },
    "disc": {
        "dir": "matting/testing/disc",
        "factory": lambda: DiscMatte(0.3),
        "manifest": {
            "kind": "matting",
            "name": "disc",
            "version": "1.0.0",
            "description": "TEST matting model: alpha = the central disc of radius 0.3 of the "
            "smaller side, whatever the image shows.",
            "input_size": [128, 128],
            "precision": "fp32",
        },
    },
    "half-size": {
        "dir": "matting/testing/half-size",
        "factory": HalfSizeMatte,
        "broken": "its alpha is half the input size",
        "manifest": {
            "kind": "matting",
            "name": "half-size",
            "version": "1.0.0",
            "description": "TEST matting model that breaks the contract: alpha at half the input size.",
            "input_size": [64, 64],
            "precision": "fp32",
        },
    },
    "logits": {
        "dir": "matting/testing/logits",
        "factory": LogitMatte,
        "broken": "its values leave [0, 1]",
        "manifest": {
            "kind": "matting",
            "name": "logits",
            "version": "1.0.0",
            "description": "TEST matting model that breaks the contract: raw logits in [-4, 4], no sigmoid.",
            "input_size": [64, 64],
            "precision": "fp32",
        },
    },
}


def matting_manifest_text(name: str) -> str:
    lines = ["# Generated by models/generate.py; do not edit by hand."]
    for key, value in MATTING[name]["manifest"].items():
        line = f"{key} = {toml_value(value)}"
        comment = MATTING_FIELD_COMMENTS.get(key)
        if comment:
            line = f"{line:<34} # {comment}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_matting(out_dir: Path, names: Optional[List[str]] = None) -> None:
    for name, spec in MATTING.items():
        if names is not None and name not in names:
            continue
        d = out_dir / spec["dir"]
        d.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)  # the random-weight variant is the same on every run
        module = torch.jit.script(spec["factory"]().eval())
        torch.jit.save(module, str(d / "model.pt"))
        (d / "manifest.toml").write_text(matting_manifest_text(name))
        print(f"wrote {d / 'model.pt'} ({(d / 'model.pt').stat().st_size} bytes) and manifest.toml")


def load_matting(out_dir: Path, name: str):
    d = out_dir / MATTING[name]["dir"]
    m = torch.jit.load(str(d / "model.pt"), map_location="cpu")
    m.eval()
    return m, tomllib.loads((d / "manifest.toml").read_text())


def matting_batch(size: int) -> Tensor:
    """RGB test images: check_batch's shapes composited over white (the plain backgrounds
    the learned stage sees), plus one of random noise."""
    rgba = check_batch(size)
    rgb = rgba[:, :3] * rgba[:, 3:] + (1.0 - rgba[:, 3:])
    g = torch.Generator().manual_seed(1)
    noise = torch.rand(1, 3, size, size, generator=g)
    return torch.cat([rgb, noise]).contiguous()


def verify_matting(out_dir: Path, names: Optional[List[str]] = None) -> None:
    """Load each matting model back; the good ones keep the contract (shape, range, items
    independent), the broken test models break it the way they claim to."""
    for name, spec in MATTING.items():
        if names is not None and name not in names:
            continue
        m, man = load_matting(out_dir, name)
        assert man["kind"] == "matting" and man["name"] == name, man
        h, w = man["input_size"]
        batch = matting_batch(h)
        with torch.no_grad():
            full = m(batch)
        shape_ok = tuple(full.shape) == (batch.shape[0], 1, h, w)
        range_ok = bool(torch.isfinite(full).all() and full.min() >= 0.0 and full.max() <= 1.0)
        if "broken" in spec:
            assert not (shape_ok and range_ok), f"{name}: meant to break the contract, keeps it"
            print(f"{name}: breaks the contract as meant ({spec['broken']})")
            continue
        assert shape_ok and range_ok, f"{name}: shape {tuple(full.shape)}, range [{full.min()}, {full.max()}]"
        for k in range(batch.shape[0]):
            with torch.no_grad():
                # Convolutions may pick other kernels for another batch size: equal to
                # rounding, not bit for bit (the node runs matting one image at a time).
                alone = m(batch[k : k + 1])[0]
                assert torch.allclose(alone, full[k], atol=1e-5), f"{name}: item {k} depends on the batch"
        if name == "disc":
            yy, xx = _coords(h)
            want = (((yy - 0.5) ** 2 + (xx - 0.5) ** 2).sqrt() < 0.3).float()
            assert all(torch.equal(full[k, 0], want) for k in range(batch.shape[0])), "disc: not the central disc"
        if name == "tiny-modnet":
            # Random weights, but a usable cut-out: neither nothing nor everything is object,
            # so `generate` completes with it (the node thresholds alpha at 0.5).
            fg = (full[:4] > 0.5).float().mean(dim=(1, 2, 3))  # disc, mug, ellipse, star
            assert bool(((fg > 0.02) & (fg < 0.98)).all()), f"tiny-modnet: foreground fractions {fg.tolist()}"
            n_params = sum(p.numel() for p in m.parameters())
            print(f"tiny-modnet: {n_params} parameters, foreground fractions {[round(v, 2) for v in fg.tolist()]}")
        print(f"{name}: loads, [{batch.shape[0]}, 1, {h}, {w}] in [0, 1], items independent")


def check_matting(committed: Path, tmp_dir: Path) -> bool:
    """Committed matting models against freshly generated ones: same manifests, same outputs."""
    ok = True
    write_matting(tmp_dir)
    for name, spec in MATTING.items():
        dc, dt = committed / spec["dir"], tmp_dir / spec["dir"]
        if not (dc / "model.pt").exists() or not (dc / "manifest.toml").exists():
            print(f"{name}: MISSING {dc}/model.pt or manifest.toml")
            ok = False
            continue
        if (dc / "manifest.toml").read_text() != (dt / "manifest.toml").read_text():
            print(f"{name}: committed manifest.toml differs from the generated one")
            ok = False
        a, man = load_matting(committed, name)
        b, _ = load_matting(tmp_dir, name)
        batch = matting_batch(man["input_size"][0])
        with torch.no_grad():
            ya, yb = a(batch), b(batch)
        if not torch.equal(ya, yb):
            print(f"{name}: committed matting model output differs")
            ok = False
        else:
            print(f"{name}: matting outputs identical")
    return ok


def check(committed: Path) -> int:
    ok = check_pipelines(committed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        write_models(tmp_dir)
        ok = check_matting(committed, tmp_dir) and ok
        for name in MODELS:
            dc, dt = model_dir(committed, name), model_dir(tmp_dir, name)
            missing = [f for f in ("model.pt", "manifest.toml") if not (dc / f).exists()]
            if missing:
                print(f"{name}: MISSING {', '.join(str(dc / f) for f in missing)}")
                ok = False
                continue
            a, man_a = load(committed, name)
            b, man_b = load(tmp_dir, name)
            if (dc / "manifest.toml").read_text() != (dt / "manifest.toml").read_text():
                print(f"{name}: committed manifest.toml differs from the generated one")
                ok = False
            batch = model_batch(name, man_a["input_size"][0])
            with torch.no_grad():
                ya, yb = a(batch), b(batch)
                if "params" in MODELS[name]:  # also the params path, with varied per-item params
                    pk = check_params(name, batch.shape[0])
                    ya, yb = torch.cat([ya, a(batch, pk)]), torch.cat([yb, b(batch, pk)])
            expect = (ya.shape[0], *man_a["grid"])
            if tuple(ya.shape) != expect or tuple(yb.shape) != expect:
                print(f"{name}: shape {tuple(ya.shape)} / {tuple(yb.shape)} != manifest {expect}")
                ok = False
            elif not torch.equal(ya, yb):
                print(f"{name}: committed model output differs (max abs diff "
                      f"{(ya - yb).abs().max().item():.3g})")
                ok = False
            else:
                same_bytes = (dc / "model.pt").read_bytes() == (dt / "model.pt").read_bytes()
                print(f"{name}: outputs identical, shape {list(expect)} matches the manifest"
                      f"{' (with params)' if 'params' in MODELS[name] else ''}"
                      f"{'' if same_bytes else ' (model.pt bytes differ, outputs equal)'}")
    if ok:
        try:
            verify(committed)
            verify_matting(committed)
        except AssertionError as e:
            print(f"verification failed: {e}")
            ok = False
    print("check OK" if ok else "check FAILED")
    return 0 if ok else 1


def bench(out_dir: Path, threads: int) -> None:
    torch.set_num_threads(threads)
    print(f"load average {os.getloadavg()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    for name in MODELS:
        if MODELS[name].get("testing"):
            continue  # test models (oom raises for B > 2)
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
        if MODELS[name].get("testing"):
            continue  # test models (oom raises for B > 2)
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
    p.add_argument("--reference", type=Path, nargs="?", metavar="DIR",
                   const=Path.home() / ".cache" / "orfeas" / "models" / "reference",
                   help="write the benchmark reference network to DIR (default ~/.cache/orfeas/models/reference)")
    p.add_argument("--only", action="append", choices=sorted(MODELS) + sorted(MATTING), metavar="NAME",
                   help="(re)write only this model (repeatable; default: all). Leaves the other "
                   "committed model.pt files untouched (their bytes record generate.py's line numbers)")
    p.add_argument("--pipelines", action="store_true",
                   help="(re)write the tiny pipeline test models under models/testing, then verify")
    p.add_argument("--real-size", type=Path, nargs="?", metavar="DIR",
                   const=Path.home() / ".cache" / "orfeas" / "models",
                   help="write the real-size pipeline models to DIR (default ~/.cache/orfeas/models)")
    p.add_argument("--bench-pipelines", type=Path, nargs="?", metavar="DIR",
                   const=Path.home() / ".cache" / "orfeas" / "models",
                   help="time each stage of the real-size pipelines in DIR by batch size (CPU)")
    p.add_argument("--reps", type=int, default=3, help="with --bench-pipelines: timed calls per stage (median)")
    p.add_argument("--only-pipeline", action="append", metavar="NAME",
                   help="with --bench-pipelines, --bench-decode-cache, --real-size: only this real-size "
                   "pipeline (repeatable)")
    p.add_argument("--bench-decode-cache", type=Path, nargs="?", metavar="DIR",
                   const=Path.home() / ".cache" / "orfeas" / "models",
                   help="time one job's decode of the real-size Hunyuan-like pipeline in DIR with the "
                   "latent stack recomputed per chunk (before) and prepared once (after)")
    p.add_argument("--uncached", type=Path, metavar="FILE",
                   help="with --bench-decode-cache: a single-stage decode.pt exported before the prepare "
                   "stage existed, timed as 'before' and compared with the prepared path")
    p.add_argument("--points", type=int, default=16384, help="with --bench-decode-cache: points per chunk")
    p.add_argument("--huge", action="store_true",
                   help="with --real-size: also the full-size Hunyuan3D-2.1-like model (2.1 B parameters "
                   "with dense blocks, fp16, 4.2 GB)")
    args = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))  # the machines have 2 cores
    if args.pipelines:
        import pipelines
        write_pipelines(args.out / "testing", pipelines.TINY)
        return 0
    if args.bench_pipelines is not None:
        import pipelines
        for name in args.only_pipeline or pipelines.REAL:
            pipelines.bench(args.bench_pipelines / name, name, [1, 2], 16384, args.reps)
        return 0
    if args.bench_decode_cache is not None:
        import pipelines
        for name in args.only_pipeline or ["hunyuan-base"]:
            pipelines.bench_decode_cache(args.bench_decode_cache / name, name, args.points, args.reps, args.uncached)
        return 0
    if args.real_size is not None:
        import pipelines
        names = args.only_pipeline or pipelines.REAL + (["hunyuan"] if args.huge else [])
        for name in names:
            pipelines.write(args.real_size, name)
        return 0
    if args.reference is not None:
        write_reference(args.reference)
        return 0
    if args.check:
        return check(args.out)
    if args.bench:
        bench(args.out, args.threads)
        return 0
    if args.measure_mem:
        measure_mem(args.out)
        return 0
    write_models(args.out, args.only)
    write_matting(args.out, args.only)
    verify(args.out, args.only)
    verify_matting(args.out, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
