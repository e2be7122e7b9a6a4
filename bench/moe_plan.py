"""Planning a DeepSeek-V3-shaped MoE teacher from its headers: 61 layers x 256 experts.

    python bench/moe_plan.py [--real]

The teacher is a SPARSE safetensors file (a real header, ``os.truncate`` to the full size:
nothing on disk) with the tensor names and shapes transformers' DeepseekV3ForCausalLM saves,
and its config.json. Default: the real structure (61 layers, 256 routed experts, 8 groups,
MLA) at a tiny width, so the ~47k tensors cost what they cost to plan; ``--real``: the real
widths too (~1.3 TB on paper). The student halves the experts, the layers and the widths.
Prints the time of ``slicer.plan`` and of its parts, median of 3.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import slicer  # noqa: E402
from slicer.hf.route import _saved_shapes  # noqa: E402
from slicer.io.format import build_header  # noqa: E402

REAL = dict(hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048, q_lora_rank=1536, kv_lora_rank=512,
            num_attention_heads=128, num_key_value_heads=128, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
            vocab_size=129280)
TINY = dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, q_lora_rank=32, kv_lora_rank=16,
            num_attention_heads=8, num_key_value_heads=8, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
            vocab_size=256)
STRUCTURE = dict(architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3", num_hidden_layers=61,
                 first_k_dense_replace=3, n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, n_group=8,
                 topk_group=4, tie_word_embeddings=False)


def sparse_teacher(folder: Path, config: dict) -> int:
    cfg = transformers.DeepseekV3Config(**{k: v for k, v in config.items() if k != "model_type"})
    with torch.device("meta"):
        model = transformers.DeepseekV3ForCausalLM(cfg)
    shapes = _saved_shapes(model)
    entries = [(n, "BF16", s, 2 * int(torch.Size(s).numel())) for n, s in shapes.items()]
    header, _ = build_header(entries, {"format": "pt"})
    path = folder / "model.safetensors"
    with open(path, "wb") as f:
        f.write(header)
    os.truncate(path, len(header) + sum(e[3] for e in entries))
    (folder / "config.json").write_text(json.dumps(config))
    return len(entries)


def main() -> None:
    widths = REAL if "--real" in sys.argv else TINY
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        folder = Path(tmp)
        n = sparse_teacher(folder, {**STRUCTURE, **widths})
        edits = {"num_hidden_layers": 31, "n_routed_experts": 128,
                 "hidden_size": widths["hidden_size"] // 2, "moe_intermediate_size": widths["moe_intermediate_size"] // 2,
                 "intermediate_size": widths["intermediate_size"] // 2, "num_attention_heads": widths["num_attention_heads"] // 2,
                 "num_key_value_heads": widths["num_key_value_heads"] // 2, "kv_lora_rank": widths["kv_lora_rank"] // 2}
        times = []
        for _ in range(3):
            start = time.perf_counter()
            plan = slicer.plan(str(folder), config_set=edits, layer_selection="uniform")
            times.append(time.perf_counter() - start)
        print(f"teacher: {n} tensors ({'real' if widths is REAL else 'tiny'} widths); student: {len(plan.jobs)} tensors, "
              f"{len(plan.axes.axes)} axes; slicer.plan median {statistics.median(times):.2f} s "
              f"(runs: {', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
