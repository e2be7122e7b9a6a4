"""--hidden rotate: the rotated student against references written from the spec.

- at the teacher's own width, the rotated student is the teacher in another basis: its
  logits equal the teacher's (fp32, allclose) for every offered family, tied heads included;
- below it, every student tensor equals the teacher's multiplied by the kept columns of the
  rotation (recomputed here from the teacher's own norm inputs, plain transformers, no
  streaming), gathered on the other axes by the manifest's index sets, and those index sets
  are consistent (one FFN set for gate/up/down, one head set for q/k/v/o); the norm gains
  are the per-site least-squares scale;
- other families are refused with one line, exit 2, nothing written.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from safetensors.torch import load_file, save_file  # noqa: E402

from families import FAMILIES, build  # noqa: E402

from slicer import api  # noqa: E402
from slicer.cli import main  # noqa: E402

VOCAB = 96
BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
            head_dim=8, vocab_size=VOCAB, tie_word_embeddings=False)
OFFERED = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama-tied": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}),
    "llama-biases": ("LlamaConfig", "LlamaForCausalLM", {"attention_bias": True, "mlp_bias": True}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}),
}


def teacher(folder, family: str, seed: int = 0):
    """A tiny random teacher whose norm gains are far from 1 (so folding them matters)."""
    config_class, arch, extra = OFFERED[family]
    config = getattr(transformers, config_class)(**{**BASE, **extra}, architectures=[arch])
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand_like(p) * 1.5 + 0.25)
            else:
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    return model.eval()


def calibration(path, rows: int = 24, length: int = 16):
    ids = torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(5))
    save_file({"input_ids": ids}, str(path))
    return path, ids


def load(folder):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                                    output_loading_info=True)
    assert not any(info.values()), info  # a stock checkpoint: no missing, unexpected or mismatched keys
    return model.eval()


def moe_teacher(folder, family: str, seed: int = 0):
    """A tiny MoE / MLA teacher (tests/families_moe.py's configs), norm gains far from 1."""
    from families_moe import FAMILIES as MOE

    fam = MOE[family]
    config = getattr(transformers, fam.config_class)(**fam.config)
    torch.manual_seed(seed)
    model = getattr(transformers, fam.config["architectures"][0])(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand_like(p) * 1.5 + 0.25)
            else:
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    return model.eval()


MOE = ("qwen3_moe", "mixtral", "deepseek_v3")


@pytest.mark.parametrize("family", [*OFFERED, *MOE])
def test_full_width_rotation_reproduces_the_teachers_logits(tmp_path, family):
    model = (moe_teacher if family in MOE else teacher)(tmp_path / "t", family)
    calib, _ = calibration(tmp_path / "calib.safetensors")
    summary = api.shrink(tmp_path / "t", tmp_path / "s", config_set={"hidden_size": 64}, hidden="rotate",
                         calibration=calib, samples=24, seq_len=16, device="cpu", save_rotation=True)
    student = load(tmp_path / "s")
    q = load_file(str(tmp_path / "s" / "rotation.safetensors"))["rotation"]
    assert torch.allclose(q.T @ q, torch.eye(64, dtype=q.dtype), atol=1e-10)
    assert not torch.allclose(q.abs(), torch.eye(64, dtype=q.dtype))  # a real change of basis, not the identity
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = model(ids).logits, student(ids).logits
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), float((got - want).abs().max())
    assert student.config.tie_word_embeddings is False
    assert summary.rotation["variance_kept"] == 1.0


def norm_inputs(model, ids) -> dict[str, torch.Tensor]:
    """The residual stream entering every norm (float64 rows), by plain hooks on the whole model."""
    seen: dict[str, list] = {}
    sites = [n for n, m in model.named_modules() if n.endswith(("input_layernorm", "post_attention_layernorm"))
             or n == "model.norm"]
    modules = dict(model.named_modules())
    handles = [modules[s].register_forward_pre_hook(
        lambda m, a, s=s: seen.setdefault(s, []).append(a[0].reshape(-1, a[0].shape[-1]).double())) for s in sites]
    with torch.no_grad():
        model.model(input_ids=ids)
    for h in handles:
        h.remove()
    return {s: torch.cat(v) for s, v in seen.items()}


def test_half_width_student_is_the_rotated_teacher_gathered_consistently(tmp_path):
    model = teacher(tmp_path / "t", "llama")
    calib, ids = calibration(tmp_path / "calib.safetensors")
    edits = {"hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2}
    api.shrink(tmp_path / "t", tmp_path / "s", config_set=edits, hidden="rotate", method="importance",
               attention="heads", calibration=calib, samples=24, seq_len=16, device="cpu", save_rotation=True)
    load(tmp_path / "s")
    d, k = 64, 32
    # The rotation, recomputed: eigenvectors of the covariance of every norm input, each token
    # scaled to unit rms (the default weighting), summed over sites.
    xs = norm_inputs(model, ids)
    unit = {s: x / x.pow(2).mean(1, keepdim=True).sqrt() for s, x in xs.items()}
    cov = sum(x.T @ x for x in unit.values())
    values, vectors = torch.linalg.eigh(cov)
    ref = vectors[:, torch.argsort(values, descending=True)][:, :k]
    saved = load_file(str(tmp_path / "s" / "rotation.safetensors"))["rotation"]
    qk = saved[:, :k]
    assert torch.allclose((qk.T @ ref).abs().diagonal(), torch.ones(k, dtype=torch.float64), atol=1e-6)
    manifest = json.loads((tmp_path / "s" / "slicer_manifest.json").read_text())
    rec = manifest["rotation"]
    import hashlib

    assert rec["sha256"] == hashlib.sha256(saved.contiguous().numpy().tobytes()).hexdigest()
    assert rec["student_hidden"] == k and rec["teacher_hidden"] == d and rec["calibration"]["sha256"]
    # Every tensor: the teacher rotated (gains folded), then gathered by the manifest's index sets.
    t = {n: p.detach().double() for n, p in model.state_dict().items()}
    out = load_file(str(next((tmp_path / "s").glob("*.safetensors")))) if not (
        tmp_path / "s" / "model.safetensors.index.json").exists() else None
    if out is None:
        out = {}
        for f in (tmp_path / "s").glob("model-*.safetensors"):
            out.update(load_file(str(f)))
    sets = manifest["index_sets"]
    index = {n: [_indices(sets[key]) for key in r["index"]] for n, r in manifest["tensors"].items()}
    gain = lambda site: t[f"{site}.weight"][:, None]  # noqa: E731
    for name, got in out.items():
        if name == "model.embed_tokens.weight":
            want = t[name] @ qk
        elif name == "lm_head.weight":
            want = t[name] @ (gain("model.norm") * qk)
        elif name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            want = t[name] @ (gain(name.rsplit(".", 3)[0] + ".input_layernorm") * qk)
        elif name.endswith(("gate_proj.weight", "up_proj.weight")):
            want = t[name] @ (gain(name.rsplit(".", 3)[0] + ".post_attention_layernorm") * qk)
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            want = qk.T @ t[name]
        elif name.endswith("norm.weight"):
            site = name[: -len(".weight")]
            x = xs[site]
            c = math.sqrt(d / k) * float(((x @ qk).norm(dim=1) / x.norm(dim=1)).mean())
            want = torch.full((k,), c, dtype=torch.float64)
        else:
            raise AssertionError(f"unexpected student tensor {name}")
        want = want[torch.meshgrid(*[torch.tensor(i) for i in index[name]], indexing="ij")] if want.dim() == 2 else \
            want[torch.tensor(index[name][0])]
        assert got.shape == want.shape, name
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-6), (name, float((got.double() - want).abs().max()))
    # The other axes stay consistent: one FFN set per layer, one head set shared by q/k/v and o.
    for layer in range(2):
        p = f"model.layers.{layer}."
        ffn = index[p + "mlp.gate_proj.weight"][0]
        assert ffn == index[p + "mlp.up_proj.weight"][0] == index[p + "mlp.down_proj.weight"][1]
        assert len(ffn) == 48 and ffn != list(range(48))  # importance chose them (not the first 48)
        assert index[p + "self_attn.q_proj.weight"][0] == index[p + "self_attn.o_proj.weight"][1]
        assert index[p + "self_attn.k_proj.weight"][0] == index[p + "self_attn.v_proj.weight"][0]
        assert all(ix[1] == list(range(k)) for n, ix in index.items() if n.endswith(("q_proj.weight", "gate_proj.weight")))
    # verify checks its files and axes; against the teacher it says why values cannot be compared.
    assert main(["verify", str(tmp_path / "s")]) == 0
    assert main(["verify", str(tmp_path / "s"), "--teacher", str(tmp_path / "t")]) == 2


def _indices(entry: dict) -> list[int]:
    if "indices" in entry:
        return list(entry["indices"])
    return [entry["start"] + entry["step"] * i for i in range(entry["s"])]


@pytest.mark.parametrize("family", ["gpt2", "bert", "gemma3_text"])
def test_other_families_are_refused_with_one_line(tmp_path, capsys, family):
    build(tmp_path / "t", FAMILIES[family], coded=False)
    key = "n_embd" if family == "gpt2" else "hidden_size"
    capsys.readouterr()  # save_pretrained's progress bar
    rc = main(["shrink", str(tmp_path / "t"), str(tmp_path / "s"), f"--set={key}=32", "--hidden", "rotate", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("slicer: error: ") and "not offered" in err[0], err
    assert not (tmp_path / "s").exists()


def test_a_student_wider_than_the_teacher_is_refused(tmp_path, capsys):
    teacher(tmp_path / "t", "llama")
    capsys.readouterr()
    rc = main(["shrink", str(tmp_path / "t"), str(tmp_path / "s"), "--set=hidden_size=128", "--hidden", "rotate"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "between 1 and the teacher's 64" in err[0], err
    assert not (tmp_path / "s").exists()
