from .plan import Piece, ShardPlan, plan_shards, plan_makespan  # noqa: F401
from .push import push_errors, symmetric_empty  # noqa: F401
