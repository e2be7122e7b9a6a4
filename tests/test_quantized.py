"""Quantized teachers: FP8 with block scales (whole blocks, or dequantized), MXFP4 (dequantized).

The teachers are written here: a tiny Llama built by transformers whose projections are stored as
F8_E4M3 with a ``weight_scale_inv`` per 16x32 block (not square, so a swapped pair would show; every
block its own scale, so a row paired with another block's scale would show), and a tiny gpt-oss whose
experts are packed MXFP4. The references are written from transformers' documented semantics
(finegrained_fp8.py: value * scale_inv[r // b0, c // b1]; mxfp4.py's own dequantize function) and the
selection spec, importing nothing from slicer's internals.
"""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

import slicer  # noqa: E402
from helpers import int_view, ref_consecutive, ref_uniform  # noqa: E402

BLOCK = (16, 32)  # rows x columns of one scale
HIDDEN, HEADS, HEAD_DIM, FFN = 128, 4, 32, 128
FP8 = torch.float8_e4m3fn
REF = {"uniform": ref_uniform, "consecutive": ref_consecutive}


# --------------------------------------------------------------------------- teachers

def _llama(folder, *, ffn: int, heads: int = HEADS, head_dim: int = HEAD_DIM, seed: int = 0):
    cfg = transformers.LlamaConfig(hidden_size=HIDDEN, intermediate_size=ffn, num_hidden_layers=2,
                                   num_attention_heads=heads, num_key_value_heads=heads, head_dim=head_dim,
                                   vocab_size=96, tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)


def _expand(scale: torch.Tensor, rows: int, cols: int, block) -> torch.Tensor:
    """Each element's block scale: the block grid repeated, the partial last blocks cut."""
    return scale.repeat_interleave(block[0], -2)[..., :rows, :].repeat_interleave(block[1], -1)[..., :cols]


def dequantized(weight: torch.Tensor, scale: torch.Tensor, block=BLOCK) -> torch.Tensor:
    """transformers' FP8 semantics: float32(value) * float32(its block's scale_inv)."""
    return weight.to(torch.float32) * _expand(scale.to(torch.float32), *weight.shape[-2:], block)


def fp8_teacher(folder, *, ffn: int = FFN, static: bool = False, block=BLOCK, **heads):
    """A Llama whose layer projections are FP8 with a distinct scale per block (and, static, an
    activation scale per weight)."""
    _llama(folder, ffn=ffn, **heads)
    state = load_file(folder / "model.safetensors")
    out = {}
    for k, (name, w) in enumerate(sorted(state.items())):
        if ".layers." in name and name.endswith("_proj.weight"):
            rows, cols = -(-w.shape[0] // block[0]), -(-w.shape[1] // block[1])
            scale = (1 + torch.arange(rows * cols, dtype=torch.float32) / (rows * cols)).reshape(rows, cols) / 128
            out[name] = (w.float() / _expand(scale, *w.shape, block)).clamp(-448, 448).to(FP8)
            out[name + "_scale_inv"] = scale
            if static:
                out[name[: -len("weight")] + "activation_scale"] = torch.tensor(0.25 + k / 1000)
        else:
            out[name] = w
    save_file(out, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "static" if static else "dynamic",
                                     "weight_block_size": list(block)}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def mxfp4_teacher(folder):
    """A gpt-oss whose packed experts are MXFP4 (random nibbles, exponents around 2**0)."""
    cfg = transformers.GptOssConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=16, vocab_size=96, num_local_experts=4,
                                    num_experts_per_tok=2, layer_types=["sliding_attention", "full_attention"],
                                    sliding_window=8, tie_word_embeddings=False, architectures=["GptOssForCausalLM"])
    torch.manual_seed(0)
    transformers.GptOssForCausalLM(cfg).save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    gen = torch.Generator().manual_seed(1)
    out = {}
    for name, w in state.items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            experts, inputs, outputs = w.shape  # the model's [E, in, out] is stored as [E, out, in / 32, 16]
            out[name + "_blocks"] = torch.randint(0, 256, (experts, outputs, inputs // 32, 16), generator=gen,
                                                  dtype=torch.uint8)
            out[name + "_scales"] = torch.randint(122, 131, (experts, outputs, inputs // 32), generator=gen,
                                                  dtype=torch.uint8)
        else:
            out[name] = w
    save_file(out, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized")
    made = {}

    def get(kind: str):
        if kind not in made:
            folder = root / kind
            folder.mkdir()
            made[kind] = {"fp8": lambda: fp8_teacher(folder),
                          "fp8-edge": lambda: fp8_teacher(folder, ffn=72, static=True),
                          "fp8-hd16": lambda: fp8_teacher(folder, heads=8, head_dim=16),
                          "mxfp4": lambda: mxfp4_teacher(folder)}[kind]()
        return made[kind]

    return get


def _shrink(teacher, out, **kw):
    return slicer.shrink(str(teacher), str(out), progress=False, **kw)


def _blocks(members: list[int], n: int) -> list[int]:
    """The elements of whole blocks of n."""
    return [b * n + j for b in members for j in range(n)]


def _spec(hidden, heads, ffn):
    """Teacher index sets per tensor dimension of a Llama, from the model's structure: the hidden axis,
    the kept heads' rows, the FFN neurons (the oracle, independent of slicer's bindings)."""
    def dims(name: str):
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            return [None, hidden]
        if name.endswith("norm.weight"):
            return [hidden]
        if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            return [heads, hidden]
        if name.endswith("o_proj.weight"):
            return [hidden, heads]
        if name.endswith(("gate_proj.weight", "up_proj.weight")):
            return [ffn, hidden]
        if name.endswith("down_proj.weight"):
            return [hidden, ffn]
        raise AssertionError(name)
    return dims


def _select(t: torch.Tensor, index) -> torch.Tensor:
    for d, ix in enumerate(index):
        if ix is not None:
            t = t.index_select(d, torch.tensor(ix, dtype=torch.int64))
    return t


def _scale_blocks(index, shape, block=BLOCK):
    """Which teacher block each student block is: every kept index of a dimension, divided by its block size."""
    out = []
    for ix, n, size in zip(index, block, shape):
        ix = list(range(size)) if ix is None else ix
        out.append(sorted({i // n for i in ix}))
    return out


# --------------------------------------------------------------------------- FP8: whole blocks

@pytest.mark.parametrize("method", ["uniform", "consecutive"])
def test_whole_blocks_keep_the_fp8_bits_and_pair_every_block_with_its_own_scale(teachers, tmp_path, method):
    teacher = teachers("fp8")
    out = tmp_path / "out"
    _shrink(teacher, out, config_set=dict(hidden_size=96, num_attention_heads=2, num_key_value_heads=2,
                                          intermediate_size=64), quantized="blocks", method=method)
    pick = REF[method]
    # hidden: 4 blocks of 32 (the lcm of the row and column blocks) -> 3; heads of 32 rows: 4 -> 2; ffn: 4 -> 2 blocks
    spec = _spec(_blocks(pick(4, 3), 32), _blocks(pick(4, 2), HEAD_DIM), _blocks(pick(4, 2), 32))
    t, s = load_file(teacher / "model.safetensors"), load_file(out / "model.safetensors")
    checked = 0
    for name, w in t.items():
        if name.endswith("_scale_inv"):
            continue
        index = spec(name)
        if w.dtype != FP8:
            assert torch.equal(s[name], _select(w, index)), name
            continue
        assert torch.equal(int_view(s[name]), int_view(_select(w, index))), f"{name}: bits differ"
        scale = t[name + "_scale_inv"]
        assert torch.equal(s[name + "_scale_inv"], _select(scale, _scale_blocks(index, w.shape))), f"{name}: scales"
        # every student row dequantizes with its own block's scale
        assert torch.equal(dequantized(s[name], s[name + "_scale_inv"]), _select(dequantized(w, scale), index)), name
        checked += 1
    assert checked == 14
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["weight_block_size"] == list(BLOCK)
    manifest = json.loads((out / "slicer_manifest.json").read_text())
    assert manifest["quantization"]["mode"] == "blocks"
    assert manifest["axes"]["hidden"]["parts"] == "hidden:blocks * 32"  # the manifest says so
    assert manifest["axes"]["model.layers.0.mlp:ffn"]["parts"] == "model.layers.0.mlp:ffn:blocks * 32"
    assert manifest["tensors"]["model.layers.0.mlp.down_proj.weight_scale_inv"]["axes"][0] == "hidden:blocks * 2"


def test_whole_block_student_loads_as_fp8_and_transformers_dequantizes_it_to_the_teachers_selection(teachers, tmp_path):
    teacher = teachers("fp8")
    out = tmp_path / "out"
    _shrink(teacher, out, config_set=dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=2),
            quantized="blocks")
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)  # CPU: dequantized
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    spec = _spec(_blocks(ref_uniform(4, 2), 32), _blocks(ref_uniform(4, 2), HEAD_DIM), None)
    t = load_file(teacher / "model.safetensors")
    loaded = model.state_dict()
    name = "model.layers.1.self_attn.o_proj.weight"
    want = _select(dequantized(t[name], t[name + "_scale_inv"]), spec(name))
    assert torch.equal(loaded[name], want.to(loaded[name].dtype))
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_whole_blocks_with_partial_edge_blocks_and_static_activation_scales(teachers, tmp_path):
    """ffn 72 in 16-row and 32-column blocks: the last block of each is partial, kept whole; the
    per-weight activation scales travel with their weights."""
    teacher = teachers("fp8-edge")
    out = tmp_path / "out"
    _shrink(teacher, out, config_set=dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=2),
            quantized="blocks")
    t, s = load_file(teacher / "model.safetensors"), load_file(out / "model.safetensors")
    spec = _spec(_blocks(ref_uniform(4, 2), 32), _blocks(ref_uniform(4, 2), HEAD_DIM), None)
    for name in ("model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight"):
        index = spec(name)
        partial = (5, 4) if "up" in name else (8, 3)  # 72 rows in 16-row blocks, 72 columns in 32-column ones
        assert tuple(t[name + "_scale_inv"].shape) == partial
        assert torch.equal(int_view(s[name]), int_view(_select(t[name], index)))
        assert torch.equal(s[name + "_scale_inv"], _select(t[name + "_scale_inv"], _scale_blocks(index, t[name].shape)))
        assert torch.equal(dequantized(s[name], s[name + "_scale_inv"]),
                           _select(dequantized(t[name], t[name + "_scale_inv"]), index))
        act = name[: -len("weight")] + "activation_scale"
        assert torch.equal(s[act], t[act])


def test_depth_only_and_identity_keep_fp8_weights_and_scales_without_an_option(teachers, tmp_path):
    teacher = teachers("fp8")
    t = load_file(teacher / "model.safetensors")
    _shrink(teacher, tmp_path / "same", student_config=teacher / "config.json")
    same = load_file(tmp_path / "same" / "model.safetensors")
    assert sorted(same) == sorted(t)
    assert all(torch.equal(int_view(same[k]), int_view(t[k])) for k in t)
    _shrink(teacher, tmp_path / "half", config_set=dict(num_hidden_layers=1))
    half = load_file(tmp_path / "half" / "model.safetensors")
    assert "model.layers.0.mlp.up_proj.weight_scale_inv" in half and "model.layers.1.mlp.up_proj.weight" not in half
    assert all(torch.equal(int_view(v), int_view(t[k])) for k, v in half.items())
    assert "quantization_config" in json.loads((tmp_path / "half" / "config.json").read_text())


# --------------------------------------------------------------------------- FP8: dequantized

@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_dequantized_student_is_the_dequantized_teachers_selection(teachers, tmp_path, dtype):
    teacher = teachers("fp8-edge")
    out = tmp_path / "out"
    # sizes that are no whole blocks: element selection on the dequantized values
    _shrink(teacher, out, config_set=dict(hidden_size=100, num_attention_heads=2, num_key_value_heads=2,
                                          intermediate_size=40), dtype=dtype)
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    spec = _spec(ref_uniform(HIDDEN, 100), _blocks(ref_uniform(HEADS, 2), HEAD_DIM), ref_uniform(72, 40))
    t, s = load_file(teacher / "model.safetensors"), load_file(out / "model.safetensors")
    assert not any(k.endswith(("_scale_inv", "activation_scale")) for k in s)
    for name, w in t.items():
        if name.endswith(("_scale_inv", "activation_scale")):
            continue
        full = dequantized(w, t[name + "_scale_inv"], BLOCK) if w.dtype == FP8 else w
        want = _select(full, spec(name)).to(torch_dtype)
        assert s[name].dtype == torch_dtype
        assert torch.equal(int_view(s[name]), int_view(want)), name
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


@pytest.mark.parametrize("kind,edits,chunk", [
    ("fp8-edge", dict(hidden_size=100, num_attention_heads=2, num_key_value_heads=2, intermediate_size=40), 32 << 20),
    ("mxfp4", dict(hidden_size=32), 4096),
])
def test_a_remote_quantized_teacher_dequantizes_to_the_local_runs_bytes(teachers, tmp_path, kind, edits, chunk):
    """Dequantized jobs fetch their weight and scale spans on demand, beside the prefetched ones
    (they used to stop with "the remote reader is out of step with the engine")."""
    from remote_server import RangeServer

    teacher = teachers(kind)
    _shrink(teacher, tmp_path / "local", config_set=edits, dtype="bf16", chunk_bytes=chunk)
    with RangeServer(teacher.parent) as srv:
        _shrink(f"{srv.url}/{teacher.name}/", tmp_path / "remote", config_set=edits, dtype="bf16",
                remote={"requests": 2}, chunk_bytes=chunk)
    local, remote = load_file(tmp_path / "local" / "model.safetensors"), load_file(tmp_path / "remote" / "model.safetensors")
    assert sorted(local) == sorted(remote)
    for name in local:
        assert torch.equal(int_view(local[name]), int_view(remote[name])), name


def test_small_chunks_dequantize_to_the_same_bytes(teachers, tmp_path):
    teacher = teachers("fp8-edge")
    kw = dict(config_set=dict(hidden_size=100, intermediate_size=40), dtype="bf16",
              exclude=[r"^(?!model\.layers\.0\.mlp\.)"])  # two FP8 weights are enough
    _shrink(teacher, tmp_path / "a", **kw)
    _shrink(teacher, tmp_path / "b", **kw, chunk_bytes=64)  # rows split across chunks
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(int_view(a[k]), int_view(b[k])) for k in a)
    streamed = dict(slicer.stream(str(teacher), **kw, chunk_bytes=64))
    assert sorted(streamed) == sorted(a) and all(torch.equal(int_view(a[k]), int_view(streamed[k])) for k in a)


def test_verify_checks_dequantized_tensors_and_catches_a_changed_value(teachers, tmp_path):
    from slicer.verify import verify

    teacher = teachers("fp8")
    out = tmp_path / "out"
    _shrink(teacher, out, config_set=dict(hidden_size=64), dtype="bf16")
    assert verify(out, teacher=teacher, full=True).ok
    blocks = tmp_path / "blocks"
    _shrink(teacher, blocks, config_set=dict(hidden_size=64), quantized="blocks")
    assert verify(blocks, teacher=teacher, full=True).ok
    state = load_file(out / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    state[name] = state[name].clone()
    state[name][3, 5] *= 2
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    report = verify(out, teacher=teacher, full=True)
    assert any(name in p and "dequantized selection" in p for p in report.problems), report.problems


# --------------------------------------------------------------------------- MXFP4

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_mxfp4_dequantization_matches_transformers_own_function(dtype):
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from slicer.run.dequant import mxfp4
    from slicer.io.format import TensorInfo

    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 5, 2, 16), generator=gen, dtype=torch.uint8)
    scales = torch.randint(100, 156, (3, 5, 2), generator=gen, dtype=torch.uint8)  # 2**-27 .. 2**28: fp16 saturates
    want = convert_moe_packed_tensors(blocks, scales, dtype=dtype)  # [E, G*32, R]
    data = {"b": blocks.reshape(-1), "s": scales.reshape(-1)}
    infos = {"b": TensorInfo("b", "U8", tuple(blocks.shape), None, 0, blocks.numel()),
             "s": TensorInfo("s", "U8", tuple(scales.shape), None, 0, scales.numel())}

    def read(info, first, count):
        return data[info.name][first:first + count]

    index = [torch.tensor([0, 2]), torch.tensor([1, 2, 3, 31, 32, 40, 63]), torch.tensor([0, 4])]
    got = mxfp4(read, infos["b"], infos["s"], index, dtype)
    ref = want[0:3:2][:, index[1]][:, :, index[2]]
    assert torch.equal(int_view(got.contiguous()), int_view(ref))
    whole = mxfp4(read, infos["b"], infos["s"], [torch.arange(3), torch.arange(64), torch.arange(5)], dtype)
    assert torch.equal(int_view(whole.contiguous()), int_view(want))


def test_mxfp4_teacher_dequantized_into_a_narrower_student(teachers, tmp_path):
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    teacher = teachers("mxfp4")
    out = tmp_path / "out"
    _shrink(teacher, out, config_set=dict(hidden_size=32), dtype="bf16", chunk_bytes=4096)
    t, s = load_file(teacher / "model.safetensors"), load_file(out / "model.safetensors")
    hidden = torch.tensor(ref_uniform(64, 32))
    for layer in (0, 1):
        p = f"model.layers.{layer}.mlp.experts."
        gate_up = convert_moe_packed_tensors(t[p + "gate_up_proj_blocks"], t[p + "gate_up_proj_scales"])  # [E, H, 2I]
        down = convert_moe_packed_tensors(t[p + "down_proj_blocks"], t[p + "down_proj_scales"])  # [E, I, H]
        assert torch.equal(int_view(s[p + "gate_up_proj"]), int_view(gate_up[:, hidden]))
        assert torch.equal(int_view(s[p + "down_proj"]), int_view(down[:, :, hidden]))
    assert not any(k.endswith(("_blocks", "_scales")) for k in s)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_mxfp4_depth_only_copies_the_packed_experts(teachers, tmp_path):
    teacher = teachers("mxfp4")
    out = tmp_path / "out"
    _shrink(teacher, out, config_set=dict(num_hidden_layers=1))
    t, s = load_file(teacher / "model.safetensors"), load_file(out / "model.safetensors")
    for k in ("gate_up_proj_blocks", "gate_up_proj_scales", "down_proj_blocks", "down_proj_scales"):
        assert torch.equal(s[f"model.layers.0.mlp.experts.{k}"], t[f"model.layers.0.mlp.experts.{k}"])
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "mxfp4"


# --------------------------------------------------------------------------- refusals

REFUSALS = [
    ("fp8", ["--set", "hidden_size=64"], "pass --quantized blocks to keep whole blocks"),
    ("fp8", ["--set", "hidden_size=80", "--quantized", "blocks"], "axis hidden [128 -> 80] cannot be kept in whole 32-element"),
    ("fp8-edge", ["--set", "intermediate_size=36", "--quantized", "blocks"], "model.layers.0.mlp:ffn [72 -> 36] cannot be kept in whole 32-element"),
    ("fp8-hd16", ["--set", "num_attention_heads=4", "--set", "num_key_value_heads=4", "--quantized", "blocks"],
     "does not keep whole 32-element quantization blocks"),  # two heads of 16 in each 32-column block of o_proj
    ("fp8", ["--set", "hidden_size=64", "--quantized", "blocks", "--dtype", "bf16"], "--quantized blocks keeps"),
    ("fp8", ["--set", "hidden_size=64", "--quantized", "dequantize"], "needs the float type to write"),
    ("mxfp4", ["--set", "hidden_size=32"], "MXFP4 (32 four-bit values per group, two per byte)"),
]


@pytest.mark.parametrize("kind,args,words", REFUSALS, ids=[" ".join(a) for _, a, _ in REFUSALS])
def test_refusals_are_one_line_exit_2_and_write_nothing(teachers, tmp_path, capsys, kind, args, words):
    from slicer.cli import main

    teacher = teachers(kind)
    capsys.readouterr()  # building the teacher may print
    out = tmp_path / "out"
    assert main(["shrink", str(teacher), str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slicer: error: ") and err.count("\n") == 1, err
    assert words in err, err
    assert not out.exists()


def test_template_without_config_still_refuses_scales_it_would_select_flat(teachers, tmp_path, capsys):
    from slicer.cli import main

    teacher = teachers("fp8")
    capsys.readouterr()
    bare = tmp_path / "teacher.safetensors"  # no config.json beside it: no structure, no block size
    bare.write_bytes((teacher / "model.safetensors").read_bytes())
    template = load_file(bare)
    name = "model.layers.0.self_attn.q_proj.weight"
    template[name] = template[name][:, :64].contiguous()  # flat selection would pick columns apart from their scales
    save_file(template, tmp_path / "template.safetensors")
    out = tmp_path / "out"
    assert main(["shrink", str(bare), str(out), "--template", str(tmp_path / "template.safetensors"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass the teacher's config" in err, err
    assert not out.exists()


def test_plan_says_which_axes_keep_whole_blocks(teachers, capsys):
    from slicer.cli import main

    teacher = teachers("fp8")
    capsys.readouterr()
    assert main(["plan", str(teacher), "--set", "hidden_size=64", "--quantized", "blocks"]) == 0
    text = capsys.readouterr().out
    assert "whole blocks, bits exact" in text and "hidden = hidden:blocks * 32" in text


# --------------------------------------------------------------------------- the block algebra

def test_scale_layouts_fold_whole_blocks_and_refuse_straddling_ones():
    from slicer.axes import Axis, AxisTable, parse_layout
    from slicer.plan.quantized import _block_members, _divide

    table = AxisTable()
    table.add(Axis("kv", "kv-heads", 4, 2))
    table.add(Axis("lora:blocks", "blocks", 4, 2))
    table.add(Axis("lora", "kv-lora", 512, 256, parse_layout("lora:blocks * 128")))
    table.add(Axis("rope", "rope", 64, 64))
    table.add(Axis("grp", "group", 2, 2))
    table.add(Axis("hd", "head-dim", 192, 192))
    table.add(Axis("hd64", "head-dim", 64, 64))
    assert _divide(table, parse_layout("kv * grp * hd64"), 128) == parse_layout("kv")  # a kv group: one block
    assert _divide(table, parse_layout("kv * hd64"), 128) is None  # two heads a block, kept apart
    assert _divide(table, parse_layout("lora | rope"), 128) == parse_layout("lora:blocks | 1")  # DeepSeek kv_a: partial rope block
    assert _divide(table, parse_layout("kv * hd"), 128) is None  # heads of 192 rows straddle 128-blocks
    assert _divide(table, parse_layout("rope | lora"), 128) is None  # a partial block in the middle
    assert _block_members([0, 1, 2, 3, 8, 9], 4, 10) == [0, 2]  # the last block is partial: rows 8, 9
    assert _block_members([0, 1, 2, 3, 5, 6, 7, 8], 4, 12) is None  # starts inside a block
    assert _block_members([8, 9, 0, 1], 4, 10) is None  # a partial block before a whole one


def test_template_with_config_gets_the_teachers_quantization_config_when_blocks_are_kept(teachers, tmp_path):
    teacher = teachers("fp8")
    template = tmp_path / "template"
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=FFN, num_hidden_layers=2, num_attention_heads=HEADS,
                                   num_key_value_heads=HEADS, head_dim=HEAD_DIM, vocab_size=96, tie_word_embeddings=False,
                                   architectures=["LlamaForCausalLM"])
    transformers.LlamaForCausalLM(cfg).save_pretrained(template)  # a plain student: no scales, no quantization_config
    _shrink(teacher, tmp_path / "blocks", template=template, quantized="blocks")
    _shrink(teacher, tmp_path / "bf16", template=template, dtype="bf16")
    blocks = json.loads((tmp_path / "blocks" / "config.json").read_text())
    assert blocks["quantization_config"] == json.loads((teacher / "config.json").read_text())["quantization_config"]
    assert "model.layers.0.mlp.up_proj.weight_scale_inv" in load_file(tmp_path / "blocks" / "model.safetensors")
    assert "quantization_config" not in json.loads((tmp_path / "bf16" / "config.json").read_text())


# --------------------------------------------------------------------------- the streamed forward (slicer score)

def _dequantized_checkpoint(teacher, out):
    """The teacher dequantized here (FP8: value x its block's scale_inv; MXFP4: transformers' own
    ``convert_moe_packed_tensors``), saved as a plain float32 checkpoint with no quantization_config."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    state = load_file(teacher / "model.safetensors")
    plain = {}
    for name, w in state.items():
        if name.endswith("_blocks"):
            base = name[: -len("_blocks")]
            plain[base] = convert_moe_packed_tensors(w, state[base + "_scales"], dtype=torch.float32)
        elif name + "_scale_inv" in state:
            plain[name] = dequantized(w, state[name + "_scale_inv"])
        elif not name.endswith(("_scales", "_scale_inv", "activation_scale")):
            plain[name] = w
    out.mkdir()
    save_file(plain, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((teacher / "config.json").read_text())
    del config["quantization_config"]
    (out / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("criterion", ["activation", "taylor"])
@pytest.mark.parametrize("kind", ["fp8", "mxfp4"])
def test_scores_of_a_quantized_teacher_are_those_of_the_teacher_dequantized(tmp_path, kind, criterion):
    """The streamed forward (slicer score) reads FP8 weights times their block scales and MXFP4 experts
    unpacked: the scores equal, bit for bit, those of the same teacher dequantized here and saved in float32."""
    from slicer.cli import main

    (tmp_path / "t").mkdir()
    if kind == "fp8":
        fp8_teacher(tmp_path / "t", static=True)  # activation scales: not applied, the dequantized teacher is measured
    else:
        mxfp4_teacher(tmp_path / "t")
    _dequantized_checkpoint(tmp_path / "t", tmp_path / "f")
    ids = torch.randint(0, 96, (4, 12), generator=torch.Generator().manual_seed(0))
    save_file({"input_ids": ids}, tmp_path / "ids.safetensors")
    got = {}
    for which in ("t", "f"):
        out = tmp_path / f"{which}.scores.safetensors"
        assert main(["score", str(tmp_path / which), "--calibration", str(tmp_path / "ids.safetensors"), "-o", str(out),
                     "--criterion", criterion, "--quiet"]) == 0
        got[which] = load_file(out)
    assert sorted(got["t"]) == sorted(got["f"]) and len(got["t"]) > 3
    for name, want in got["f"].items():
        assert torch.equal(got["t"][name], want), name


def test_scoring_a_teacher_of_another_quantization_is_refused_with_one_line(tmp_path, capsys):
    from slicer.cli import main

    fp8_teacher(tmp_path / "t")
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes"}
    (tmp_path / "t" / "config.json").write_text(json.dumps(config))
    save_file({"input_ids": torch.zeros(2, 8, dtype=torch.int64)}, tmp_path / "ids.safetensors")
    capsys.readouterr()
    rc = main(["score", str(tmp_path / "t"), "--calibration", str(tmp_path / "ids.safetensors"), "-o",
               str(tmp_path / "s.safetensors"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "bitsandbytes" in err[0], err
    assert not (tmp_path / "s.safetensors").exists()
