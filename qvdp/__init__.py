"""qvdp: data-parallel Qwen3-VL vision encoding with fused Triton kernels and an ordered NCCL gather."""
from .geometry import VisionGeometry, QWEN3_VL_2B, QWEN3_VL_4B, QWEN3_VL_8B  # noqa: F401
from .dist.plan import Piece, ShardPlan, plan_shards, plan_makespan  # noqa: F401
from .dist.gather import gather_rows  # noqa: F401
from .encoder import (DPVisionOutput, PlanMismatchError, RankFailedError,  # noqa: F401
                      run_dp_sharded_vision)
from .ops.attention import varlen_attention  # noqa: F401
from .ops.patch_merger import patch_merger  # noqa: F401
from .model import Qwen3VLVisionForward  # noqa: F401
from .integrations.transformers import apply_to_qwen3_vl, remove_from_qwen3_vl  # noqa: F401

__version__ = "0.1.0"
