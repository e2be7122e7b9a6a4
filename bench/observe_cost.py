"""What observing a fused q/k/v layout costs on a Falcon-180B-shaped attention block (meta model; the stub
projections allocate nothing the size of the model). Usage: python bench/observe_cost.py"""
import time, resource, torch, transformers
from slicer.hf.bindings.geometry import geometry
from slicer.hf.bindings.qkv_layout import fused_layout, per_head_kv
cfg = transformers.FalconConfig(architectures=["FalconForCausalLM"], hidden_size=14848, num_attention_heads=232, num_kv_heads=8,
                                new_decoder_architecture=True, num_hidden_layers=1, vocab_size=96)
with torch.device("meta"):
    m = transformers.FalconForCausalLM(cfg)
attn = m.transformer.h[0].self_attention
rows = attn.query_key_value.weight.shape[0]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
g = per_head_kv(attn, geometry(attn, m.config, None))
got = fused_layout(attn, "query_key_value", rows, g)
dt = time.perf_counter() - t
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"Falcon-180B-shaped attention (hidden 14848, 232 heads / 8 kv heads, qkv rows {rows}): layout {got!r} observed in {dt*1000:.0f} ms; peak RSS {before/1024:.0f} -> {after/1024:.0f} MB")
