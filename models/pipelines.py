"""Multi-stage pipeline models with seeded random weights (imported by generate.py).

Two architectures, each at a *tiny* size (committed under models/testing/, for tests) and at
*real* size (written to the cache by `generate.py --real-size`, never committed):

- `triposr`: TripoSR-like, feed-forward. encode = ViT image encoder + triplane transformer
  (learned triplane tokens cross-attending to the image tokens) -> triplanes [B, 3, Ct, R, R];
  decode / colour = point MLPs on features bilinearly sampled from the three planes.
- `hunyuan`: Hunyuan3D-2.1-shape-like. encode = ViT (DINOv2-like) -> cond tokens [B, T, C];
  step = one Euler step of flow matching with a DiT (self-attention over the latent set,
  cross-attention to the cond tokens, adaLN from the timestep) predicting the velocity;
  prepare = the latent-set VAE decoder's self-attention stack over the latents, once per job;
  decode = its query head (Fourier-embedded query points cross-attend to the prepared latent
  set) -> occupancy per point, once per chunk of points. The two together are exactly the
  single-stage decoder (`LatentSetDecode`, kept as the reference the split is checked against).

Stage contract (models/README.md, md/models.md):
    encode(images f32[B,4,H,W]) -> cond f32[B,T,C]            (feed-forward: latents f32[B,*L])
    step(latents f32[B,*L], t f32[B], t_next f32[B], cond f32[B,T,C]) -> latents f32[B,*L]
    prepare(latents f32[B,*L]) -> features f32[B,*F]           (optional; once per job)
    decode(features f32[B,*F], points f32[B,P,3]) -> occupancy f32[B,P]
    colour(features f32[B,*F], points f32[B,P,3]) -> linear rgb f32[B,P,3] in [0, 1]
    (features = prepare's output, or the latents themselves without a prepare stage)

Random weights give random fields; so that every output still meshes into one closed solid,
decode adds the network's output (bounded, tanh) to a sphere prior: occ = 0.6 - |p| + a*tanh(net).
Every item of a batch is computed independently (attention never crosses items), which is
what lets the node batch jobs that are at different steps into one call.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(self, dim: int, heads: int, ctx_dim: int = 0):
        super().__init__()
        self.heads = heads
        self.n1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.cross = ctx_dim > 0
        self.n2 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(max(ctx_dim, 1), 2 * dim)
        self.cproj = nn.Linear(dim, dim)
        self.n3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def split(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def merge(self, x: Tensor) -> Tensor:
        b, h, n, e = x.shape
        return x.transpose(1, 2).reshape(b, n, h * e)

    def forward(self, x: Tensor, ctx: Tensor) -> Tensor:
        q, k, v = self.qkv(self.n1(x)).chunk(3, dim=-1)
        x = x + self.proj(self.merge(F.scaled_dot_product_attention(self.split(q), self.split(k), self.split(v))))
        if self.cross:
            ck, cv = self.kv(ctx).chunk(2, dim=-1)
            cq = self.q(self.n2(x))
            x = x + self.cproj(self.merge(F.scaled_dot_product_attention(self.split(cq), self.split(ck), self.split(cv))))
        return x + self.mlp(self.n3(x))


class ViT(nn.Module):
    """Patch embedding of RGBA images + transformer; tokens [B, (H/p)*(W/p), dim]."""

    def __init__(self, size: int, patch: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.embed = nn.Conv2d(4, dim, patch, stride=patch)
        n = (size // patch) ** 2
        self.pos = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: Tensor) -> Tensor:
        x = self.embed(images).flatten(2).transpose(1, 2) + self.pos
        for blk in self.blocks:
            x = blk(x, x)
        return self.norm(x)


# ----------------------------------------------------------------------------- TripoSR-like


class TriplaneEncode(nn.Module):
    """images [B,4,H,W] -> triplanes [B, 3, Ct, R, R]."""

    def __init__(self, c: Dict):
        super().__init__()
        self.size = c["input"]
        self.vit = ViT(c["input"], c["patch"], c["vit_dim"], c["vit_depth"], c["vit_heads"])
        r, w = c["tri_res"], c["tri_dim"]
        self.res, self.ct = r, c["tri_ch"]
        self.tokens = nn.Parameter(torch.randn(1, 3 * r * r, w) * 0.02)
        self.blocks = nn.ModuleList([Block(w, c["tri_heads"], c["vit_dim"]) for _ in range(c["tri_depth"])])
        self.norm = nn.LayerNorm(w)  # O(1) plane features, so the point MLPs see a varying input
        self.out = nn.Linear(w, c["tri_ch"])

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 4 or images.shape[2] != self.size or images.shape[3] != self.size:
            raise RuntimeError(f"expected images of shape [B, 4, {self.size}, {self.size}], got {list(images.shape)}")
        ctx = self.vit(images)
        b = images.shape[0]
        x = self.tokens.expand(b, -1, -1)
        for blk in self.blocks:
            x = blk(x, ctx)
        x = self.out(self.norm(x))  # [B, 3*R*R, Ct]
        return x.view(b, 3, self.res, self.res, self.ct).permute(0, 1, 4, 2, 3).contiguous()


class TriplaneQuery(nn.Module):
    """(triplanes [B,3,Ct,R,R], points [B,P,3]) -> [B,P,out]: features of the xy, xz and yz
    planes at each point (bilinear), concatenated, through an MLP."""

    def __init__(self, c: Dict, out: int):
        super().__init__()
        ct, w = c["tri_ch"], c["mlp_dim"]
        layers: List[nn.Module] = [nn.Linear(3 * ct, w), nn.SiLU()]
        for _ in range(c["mlp_depth"] - 2):
            layers += [nn.Linear(w, w), nn.SiLU()]
        layers.append(nn.Linear(w, out))
        for layer in layers:
            if isinstance(layer, nn.Linear):
                # He init: PyTorch's default shrinks the signal ~1/sqrt(3) per layer, and a
                # random 10-layer MLP would answer one colour everywhere.
                nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / layer.in_features))
        self.mlp = nn.Sequential(*layers)
        self.colour = out == 3

    def forward(self, planes: Tensor, points: Tensor) -> Tensor:
        if planes.dim() != 5 or planes.shape[1] != 3:
            raise RuntimeError(f"expected triplanes [B, 3, C, R, R], got {list(planes.shape)}")
        if points.dim() != 3 or points.shape[2] != 3 or points.shape[0] != planes.shape[0]:
            raise RuntimeError(f"expected points [B, P, 3] with B = {planes.shape[0]}, got {list(points.shape)}")
        feats: List[Tensor] = []
        for i, (a, b) in enumerate(((0, 1), (0, 2), (1, 2))):
            grid = torch.stack([points[:, :, a], points[:, :, b]], -1).unsqueeze(1)  # [B,1,P,2]
            f = F.grid_sample(planes[:, i], grid, mode="bilinear", padding_mode="border", align_corners=True)
            feats.append(f[:, :, 0].transpose(1, 2))  # [B,P,Ct]
        y = self.mlp(torch.cat(feats, -1))
        if self.colour:
            return torch.sigmoid(y)
        r = points.pow(2).sum(-1).sqrt()
        return 0.6 - r + 0.12 * torch.tanh(y[:, :, 0])


# ----------------------------------------------------------------------------- Hunyuan-like


class CondEncode(nn.Module):
    """images [B,4,H,W] -> cond tokens [B, T, C] (DINOv2-like ViT)."""

    def __init__(self, c: Dict):
        super().__init__()
        self.size = c["input"]
        self.vit = ViT(c["input"], c["patch"], c["vit_dim"], c["vit_depth"], c["vit_heads"])

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 4 or images.shape[2] != self.size or images.shape[3] != self.size:
            raise RuntimeError(f"expected images of shape [B, 4, {self.size}, {self.size}], got {list(images.shape)}")
        return self.vit(images)


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    half = dim // 2
    # In t's dtype: a float32 constant would promote an fp16 export's activations to float32
    # and the next (fp16) Linear would refuse them.
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    args = (t * 1000.0).unsqueeze(-1) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


class DiTBlock(nn.Module):
    """adaLN-modulated block: self-attention over latents, cross-attention to cond, MLP."""

    def __init__(self, dim: int, heads: int, ctx_dim: int):
        super().__init__()
        self.block = Block(dim, heads, ctx_dim)
        self.ada = nn.Linear(dim, 2 * dim)

    def forward(self, x: Tensor, temb: Tensor, ctx: Tensor) -> Tensor:
        scale, shift = self.ada(F.silu(temb)).unsqueeze(1).chunk(2, dim=-1)
        return self.block(x * (1 + scale) + shift, ctx)


class FlowStep(nn.Module):
    """One Euler step of flow matching: latents + (t_next - t) * v(latents, t, cond), t per item."""

    def __init__(self, c: Dict):
        super().__init__()
        d = c["dit_dim"]
        self.n, self.cl, self.d = c["latents"], c["latent_ch"], d
        self.inp = nn.Linear(c["latent_ch"], d)
        self.temb = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList([DiTBlock(d, c["dit_heads"], c["vit_dim"]) for _ in range(c["dit_depth"])])
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, c["latent_ch"])

    def forward(self, latents: Tensor, t: Tensor, t_next: Tensor, cond: Tensor) -> Tensor:
        b = latents.shape[0]
        if latents.dim() != 3 or latents.shape[1] != self.n or latents.shape[2] != self.cl:
            raise RuntimeError(f"expected latents [B, {self.n}, {self.cl}], got {list(latents.shape)}")
        if t.shape != (b,) or t_next.shape != (b,) or cond.shape[0] != b:
            raise RuntimeError(f"expected t, t_next [B] and cond [B, T, C] with B = {b}, got "
                               f"{list(t.shape)}, {list(t_next.shape)}, {list(cond.shape)}")
        temb = self.temb(timestep_embedding(t, self.d))
        x = self.inp(latents)
        for blk in self.blocks:
            x = blk(x, temb, cond)
        v = self.out(self.norm(x))
        return latents + (t_next - t).view(b, 1, 1) * v


class LatentSetPrepare(nn.Module):
    """latents [B,N,Cl] -> features [B,N,W]: the decoder's self-attention stack over the latent
    set. It does not depend on the query points, so it runs once per job, not once per chunk."""

    def __init__(self, c: Dict):
        super().__init__()
        w = c["vae_dim"]
        self.n, self.cl = c["latents"], c["latent_ch"]
        self.post_kl = nn.Linear(c["latent_ch"], w)
        self.blocks = nn.ModuleList([Block(w, c["vae_heads"]) for _ in range(c["vae_depth"])])

    def forward(self, latents: Tensor) -> Tensor:
        if latents.dim() != 3 or latents.shape[1] != self.n or latents.shape[2] != self.cl:
            raise RuntimeError(f"expected latents [B, {self.n}, {self.cl}], got {list(latents.shape)}")
        x = self.post_kl(latents)
        for blk in self.blocks:
            x = blk(x, x)
        return x


class LatentSetQuery(nn.Module):
    """(features [B,N,W], points [B,P,3]) -> occupancy [B,P]: Fourier-embedded query points
    cross-attend to the prepared latent set."""

    def __init__(self, c: Dict):
        super().__init__()
        w = c["vae_dim"]
        self.n, self.w = c["latents"], w
        self.freqs = c["fourier"]
        self.query = nn.Linear(3 * (2 * c["fourier"] + 1), w)
        self.cross = Block(w, c["vae_heads"], w)
        self.head = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, 1))

    def forward(self, features: Tensor, points: Tensor) -> Tensor:
        if features.dim() != 3 or features.shape[1] != self.n or features.shape[2] != self.w:
            raise RuntimeError(f"expected prepared features [B, {self.n}, {self.w}], got {list(features.shape)}")
        if points.dim() != 3 or points.shape[2] != 3 or points.shape[0] != features.shape[0]:
            raise RuntimeError(f"expected points [B, P, 3] with B = {features.shape[0]}, got {list(points.shape)}")
        f = (2.0 ** torch.arange(self.freqs, dtype=points.dtype, device=points.device)) * math.pi  # see timestep_embedding
        a = (points.unsqueeze(-1) * f).flatten(2)
        q = self.query(torch.cat([points, torch.sin(a), torch.cos(a)], -1))
        # Self-attention among query points would couple chunks: the query block only cross-attends
        # (its self-attention sees one point at a time).
        b, p, w = q.shape
        y = self.cross.mlp(self.cross.n3(q))  # a per-point MLP first
        cq = self.cross.q(self.cross.n2(q + y))
        ck, cv = self.cross.kv(features).chunk(2, dim=-1)
        h = self.cross.heads
        att = F.scaled_dot_product_attention(
            cq.view(b, p, h, w // h).transpose(1, 2), ck.view(b, -1, h, w // h).transpose(1, 2),
            cv.view(b, -1, h, w // h).transpose(1, 2))
        out = self.head(q + self.cross.cproj(att.transpose(1, 2).reshape(b, p, w)))[:, :, 0]
        return 0.6 - points.pow(2).sum(-1).sqrt() + 0.12 * torch.tanh(out)


class LatentSetDecode(nn.Module):
    """(latents [B,N,Cl], points [B,P,3]) -> occupancy [B,P]: the single-stage latent-set VAE
    decoder (self-attention over the latent set, then the point query), as exported before the
    `prepare` stage existed. Its parameters are created in the same order as before, so the
    seeded weights are the same; `prepare` and `decode` are exported from its two halves."""

    def __init__(self, c: Dict):
        super().__init__()
        self.prepare = LatentSetPrepare(c)
        self.decode = LatentSetQuery(c)

    def forward(self, latents: Tensor, points: Tensor) -> Tensor:
        return self.decode(self.prepare(latents), points)


# ----------------------------------------------------------------------------- configs

CONFIGS = {
    "triposr-tiny": {
        "kind": "triposr", "seed": 14, "input": 32, "patch": 8, "vit_dim": 32, "vit_depth": 1, "vit_heads": 2,
        "tri_res": 8, "tri_dim": 32, "tri_depth": 1, "tri_heads": 2, "tri_ch": 8, "mlp_dim": 32, "mlp_depth": 3,
        "grid": 32, "chunk_points": 8192, "max_batch": 8,
    },
    # TripoSR (stabilityai/TripoSR, config.yaml): DINO ViT-B/16 at 512 px (1024 tokens, 768 wide,
    # 12 layers), a 1-D transformer of 16 layers, 1024 wide over 3 x 32 x 32 triplane tokens with
    # cross-attention to the image tokens, 40-channel triplanes (upsampled to 64 x 64 there; kept
    # at 32 here), a 10-layer 64-wide NeRF MLP. ~390 M parameters here.
    "triposr": {
        "kind": "triposr", "seed": 14, "input": 512, "patch": 16, "vit_dim": 768, "vit_depth": 12, "vit_heads": 12,
        "tri_res": 32, "tri_dim": 1024, "tri_depth": 16, "tri_heads": 16, "tri_ch": 40, "mlp_dim": 64, "mlp_depth": 10,
        "grid": 256, "chunk_points": 262144, "max_batch": 8,
    },
    "hunyuan-tiny": {
        "kind": "hunyuan", "seed": 21, "input": 32, "patch": 8, "vit_dim": 32, "vit_depth": 1, "vit_heads": 2,
        "latents": 32, "latent_ch": 8, "dit_dim": 32, "dit_depth": 2, "dit_heads": 2,
        "vae_dim": 32, "vae_depth": 1, "vae_heads": 2, "fourier": 4,
        "steps": 8, "shift": 3.0, "grid": 32, "chunk_points": 8192, "max_batch": 8,
    },
    # Hunyuan3D-2.1 shape (tencent/Hunyuan3D-2.1, hunyuan3d-dit-v2-1 + ShapeVAE configs): DINOv2-L/14
    # at 518 px (1369 tokens, 1024 wide, 24 layers), DiT 2048 wide, 21 blocks, 16 heads over 4096
    # latents x 64 channels, VAE decoder 1024 wide, 16 layers, 8 Fourier frequencies, 50 steps with
    # shift 3 (flow matching). Built here with dense blocks that is 2.1 B parameters (DiT 1.5 B;
    # the released DiT's mixture-of-experts feed-forwards in some of its blocks, not modelled
    # here, bring the published model to 3.3 B), written in fp16 (4.2 GB; 8.5 GB in fp32 once a
    # CPU node loads it). Slow on this project's CPU machines (md/benchmarks.md), so
    # `--real-size` writes it only with `--huge`; by default it writes "hunyuan-base": the same
    # architecture at the published widths of the image encoder and the VAE, with a 1024-wide,
    # 8-block DiT over 4096 x 64 latents (761 M parameters, fp32).
    "hunyuan": {
        "kind": "hunyuan", "seed": 21, "input": 518, "patch": 14, "vit_dim": 1024, "vit_depth": 24, "vit_heads": 16,
        "latents": 4096, "latent_ch": 64, "dit_dim": 2048, "dit_depth": 21, "dit_heads": 16,
        "vae_dim": 1024, "vae_depth": 16, "vae_heads": 16, "fourier": 8,
        "steps": 50, "shift": 3.0, "grid": 256, "chunk_points": 65536, "max_batch": 8,
        "precision": "fp16",  # as the released weights ship; 2.1 B parameters = 4.2 GB
    },
    "hunyuan-base": {
        "kind": "hunyuan", "seed": 21, "input": 518, "patch": 14, "vit_dim": 1024, "vit_depth": 24, "vit_heads": 16,
        "latents": 4096, "latent_ch": 64, "dit_dim": 1024, "dit_depth": 8, "dit_heads": 16,
        "vae_dim": 1024, "vae_depth": 16, "vae_heads": 16, "fourier": 8,
        "steps": 50, "shift": 3.0, "grid": 256, "chunk_points": 65536, "max_batch": 8,
    },
}

TINY = ["triposr-tiny", "hunyuan-tiny"]
REAL = ["triposr", "hunyuan-base"]


def stages(name: str) -> Dict[str, nn.Module]:
    """The stage modules of pipeline `name`, with weights drawn from its fixed seed."""
    c = CONFIGS[name]
    torch.manual_seed(c["seed"])
    if c["kind"] == "triposr":
        out = {"encode": TriplaneEncode(c), "decode": TriplaneQuery(c, 1), "colour": TriplaneQuery(c, 3)}
    else:
        encode, step = CondEncode(c), FlowStep(c)  # weights drawn in this order, then the decoder's
        vae = LatentSetDecode(c)
        out = {"encode": encode, "step": step, "prepare": vae.prepare, "decode": vae.decode}
    return {k: m.eval() for k, m in out.items()}


def reference_decode(name: str) -> nn.Module:
    """The single-stage decoder of Hunyuan-like pipeline `name` with its seeded weights: what
    `prepare` + `decode` must equal (the uncached path, one call per chunk)."""
    c = CONFIGS[name]
    torch.manual_seed(c["seed"])
    CondEncode(c), FlowStep(c)  # draw their weights first, as stages() does
    return LatentSetDecode(c).eval()


def latent_shape(c: Dict) -> List[int]:
    if c["kind"] == "triposr":
        return [3, c["tri_ch"], c["tri_res"], c["tri_res"]]
    return [c["latents"], c["latent_ch"]]


def pipeline_toml(name: str) -> str:
    c = CONFIGS[name]
    lines = ["# Generated by models/generate.py; do not edit by hand. Stage contract: md/models.md."]
    if c["kind"] == "triposr":
        lines.append(f'encode = {{ file = "encode.pt", output_shape = {latent_shape(c)} }}')
    else:
        vit_tokens = (c["input"] // c["patch"]) ** 2
        lines.append(f'encode = {{ file = "encode.pt", output_shape = [{vit_tokens}, {c["vit_dim"]}] }}')
        lines.append(f'step = {{ file = "step.pt", steps = {c["steps"]}, schedule = "flow_shifted", '
                     f'shift = {c["shift"]}, latent_shape = {latent_shape(c)} }}')
        lines.append(f'prepare = {{ file = "prepare.pt", output_shape = [{c["latents"]}, {c["vae_dim"]}] }}')
    lines.append(f'decode = {{ file = "decode.pt", chunk_points = {c["chunk_points"]} }}')
    if c["kind"] == "triposr":
        lines.append(f'colour = {{ file = "colour.pt", chunk_points = {c["chunk_points"]} }}')
    return "\n".join(lines) + "\n"


def manifest_text(name: str) -> str:
    c = CONFIGS[name]
    g = c["grid"]
    what = ("TripoSR-like (ViT encoder, triplane transformer, point MLPs; colour from the model)"
            if c["kind"] == "triposr" else
            f"Hunyuan3D-2.1-shape-like (ViT encoder, DiT sampled by flow matching in {c['steps']} steps, "
            "latent-set VAE decoder)")
    return "\n".join([
        "# Generated by models/generate.py; do not edit by hand.",
        f'name = "{name}"',
        'version = "1.0.0"',
        f'description = "{"TEST model: " if name in TINY else ""}{what}, seeded random weights."',
        f"input_size = [{c['input']}, {c['input']}]",
        "input_channels = 4",
        'output_kind = "occupancy"',
        f"grid = [{g}, {g}, {g}]",
        "iso = 0.0",
        "bounds_min = [-1.0, -1.0, -1.0]",
        "bounds_max = [1.0, 1.0, 1.0]",
        "mem_per_item_mb = 4                 # per running job: latents + cond + one decode chunk (fp32)",
        f'precision = "{c.get("precision", "fp32")}"',
        f"max_batch = {c['max_batch']}",
    ]) + "\n"


def write(out_dir: Path, name: str) -> Path:
    d = out_dir / name
    d.mkdir(parents=True, exist_ok=True)
    half = CONFIGS[name].get("precision") == "fp16"
    for stage, module in stages(name).items():
        if half:
            module = module.half()  # in place, so the fp32 copy does not stay in memory too
        torch.jit.save(torch.jit.script(module), str(d / f"{stage}.pt"))
    (d / "pipeline.toml").write_text(pipeline_toml(name))
    (d / "manifest.toml").write_text(manifest_text(name))
    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"wrote {d} ({size} bytes)")
    return d


def grid_points(g: int) -> Tensor:
    """World points of a g^3 grid in C order over (z, y, x), each as (x, y, z)."""
    s = torch.linspace(-1.0, 1.0, g)
    z, y, x = torch.meshgrid(s, s, s, indexing="ij")
    return torch.stack([x, y, z], -1).view(1, -1, 3)


def noise(c: Dict, seeds: List[int]) -> Tensor:
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return torch.stack([torch.randn(latent_shape(c), generator=g) for g in gens])


def run(mods: Dict, c: Dict, images: Tensor, seeds: List[int], points: Tensor) -> Dict[str, Tensor]:
    """The whole pipeline in Python (reference for --check and verification)."""
    with torch.no_grad():
        cond = mods["encode"](images)
        if "step" in mods:
            x = noise(c, seeds)
            n = c["steps"]
            ts = [1.0 - i / n for i in range(n + 1)]
            s = c["shift"]
            ts = [s * t / (1 + (s - 1) * t) for t in ts]
            b = images.shape[0]
            for i in range(n):
                x = mods["step"](x, torch.full((b,), ts[i]), torch.full((b,), ts[i + 1]), cond)
        else:
            x = cond
        out = {"latents": x}
        if "prepare" in mods:
            x = mods["prepare"](x)
        p = points.expand(images.shape[0], -1, -1).contiguous()
        out["field"] = mods["decode"](x, p)
        if "colour" in mods:
            out["rgb"] = mods["colour"](x, p)
    return out


def load(d: Path) -> Dict[str, torch.jit.ScriptModule]:
    return {f.stem: torch.jit.load(str(f), map_location="cpu").eval() for f in sorted(d.glob("*.pt"))}


def verify(d: Path, name: str, images: Tensor) -> None:
    """Loads back; batched == alone (within 1e-5); occupancy has a surface inside the grid."""
    c = CONFIGS[name]
    mods = load(d)
    pts = grid_points(16)
    seeds = list(range(7, 7 + images.shape[0]))
    full = run(mods, c, images, seeds, pts)
    for k in range(images.shape[0]):
        alone = run(mods, c, images[k:k + 1], seeds[k:k + 1], pts)
        for key in full:
            diff = (alone[key][0] - full[key][k]).abs().max().item()
            assert diff < 1e-5, f"{name}: item {k} {key} depends on the batch by {diff}"
    f = full["field"]
    assert torch.isfinite(f).all()
    assert (f > 0).any(dim=1).all() and (f < 0).any(dim=1).all(), f"{name}: no surface"
    if "rgb" in full:
        assert full["rgb"].shape == (images.shape[0], pts.shape[1], 3)
        assert ((full["rgb"] >= 0) & (full["rgb"] <= 1)).all()
    cached = ""
    if "prepare" in mods:
        # prepare once + decode per chunk == the single-stage decoder called on every chunk.
        ref = reference_decode(name)
        with torch.no_grad():
            for s, e in ((0, pts.shape[1] // 2), (pts.shape[1] // 2, pts.shape[1])):
                chunk = pts[:, s:e].expand(images.shape[0], -1, -1).contiguous()
                diff = (ref(full["latents"], chunk) - full["field"][:, s:e]).abs().max().item()
                assert diff < 1e-5, f"{name}: prepared decode differs from the single-stage decoder by {diff}"
        cached = ", prepare + decode equal the single-stage decoder (< 1e-5)"
    print(f"{name}: loads, B={images.shape[0]} items equal alone (< 1e-5), surface inside the grid{cached}")


def compare(committed: Path, fresh: Path, name: str, images: Tensor) -> bool:
    """Committed and regenerated stages give identical outputs; declarations identical."""
    ok = True
    for f in ("pipeline.toml", "manifest.toml"):
        if (committed / f).read_text() != (fresh / f).read_text():
            print(f"{name}: committed {f} differs from the generated one")
            ok = False
    c = CONFIGS[name]
    pts = grid_points(12)
    a = run(load(committed), c, images, [1, 2, 3][: images.shape[0]], pts)
    b = run(load(fresh), c, images, [1, 2, 3][: images.shape[0]], pts)
    for key in a:
        if not torch.equal(a[key], b[key]):
            print(f"{name}: committed {key} differs (max abs diff {(a[key] - b[key]).abs().max().item():.3g})")
            ok = False
    if ok:
        print(f"{name}: outputs identical ({', '.join(a)})")
    return ok


def params(mods: Dict) -> int:
    return sum(p.numel() for m in mods.values() for p in m.parameters())


def bench(d: Path, name: str, batches: List[int], points: int, reps: int = 3) -> None:
    """Raw forward time of each stage by batch size (CPU, fp32): encode, one step, one decode
    (and colour) chunk of `points` points. Median of `reps` after one warm-up call."""
    import time

    c = CONFIGS[name]
    mods = load(d)
    if c.get("precision") == "fp16":
        # What a CPU node does with an fp16 export: compute in fp32 (half matmuls are slow or
        # missing on CPUs).
        mods = {k: m.float() for k, m in mods.items()}
    print(f"{name}: {params(mods) / 1e6:.0f} M parameters, {torch.get_num_threads()} threads", flush=True)

    out: List[Tensor] = []

    def timed(f) -> float:
        out.clear()
        out.append(f())  # warm-up (the profiling executor's first run)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return sorted(ts)[len(ts) // 2] * 1000.0

    with torch.no_grad():
        for b in batches:
            images = torch.rand(b, 4, c["input"], c["input"])
            row = [f"B={b}", f"encode {timed(lambda: mods['encode'](images)):.0f} ms"]
            cond = out[0]
            if "step" in mods:
                x = noise(c, list(range(b)))
                t, tn = torch.full((b,), 0.5), torch.full((b,), 0.48)
                row.append(f"step {timed(lambda: mods['step'](x, t, tn, cond)):.0f} ms")
            else:
                x = cond
            p = torch.rand(b, points, 3) * 2 - 1
            if "prepare" in mods:
                row.append(f"prepare {timed(lambda: mods['prepare'](x)):.0f} ms")
                x = out[0]
            row.append(f"decode {points} pts {timed(lambda: mods['decode'](x, p)):.0f} ms")
            if "colour" in mods:
                row.append(f"colour {points} pts {timed(lambda: mods['colour'](x, p)):.0f} ms")
            print("  " + ", ".join(row), flush=True)


def bench_decode_cache(d: Path, name: str, points: int, reps: int = 1, uncached: Path = None) -> None:
    """Decode of one job before and after the `prepare` stage, in one run (CPU, fp32): before,
    every chunk of `points` recomputes the latent stack (the single-stage decoder: the old export
    at `uncached` if given, else prepare + decode in one call per chunk, which is the same
    computation); after, prepare runs once and each chunk only runs the query head. Prints per
    chunk times and the projection to the manifest's whole grid, and checks both give the same
    field (< 1e-4 at real size: two float32 reductions of different shape)."""
    import time

    c = CONFIGS[name]
    mods = load(d)
    single = torch.jit.load(str(uncached), map_location="cpu").eval() if uncached else None
    label = f"the old single-stage export {uncached.name}" if uncached else "prepare + decode per chunk"
    print(f"{name}: decode cache, {points} points per chunk, B=1, {torch.get_num_threads()} threads, before = {label}")

    def timed(f):
        f()  # warm-up
        ts, y = [], None
        for _ in range(reps):
            t0 = time.perf_counter()
            y = f()
            ts.append(time.perf_counter() - t0)
        return sorted(ts)[len(ts) // 2], y

    with torch.no_grad():
        x = noise(c, [1])
        p = torch.rand(1, points, 3) * 2 - 1
        before = (lambda: single(x, p)) if single is not None else (lambda: mods["decode"](mods["prepare"](x), p))
        t_before, y_before = timed(before)
        t_prep, feats = timed(lambda: mods["prepare"](x))
        t_query, y_after = timed(lambda: mods["decode"](feats, p))
    diff = (y_before - y_after).abs().max().item()
    assert diff < 1e-4, f"{name}: cached decode differs from the uncached one by {diff}"
    g = c["grid"] ** 3
    n = -(-g // points)
    grid_before = n * t_before
    grid_after = t_prep + n * t_query
    print(f"  before: {t_before:.1f} s per chunk; after: prepare {t_prep:.1f} s once + {t_query:.2f} s per chunk; "
          f"max abs diff {diff:.2e}")
    print(f"  {c['grid']}^3 grid = {n} chunks: before {grid_before / 60:.1f} min, after {grid_after / 60:.1f} min "
          f"({grid_before / grid_after:.1f}x); per chunk {t_before / t_query:.1f}x", flush=True)
