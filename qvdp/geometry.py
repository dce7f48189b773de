"""Model geometry of a Qwen3-VL-class vision tower and the per-frame cost model.

Everything here is plain Python: it is what the shard planner needs to know about the
model, and it never touches a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VisionGeometry:
    depth: int = 27
    hidden_size: int = 1152
    num_heads: int = 16
    intermediate_size: int = 4304
    out_hidden_size: int = 4096
    deepstack_visual_indexes: tuple = (8, 16, 24)
    patch_size: int = 16
    temporal_patch_size: int = 2
    in_channels: int = 3
    spatial_merge_size: int = 2
    num_position_embeddings: int = 2304
    # cost model: attention FLOPs weighted against GEMM FLOPs. Attention kernels run at a lower fraction
    # of peak than the linear layers: fitting t = a*N + b*N^2 to qvdp's 1-GPU H100 times of 4 x 720p and
    # 4 x 1280^2 gives b/a = 1.32x the FLOP ratio (1.0 = plain FLOPs). benchmarks/NOTES.md, session 6.
    attention_weight: float = 1.32

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Values in one row of pixel_values (3 * 2 * 16 * 16 = 1536 for Qwen3-VL)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size ** 2

    @property
    def num_outputs(self) -> int:
        """Main merger plus one output per deepstack merger."""
        return 1 + len(self.deepstack_visual_indexes)

    # ---- cost model -------------------------------------------------------------------
    def cost_coefficients(self) -> tuple[float, float]:
        """(a, b) so that one frame of N patches costs a*N + b*N^2 (FLOP units).

        F(N) = 2N*P*H + L*(8NH^2 + 4NHI + w*4N^2 H) + (1+D)*(8NH^2 + 2NHO)
        (patch-embed GEMM, per block: qkv+proj, MLP, attention; the mergers), w = attention_weight:
        attention FLOPs counted w times (w = 1: plain FLOPs).
        """
        H, L, I, O = self.hidden_size, self.depth, self.intermediate_size, self.out_hidden_size
        nd = len(self.deepstack_visual_indexes)
        a = 2.0 * self.patch_dim * H + L * (8.0 * H * H + 4.0 * H * I) + (1 + nd) * (8.0 * H * H + 2.0 * H * O)
        b = L * 4.0 * H * self.attention_weight
        return a, b

    def frame_flops(self, n_patches: int) -> float:
        a, b = self.cost_coefficients()
        return a * n_patches + b * n_patches * n_patches

    @classmethod
    def from_config(cls, cfg) -> "VisionGeometry":
        """From a transformers Qwen3VLVisionConfig (or any object / dict with its fields)."""
        get = (lambda k, d=None: cfg.get(k, d)) if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
        vc = get("vision_config")
        if vc is not None:
            return cls.from_config(vc)
        return cls(
            depth=int(get("depth")),
            hidden_size=int(get("hidden_size")),
            num_heads=int(get("num_heads")),
            intermediate_size=int(get("intermediate_size")),
            out_hidden_size=int(get("out_hidden_size")),
            deepstack_visual_indexes=tuple(int(i) for i in (get("deepstack_visual_indexes") or ())),
            patch_size=int(get("patch_size", 16)),
            temporal_patch_size=int(get("temporal_patch_size", 2)),
            in_channels=int(get("in_channels", 3)),
            spatial_merge_size=int(get("spatial_merge_size", 2)),
            num_position_embeddings=int(get("num_position_embeddings", 2304)),
        )


QWEN3_VL_8B = VisionGeometry()
QWEN3_VL_2B = VisionGeometry(depth=24, hidden_size=1024, num_heads=16, intermediate_size=4096,
                             out_hidden_size=2048, deepstack_visual_indexes=(5, 11, 17))
QWEN3_VL_4B = VisionGeometry(depth=24, hidden_size=1024, num_heads=16, intermediate_size=4096,
                             out_hidden_size=2560, deepstack_visual_indexes=(5, 11, 17))
