from .plan import Piece, ShardPlan, plan_shards, plan_makespan  # noqa: F401
