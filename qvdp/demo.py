"""The qvdp demo: DP-sharded Qwen3-VL vision encoding of real photos.

    python -m qvdp.demo                      # CPU: small random-weight tower, 2 gloo ranks
    python -m qvdp.demo --world 4            # GPU machine: Qwen3-VL-8B tower config, NCCL, 4 GPUs
    python -m qvdp.demo --images a.jpg b.png # your own pictures

Inputs are scikit-image's bundled sample photos at several sizes plus a short clip made from
them (pans over one photo), turned into pixel rows and grid_thw by transformers' Qwen2-VL
image processor configured for Qwen3-VL (patch 16, merge 2, temporal patch 2). Nothing is
downloaded. It prints the shard plan, per-rank load and timings, and checks the sharded
output against the unsharded run on rank 0.
"""
from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
import time

import numpy as np
import torch

TINY = dict(depth=4, hidden_size=128, num_heads=2, intermediate_size=256, out_hidden_size=128,
            deepstack_visual_indexes=[1, 2], num_position_embeddings=2304)
QWEN3_VL_8B = dict(depth=27, hidden_size=1152, num_heads=16, intermediate_size=4304, out_hidden_size=4096,
                   deepstack_visual_indexes=[8, 16, 24], num_position_embeddings=2304)


# ---- inputs -------------------------------------------------------------------------------
def _processor(max_pixels: int, min_pixels: int = 32 * 32 * 4):
    from transformers.models.qwen2_vl import image_processing_qwen2_vl as m
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as cls
    except Exception:
        cls = getattr(m, "Qwen2VLImageProcessor")
    kw = dict(patch_size=16, merge_size=2, temporal_patch_size=2,
              size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
    return cls(**kw)


def _encode_image(img: np.ndarray, max_pixels: int):
    out = _processor(max_pixels)(images=[img], return_tensors="pt")
    return out["pixel_values"].float(), [int(v) for v in out["image_grid_thw"][0]]


def _encode_clip(frames: list, max_pixels: int):
    """A clip: each frame through the image processor (same size, same normalisation), then pairs
    of consecutive frames packed into one temporal patch, as Qwen3-VL's video path does."""
    rows, grid = [], None
    for f in frames:
        px, g = _encode_image(f, max_pixels)
        rows.append(px.view(px.shape[0], 3, 2, 16 * 16))
        grid = g
    if len(rows) % 2:
        rows.append(rows[-1])
    t = len(rows) // 2
    packed = [torch.stack([rows[2 * j][:, :, 0], rows[2 * j + 1][:, :, 1]], dim=2).reshape(rows[0].shape[0], -1)
              for j in range(t)]
    return torch.cat(packed), [t, grid[1], grid[2]]


def sample_inputs(scale: float = 1.0, paths=None):
    """(items, pixel_values, grid_thw): photos at several sizes + an 8-frame clip."""
    items = []
    if paths:
        from PIL import Image
        for p in paths:
            img = np.asarray(Image.open(p).convert("RGB"))
            px, g = _encode_image(img, int(1280 * 1280 * scale))
            items.append((os.path.basename(p), px, g))
    else:
        from skimage import data
        shots = [("astronaut", data.astronaut(), 512 * 512), ("coffee", data.coffee(), 1280 * 720),
                 ("chelsea", data.chelsea(), 224 * 224), ("rocket", data.rocket(), 640 * 480),
                 ("hubble", data.hubble_deep_field(), 1280 * 1280), ("retina", data.retina(), 448 * 448),
                 ("colorwheel", data.colorwheel(), 256 * 256)]
        for name, img, mp in shots:
            px, g = _encode_image(img[..., :3], max(int(mp * scale), 64 * 64))
            items.append((f"{name}", px, g))
        base = data.astronaut()
        frames = [base[16 * i:16 * i + 384, 12 * i:12 * i + 384] for i in range(8)]  # a slow pan
        px, g = _encode_clip(frames, max(int(384 * 384 * scale), 64 * 64))
        items.append(("clip(8 frames)", px, g))
    pixel_values = torch.cat([px for _, px, _ in items])
    grid = [g for _, _, g in items]
    return [(n, g) for n, _, g in items], pixel_values, grid


# ---- one rank ---------------------------------------------------------------------------------
def build_model(config: dict, device, dtype, seed=0):
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel
    torch.manual_seed(seed)
    with torch.device(device):
        m = Qwen3VLVisionModel(Qwen3VLVisionConfig(**config))
    with torch.no_grad():  # random weights, the same on every rank
        g = torch.Generator(device="cpu").manual_seed(seed)
        for p in m.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * (0.02 if p.ndim > 1 else 0.1)
                     ).to(p.device))
    return m.to(dtype).eval()


def _worker(rank, world, port, args, pixel_values, grid, results):
    import torch.distributed as dist
    import qvdp
    cuda = args.device == "cuda"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NCCL_NVLS_ENABLE="0")
    if cuda:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300),
                            **({"device_id": torch.device("cuda", rank)} if cuda else {}))
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    model = build_model(QWEN3_VL_8B if args.config == "8b" else TINY, device, dtype)
    fwd = qvdp.Qwen3VLVisionForward(model, batch_invariant=not cuda)

    def sync():
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()

    # warm-up (kernel compilation), then a timed run
    qvdp.run_dp_sharded_vision(model, pixel_values, grid, forward=fwd)
    sync()
    plan = qvdp.plan_shards(grid, world, fwd.geometry)
    t0 = time.perf_counter()
    out = qvdp.run_dp_sharded_vision(model, pixel_values, grid, forward=fwd, plan=plan)
    sync()
    t_dp = time.perf_counter() - t0
    # this rank's local forward alone (for the per-rank load column)
    lg = plan.local_grid_thw(rank)
    t_local = 0.0
    if lg:
        rows = torch.cat([pixel_values[a:b] for a, b in plan.local_patch_ranges(rank)]).to(device)
        if cuda:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        fwd(rows, tuple(map(tuple, lg)))
        if cuda:
            torch.cuda.synchronize()
        t_local = time.perf_counter() - t1
    res = {"rank": rank, "t_dp": t_dp, "t_local": t_local}
    if rank == 0:  # the unsharded run of the whole batch on one rank (moving all pixel rows, as DP moves its own)
        if cuda:
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        px = pixel_values.to(device)
        pooled, ds, _ = fwd(px, tuple(map(tuple, grid)))
        if cuda:
            torch.cuda.synchronize()
        res["t_single"] = time.perf_counter() - t2
        checks = []
        for name, a, b in [("pooler_output", out.pooler_output, pooled)] + \
                [(f"deepstack[{i}]", x, y) for i, (x, y) in enumerate(zip(out.deepstack_features, ds))]:
            checks.append((name, tuple(a.shape), bool(torch.equal(a, b)),
                           ((a.float() - b.float()).norm() / b.float().norm()).item()))
        res["checks"] = checks
    results[rank] = res
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", nargs="*", help="your own image files (default: scikit-image sample photos)")
    ap.add_argument("--world", type=int, default=None, help="ranks (default: 2 on CPU, all GPUs on CUDA)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", choices=["tiny", "8b"], default=None,
                    help="tower config (default: tiny on CPU, Qwen3-VL-8B on GPU)")
    ap.add_argument("--scale", type=float, default=None, help="image area scale (default 0.25 on CPU, 1 on GPU)")
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    args.config = args.config or ("8b" if cuda else "tiny")
    world = args.world or (max(torch.cuda.device_count(), 1) if cuda else 2)
    scale = args.scale or (1.0 if cuda else 0.25)
    import qvdp
    from qvdp.geometry import VisionGeometry
    items, pixel_values, grid = sample_inputs(scale, args.images)
    cfg = QWEN3_VL_8B if args.config == "8b" else TINY
    geom = VisionGeometry.from_config(dict(cfg, patch_size=16, temporal_patch_size=2, in_channels=3,
                                           spatial_merge_size=2))
    print(f"qvdp demo: {len(items)} items, {pixel_values.shape[0]} patches, world {world} "
          f"({'NCCL on GPU' if cuda else 'gloo on CPU'}), tower config {args.config}")
    for (name, g) in items:
        print(f"  {name:16s} grid_thw {g}  -> {g[0] * g[1] * g[2] // 4} tokens")
    plan = qvdp.plan_shards(grid, world, geom)
    print(plan.describe())
    base = qvdp.plan_shards(grid, world, geom, policy="patches")
    print(f"  (SGLang/vLLM patch-count balancing, whole items: modelled makespan "
          f"{qvdp.plan_makespan(base, geom) / qvdp.plan_makespan(plan, geom):.2f}x qvdp's)")
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mgr = mp.get_context("spawn").Manager()
    results = mgr.dict()
    mp.start_processes(_worker, args=(world, port, args, pixel_values, grid, results), nprocs=world,
                       join=True, start_method="spawn")
    res = [results[r] for r in range(world)]
    print("per-rank timings (ms):")
    for r in res:
        print(f"  rank {r['rank']}: local forward {r['t_local'] * 1e3:8.1f}   DP call (own pixel rows CPU->device, "
              f"forward, rank check, gather) {r['t_dp'] * 1e3:8.1f}")
    r0 = res[0]
    print(f"unsharded run on one rank: {r0['t_single'] * 1e3:.1f} ms; DP on {world}: "
          f"{max(r['t_dp'] for r in res) * 1e3:.1f} ms ({r0['t_single'] / max(r['t_dp'] for r in res):.2f}x)")
    print("check against the unsharded run:")
    ok = True
    for name, shape, same, err in r0["checks"]:
        print(f"  {name:14s} {str(shape):14s} bit-identical {same}  rel. err {err:.2e}")
        ok &= err < (1e-2 if cuda else 1e-6)
    print("RESULT:", "OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
