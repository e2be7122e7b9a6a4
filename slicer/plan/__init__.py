"""The plan: every student tensor's source, index sets, dtype, shard and offset, from headers alone.

Pure: no tensor bytes are read. ``build`` makes the plan; ``layers`` maps student layers to
teacher layers; ``student`` is the student's specification; ``quantized`` the block-scaled
and packed teachers; ``chunks`` cuts a tensor's work into row ranges; ``manifest`` records it all.
"""
from .build import (DTYPE_CHOICES, SHARD_METADATA, Options, Plan, ShardPlan, StudentTensor, TensorJob, build_plan,
                    parse_size)

__all__ = ["DTYPE_CHOICES", "SHARD_METADATA", "Options", "Plan", "ShardPlan", "StudentTensor", "TensorJob",
           "build_plan", "parse_size"]
