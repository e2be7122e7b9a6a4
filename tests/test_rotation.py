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


def teacher(folder, family: str, seed: int = 0, **overrides):
    """A tiny random teacher whose norm gains are far from 1 (so folding them matters)."""
    config_class, arch, extra = OFFERED[family]
    config = getattr(transformers, config_class)(**{**BASE, **extra, **overrides}, architectures=[arch])
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(config)
    return _spread_and_save(model, folder)


def _spread_and_save(model, folder):
    """Norm gains far from 1 (so folding them matters), the other weights nudged; saved, in eval mode."""
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
    return _spread_and_save(model, folder)


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


def student_tensors(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        if f.name != "rotation.safetensors":
            out.update(load_file(str(f)))
    return out


def reference(t: dict[str, torch.Tensor], name: str, qk: torch.Tensor):
    """The teacher's tensor in the rotated basis, written from the spec by name (an independent
    reference): (values whose rows are the members of the other axis, "rows" or "cols").
    Readers of a norm: W diag(g) Qk; the embedding: E Qk; writers: Qk^T W."""
    w = t[name]
    layer = name.rsplit(".mlp.", 1)[0].rsplit(".self_attn.", 1)[0]
    gain = lambda site: t[f"{site}.weight"][:, None]  # noqa: E731
    if name == "model.embed_tokens.weight":
        return w @ qk, "rows"
    if name == "lm_head.weight":
        return w @ (gain("model.norm") * qk), "rows"
    if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "q_a_proj.weight",
                      "kv_a_proj_with_mqa.weight")):
        return w @ (gain(layer + ".input_layernorm") * qk), "rows"
    if name.endswith(("gate_proj.weight", "up_proj.weight", "mlp.gate.weight", "w1.weight", "w3.weight")):
        return w @ (gain(layer + ".post_attention_layernorm") * qk), "rows"
    if name.endswith(("o_proj.weight", "down_proj.weight", "w2.weight")):
        return qk.T @ w, "cols"
    raise AssertionError(f"no reference for {name}")


def members(got: torch.Tensor, candidates: dict[str, tuple[torch.Tensor, str]]) -> list[tuple[str, int]]:
    """Which teacher member each student row (or column) is, found from the values alone: the one
    candidate row of the rotated teacher it equals (allclose), among every candidate tensor."""
    out = []
    for name, (ref, how) in candidates.items():
        a, b = (got, ref) if how == "rows" else (got.T, ref.T)
        out.append((name, a, b))
    a = out[0][1]
    labels = [(name, j) for name, _, b in out for j in range(b.shape[0])]
    b = torch.cat([b for _, _, b in out])
    close = ((a[:, None, :] - b[None]).abs() <= 1e-5 + 1e-4 * b[None].abs()).all(-1)  # allclose, row against row
    found = []
    for i in range(a.shape[0]):
        hits = [labels[j] for j in close[i].nonzero().flatten().tolist()]
        assert len(hits) == 1, (i, hits)
        found.append(hits[0])
    return found


@pytest.mark.parametrize("family", ["llama", "qwen3_moe"])
def test_half_width_rotated_student_is_consistent_by_value(tmp_path, family):
    """Every student tensor is the rotated teacher (an independent reference), and every member
    of every other axis (FFN neurons, heads, experts) sits at the same place in every tensor:
    each student row/column is identified with a teacher member by its values alone."""
    model = (moe_teacher if family in MOE else teacher)(tmp_path / "t", family)
    calib, ids = calibration(tmp_path / "calib.safetensors")
    edits = {"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
             **({"moe_intermediate_size": 24, "num_experts": 4} if family in MOE else {"intermediate_size": 48})}
    api.shrink(tmp_path / "t", tmp_path / "s", config_set=edits, hidden="rotate", method="importance",
               attention="heads", calibration=calib, samples=24, seq_len=16, device="cpu", save_rotation=True)
    load(tmp_path / "s")
    d, k = 64, 32
    saved = load_file(str(tmp_path / "s" / "rotation.safetensors"))["rotation"]
    qk = saved[:, :k]
    # The rotation, recomputed from plain transformers hooks: eigenvectors of the covariance of every
    # norm input, each token scaled to unit rms (the default weighting), summed over sites.
    xs = norm_inputs(model, ids)
    unit = {s: x / x.pow(2).mean(1, keepdim=True).sqrt() for s, x in xs.items()}
    values, vectors = torch.linalg.eigh(sum(x.T @ x for x in unit.values()))
    ref = vectors[:, torch.argsort(values, descending=True)][:, :k]
    assert torch.allclose((qk.T @ ref).abs().diagonal(), torch.ones(k, dtype=torch.float64), atol=1e-6)
    manifest = json.loads((tmp_path / "s" / "slicer_manifest.json").read_text())
    rec = manifest["rotation"]
    import hashlib

    assert rec["sha256"] == hashlib.sha256(saved.contiguous().numpy().tobytes()).hexdigest()
    assert rec["student_hidden"] == k and rec["teacher_hidden"] == d and rec["calibration"]["sha256"]
    assert rec["calibration_forwards"] == 1  # importance's scoring forward gathered the rotation's statistics
    assert manifest["scores"]["criterion"] == "activation"  # scored on the fly for a rotated student: ROTATED_CRITERION
    t = {n: v.double() for n, v in student_tensors(tmp_path / "t").items()}  # the teacher's files (per-expert names)
    out = {n: v.double() for n, v in student_tensors(tmp_path / "s").items()}
    who: dict[str, list] = {}
    for name, got in out.items():
        if name.endswith("norm.weight"):
            if "q_norm" in name or "k_norm" in name:  # per-head norms: not hidden-bound, kept as they are
                assert torch.equal(got, t[name].to(got.dtype)), name
                continue
            x = xs[name[: -len(".weight")]]
            c = math.sqrt(d / k) * float(((x @ qk).norm(dim=1) / x.norm(dim=1)).mean())
            assert torch.allclose(got, torch.full((k,), c, dtype=torch.float64), rtol=1e-5), name
            continue
        if ".experts." in name:  # a student expert may be any teacher expert: search them all
            stem = name.split(".experts.")[0] + ".experts."
            leaf = name.split(".experts.")[1].split(".", 1)[1]
            cands = {n: reference(t, n, qk) for n in t if n.startswith(stem) and n.endswith("." + leaf)}
        else:
            cands = {name: reference(t, name, qk)}
        who[name] = members(got, cands)
        hidden = got.shape[1] if next(iter(cands.values()))[1] == "rows" else got.shape[0]
        assert hidden == k, name
    for layer in range(2):
        p = f"model.layers.{layer}."
        # q rows and o columns: the same query rows; k and v rows: the same kv rows
        assert [j for _, j in who[p + "self_attn.q_proj.weight"]] == [j for _, j in who[p + "self_attn.o_proj.weight"]]
        assert [j for _, j in who[p + "self_attn.k_proj.weight"]] == [j for _, j in who[p + "self_attn.v_proj.weight"]]
        q_rows = [j for _, j in who[p + "self_attn.q_proj.weight"]]
        assert len(q_rows) == 4 * 8 and all(r % 8 == i % 8 for i, r in enumerate(q_rows))  # whole heads
        if family in MOE:
            router = [j for _, j in who[p + "mlp.gate.weight"]]  # the experts kept, in order
            for e in range(4):
                sets = {leaf: who[f"{p}mlp.experts.{e}.{leaf}.weight"] for leaf in ("gate_proj", "up_proj", "down_proj")}
                teacher_expert = {int(n.split(".experts.")[1].split(".")[0]) for v in sets.values() for n, _ in v}
                assert teacher_expert == {router[e]}, (e, teacher_expert, router)
                assert [j for _, j in sets["gate_proj"]] == [j for _, j in sets["up_proj"]] == \
                    [j for _, j in sets["down_proj"]]
        else:
            ffn = [j for _, j in who[p + "mlp.gate_proj.weight"]]
            assert ffn == [j for _, j in who[p + "mlp.up_proj.weight"]] == [j for _, j in who[p + "mlp.down_proj.weight"]]
            assert len(ffn) == 48 and ffn != list(range(48))  # importance chose them (not the first 48)
    # verify checks its files and axes, and the values against teacher x rotation
    assert main(["verify", str(tmp_path / "s")]) == 0
    assert main(["verify", str(tmp_path / "s"), "--teacher", str(tmp_path / "t")]) == 0


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


def test_multimodal_llava_full_width_rotation_reproduces_the_logits_with_an_image(tmp_path):
    """Llava: the language model is rotated; the projector's last linear writes the LM's residual stream
    (a writer: Qk^T W, its bias Qk^T b), the projector's own width and the vision tower are kept."""
    from families_multimodal import FAMILIES as MM, _llava_inputs

    fam = MM["llava"]
    config = transformers.LlavaConfig(**{k: v for k, v in fam.config.items()})
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and "language_model" in name:
                p.copy_(torch.rand_like(p) * 1.5 + 0.25)
            else:
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "t")
    model.eval()
    calib, _ = calibration(tmp_path / "calib.safetensors")
    api.shrink(tmp_path / "t", tmp_path / "s", config_set={"text_config.hidden_size": 64}, hidden="rotate",
               calibration=calib, samples=24, seq_len=16, device="cpu", save_rotation=True)
    student, info = transformers.LlavaForConditionalGeneration.from_pretrained(
        str(tmp_path / "s"), dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), info
    manifest = json.loads((tmp_path / "s" / "slicer_manifest.json").read_text())
    roles = manifest["rotation"]["tensors"]
    projector = {n: r["role"] for n, r in roles.items() if "multi_modal_projector" in n}
    assert projector == {"multi_modal_projector.linear_2.weight": "writer", "multi_modal_projector.linear_2.bias": "writer"}
    assert not any("vision_tower" in n for n in roles)
    inputs = _llava_inputs(fam.config)
    with torch.no_grad():
        want, got = model(**inputs).logits, student.eval()(**inputs).logits
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), float((got - want).abs().max())


def test_rotation_composes_with_layer_selection(tmp_path):
    """At full width a rotation is exact for any stack of the teacher's layers: the rotated student with
    layers selected has the logits of the same layers selected without rotation."""
    teacher(tmp_path / "t", "llama", num_hidden_layers=3)
    calib, _ = calibration(tmp_path / "calib.safetensors")
    edits = {"hidden_size": 64, "num_hidden_layers": 2}
    api.shrink(tmp_path / "t", tmp_path / "plain", config_set=edits, layer_selection="uniform", device="cpu")
    api.shrink(tmp_path / "t", tmp_path / "rot", config_set=edits, layer_selection="uniform", hidden="rotate",
               calibration=calib, samples=24, seq_len=16, device="cpu")
    maps = [json.loads((tmp_path / s / "slicer_manifest.json").read_text())["layer_maps"] for s in ("plain", "rot")]
    assert maps[0] == maps[1] and list(maps[0].values()) == [[0, 2]], maps  # uniform: layer 1 of 3 left out
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = load(tmp_path / "plain")(ids).logits, load(tmp_path / "rot")(ids).logits
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), float((got - want).abs().max())


def test_the_saved_rotation_is_the_runs_own_file_and_overwrite_replaces_it_silently(tmp_path, caplog):
    """rotation.safetensors moves into OUT with the student (never there without its manifest), the
    manifest records its size and sha256 and lists it, so an --overwrite rerun replaces it as its own
    instead of warning that it keeps weights slicer did not write."""
    import hashlib
    import logging

    teacher(tmp_path / "t", "llama")
    calib, _ = calibration(tmp_path / "calib.safetensors")
    kw = dict(config_set={"hidden_size": 32}, hidden="rotate", calibration=calib, samples=24, seq_len=16,
              device="cpu", save_rotation=True)
    api.shrink(tmp_path / "t", tmp_path / "s", **kw)
    path = tmp_path / "s" / "rotation.safetensors"
    record = json.loads((tmp_path / "s" / "slicer_manifest.json").read_text())
    assert "rotation.safetensors" in record["files"]
    assert record["written"]["rotation.safetensors"] == {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                                         "size": path.stat().st_size}
    assert load_file(str(path))["rotation"].shape == (64, 64)
    with caplog.at_level(logging.WARNING, logger="slicer"):
        api.shrink(tmp_path / "t", tmp_path / "s", overwrite=True, **{**kw, "config_set": {"hidden_size": 48}})
    assert not [r for r in caplog.records if "did not write" in r.getMessage()], caplog.text
    again = json.loads((tmp_path / "s" / "slicer_manifest.json").read_text())
    assert again["written"]["rotation.safetensors"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.name.endswith(".safetensors")) == \
        ["model.safetensors", "rotation.safetensors"]


def test_an_interrupted_rotated_shrink_resumes_to_the_same_student(tmp_path, monkeypatch):
    import hashlib
    import os

    from slicer.errors import Interrupted, SlicerError
    from slicer.run import rotate

    teacher(tmp_path / "t", "llama")
    calib, _ = calibration(tmp_path / "calib.safetensors")
    kw = dict(config_set={"hidden_size": 32, "intermediate_size": 64}, hidden="rotate", calibration=calib, samples=24,
              seq_len=16, device="cpu", max_shard_size="30KB")
    api.shrink(tmp_path / "t", tmp_path / "clean", **kw)
    real, calls = rotate.apply, [0]

    def dies(*a, **k):
        calls[0] += 1
        if calls[0] == 12:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(rotate, "apply", dies)
    with pytest.raises(Interrupted):
        api.shrink(tmp_path / "t", tmp_path / "s", **kw)
    monkeypatch.setattr(rotate, "apply", real)
    staging = next(p for p in (tmp_path / "s").iterdir() if p.is_dir())
    kept = [p.name for p in staging.glob("model-*.safetensors")]
    assert kept, list(staging.iterdir())
    inodes = {n: os.stat(staging / n).st_ino for n in kept}
    summary = api.shrink(tmp_path / "t", tmp_path / "s", resume=True, **kw)
    assert sorted(summary.resumed) == sorted(kept)
    assert {n: os.stat(tmp_path / "s" / n).st_ino for n in kept} == inodes  # moved into place, not rewritten
    files = sorted(p.name for p in (tmp_path / "clean").glob("model-*.safetensors"))
    assert len(files) > len(kept) and files == sorted(p.name for p in (tmp_path / "s").glob("model-*.safetensors"))
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert all(digest(tmp_path / "clean" / f) == digest(tmp_path / "s" / f) for f in files)
    # A resume with another rotation (other calibration) is refused: its values would differ.
    other, _ = calibration(tmp_path / "other.safetensors", rows=20)
    again = api.shrink(tmp_path / "t", tmp_path / "s", resume=True, **kw)
    assert again.unchanged
    with pytest.raises(SlicerError, match="cannot resume: .* differs"):
        api.shrink(tmp_path / "t", tmp_path / "s", resume=True, **{**kw, "calibration": other})


def test_gemma3_post_norms_cannot_be_rotated_exactly(tmp_path, capsys):
    """Why Gemma 3 is refused, shown on its own norm module: its post-attention / post-FFN norms scale the
    *branch output* by ``1 + w`` after normalizing, in the teacher's basis. In a rotated student the same
    module scales ``Q^T y`` by its own diagonal gain; ``Q diag(1 + w') Q^T = diag(1 + w)`` holds only where Q
    maps each gain's eigenspace to itself: with distinct gains, only a signed permutation (a channel selection,
    which --hidden select already does). For a real rotation the best diagonal gain (least squares, fitted on
    the very outputs it is checked on) still misses by far; for a signed permutation it is exact."""
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    d = 64
    torch.manual_seed(0)
    norm = Gemma3RMSNorm(d, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.rand(d, dtype=torch.float64) * 1.5 - 0.5)  # 1 + w: distinct gains in 0.5..2
    y = torch.randn(4096, d, dtype=torch.float64)

    def best_miss(q: torch.Tensor) -> float:
        with torch.no_grad():
            want = norm(y) @ q  # the teacher's post-norm output, rotated into the student's basis
        base = (y @ q) / (y @ q).pow(2).mean(1, keepdim=True).add(1e-6).sqrt()  # what the student's module normalizes
        gain = (want * base).sum(0) / base.pow(2).sum(0)  # the least-squares 1 + w', per student channel
        return float((base * gain - want).norm() / want.norm())

    rotation, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    permutation = torch.eye(d, dtype=torch.float64)[torch.randperm(d)] * torch.where(torch.rand(d) < 0.5, -1.0, 1.0).double()
    assert best_miss(rotation) > 0.1  # no gain vector makes the rotated Gemma 3 block the teacher's
    assert best_miss(permutation) < 1e-6  # a channel selection is exact (float32 inside the module), as --hidden select is
    build(tmp_path / "t", FAMILIES["gemma3_text"], coded=False)  # and --hidden rotate says so in one line
    capsys.readouterr()
    assert main(["shrink", str(tmp_path / "t"), str(tmp_path / "s"), "--set=hidden_size=32", "--hidden", "rotate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "post-attention and post-FFN norms" in err[0], err


def fp8_dequantized_model(folder):
    """The FP8 teacher as a float model, dequantized here from transformers' FP8 semantics
    (tests/test_quantized.py's ``dequantized``: value times its block's scale_inv)."""
    from test_quantized import dequantized

    state = load_file(str(folder / "model.safetensors"))
    weights = {n: (dequantized(w, state[n + "_scale_inv"]) if n + "_scale_inv" in state else w)
               for n, w in state.items() if not n.endswith(("_scale_inv", "activation_scale"))}  # a static
    # scheme's activation scales: a dequantized model has none
    config = json.loads((folder / "config.json").read_text())
    del config["quantization_config"]
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).float()
    model.load_state_dict(weights, strict=True)
    return model.eval()


def test_an_fp8_teacher_rotated_at_full_width_gives_the_dequantized_teachers_logits(tmp_path):
    from test_quantized import fp8_teacher

    fp8_teacher(tmp_path / "t")
    calib, _ = calibration(tmp_path / "calib.safetensors", rows=32)
    assert main(["shrink", str(tmp_path / "t"), str(tmp_path / "s"), "--set=hidden_size=128", "--hidden", "rotate",
                 "--dtype", "fp32", "--calibration", str(calib), "--samples", "32", "--seq-len", "16",
                 "--device", "cpu", "--quiet"]) == 0
    student = load(tmp_path / "s")
    assert "quantization_config" not in json.loads((tmp_path / "s" / "config.json").read_text())
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = fp8_dequantized_model(tmp_path / "t")(ids).logits, student(ids).logits
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), float((got - want).abs().max())
    manifest = json.loads((tmp_path / "s" / "slicer_manifest.json").read_text())
    assert manifest["quantization"]["mode"] == "dequantize", manifest["quantization"]


def test_an_fp8_teacher_rotated_at_half_width_loads_and_verifies(tmp_path):
    from test_quantized import fp8_teacher

    fp8_teacher(tmp_path / "t", static=True)  # activation scales: ignored, the dequantized teacher is measured
    calib, _ = calibration(tmp_path / "calib.safetensors", rows=32)  # 512 tokens: 4 per dimension of 128
    fp8_dequantized_model(tmp_path / "t").save_pretrained(tmp_path / "f")  # the same teacher, dequantized in float32
    for teacher, student in (("t", "s"), ("f", "fs")):
        assert main(["shrink", str(tmp_path / teacher), str(tmp_path / student), "--set=hidden_size=64",
                     "--set=intermediate_size=64", "--hidden", "rotate", "--quantized", "dequantize", "--dtype", "fp32",
                     "--calibration", str(calib), "--samples", "32", "--seq-len", "16", "--device", "cpu",
                     "--save-rotation", "--quiet"]) == 0
    load(tmp_path / "s")
    # The calibration forward read the FP8 weights dequantized, bit for bit as the float teacher's:
    # the same statistics, so the same rotation and the same student.
    rotations = [json.loads((tmp_path / o / "slicer_manifest.json").read_text())["rotation"]["sha256"] for o in ("s", "fs")]
    assert rotations[0] == rotations[1]
    got, want = student_tensors(tmp_path / "s"), student_tensors(tmp_path / "fs")
    assert sorted(got) == sorted(want) and all(torch.equal(got[n], want[n]) for n in got)
    from slicer.verify import verify

    report = verify(tmp_path / "s", teacher=tmp_path / "t", full=True)
    assert report.ok, report.problems
    assert report.tensors_rotated > 0
    assert main(["verify", str(tmp_path / "s"), "--teacher", str(tmp_path / "t")]) == 0


@pytest.mark.parametrize("options, says", [
    ((), "add --dtype bf16"),
    (("--dtype", "keep", "--quantized", "blocks"), "--quantized blocks cannot keep its blocks"),
])
def test_what_a_quantized_teacher_cannot_rotate_is_refused_with_one_line(tmp_path, capsys, options, says):
    """(MXFP4 is gpt-oss's, a family --hidden rotate does not offer: refused by family; its streamed
    forward's refusal is tests/test_quantized.py's.)"""
    from test_quantized import fp8_teacher

    fp8_teacher(tmp_path / "t")
    calib, _ = calibration(tmp_path / "calib.safetensors")
    capsys.readouterr()
    rc = main(["shrink", str(tmp_path / "t"), str(tmp_path / "s"), "--set=hidden_size=32", "--hidden", "rotate",
               *options, "--calibration", str(calib)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and says in err[0], err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
def test_half_width_moe_and_mla_students_load_and_verify_against_teacher_times_rotation(tmp_path, family):
    """The families' own half-width edits (tests/families_moe.py: hidden, heads, FFN, experts, MLA ranks,
    depth), rotated: a stock checkpoint, and every tensor is the teacher's selection times the rotation
    (verify --teacher --full, which recomputes each from the teacher in float64)."""
    from families_moe import FAMILIES as MOE_FAMILIES

    moe_teacher(tmp_path / "t", family)
    calib, _ = calibration(tmp_path / "calib.safetensors")
    method = "uniform" if family == "deepseek_v3" else "importance"  # importance scores no MLA nope-dims axis
    api.shrink(tmp_path / "t", tmp_path / "s", config_set=dict(MOE_FAMILIES[family].edits), hidden="rotate",
               method=method, calibration=calib, samples=24, seq_len=16, device="cpu", save_rotation=True)
    load(tmp_path / "s")
    from slicer.verify import verify

    report = verify(tmp_path / "s", teacher=tmp_path / "t", full=True)
    assert report.ok, report.problems
    roles = json.loads((tmp_path / "s" / "slicer_manifest.json").read_text())["rotation"]["tensors"]
    assert report.tensors_rotated == len(roles)
    if family == "deepseek_v3":
        assert report.tensors_compared > report.tensors_rotated  # q_b / kv_b, their norms: gathered, bit-exact
        assert roles["model.layers.0.self_attn.q_a_proj.weight"]["site"] == "model.layers.0.input_layernorm"
        assert roles["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"]["role"] == "reader"
        assert not any("q_a_layernorm" in n or "kv_a_layernorm" in n for n in roles)  # internal, not the hidden axis
        assert roles["model.layers.1.mlp.shared_experts.down_proj.weight"]["role"] == "writer"
    # A rotated value moved by 1% of the tensor's range is caught (beside the shard's sha256).
    from slicer.io.checkpoint import Checkpoint

    info = Checkpoint.open(tmp_path / "s").tensors["lm_head.weight"]
    with open(info.path, "r+b") as f:
        f.seek(info.offset)
        row = torch.frombuffer(bytearray(f.read(4 * info.shape[1])), dtype=torch.float32)
        row[3] += 0.01 * float(row.abs().max())
        f.seek(info.offset)
        f.write(row.numpy().tobytes())
    problems = verify(tmp_path / "s", teacher=tmp_path / "t", full=True).problems
    assert any("tensor 'lm_head.weight': differs from teacher tensor" in p and "times the rotation at [0, 3]" in p
               for p in problems), problems


def test_an_rmsnorm_as_wide_as_the_hidden_axis_that_is_not_the_residual_stream_is_no_site(tmp_path):
    """DeepSeek-V3 with q_lora_rank == hidden_size: its q_a_layernorm passes the forward's RMSNorm test over
    d channels, but the plan binds its gain to the q-LoRA axis: no site (not in the covariance, not rotated)."""
    from families_moe import FAMILIES as MOE_FAMILIES

    config = dict(MOE_FAMILIES["deepseek_v3"].config, q_lora_rank=64)
    model = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.rand_like(p) * 1.5 + 0.25) if "norm" in name else p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "t")
    calib, _ = calibration(tmp_path / "calib.safetensors")
    api.shrink(tmp_path / "t", tmp_path / "s", config_set={"hidden_size": 64}, hidden="rotate", calibration=calib,
               samples=24, seq_len=16, device="cpu", method="importance")
    rec = json.loads((tmp_path / "s" / "slicer_manifest.json").read_text())["rotation"]
    assert rec["sites"] == 2 * config["num_hidden_layers"] + 1 and not any("q_a_layernorm" in s for s in rec["site_gains"])
    # the scoring forward gathered over every observed norm, q_a_layernorm too: the statistics took a forward of their own
    assert rec["calibration_forwards"] == 2
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = model.eval()(ids).logits, load(tmp_path / "s")(ids).logits
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), float((got - want).abs().max())


def test_the_scoring_forward_gathers_the_rotations_statistics_unchanged(tmp_path):
    """One forward for both: the scores with the rotation's taps equal the scores without them, the
    covariance gathered on the scoring forward equals the one of a forward of its own, and the
    gains over a reservoir that holds every token equal those over every token (a second forward)."""
    from slicer.io.checkpoint import Checkpoint
    from slicer.importance.scoring import score_teacher
    from slicer.rotation.observe import observe
    from slicer.rotation.statistics import Gatherer, collect, collect_two_passes

    model = teacher(tmp_path / "t", "llama")
    calib, ids = calibration(tmp_path / "calib.safetensors")
    ckpt = Checkpoint.open(tmp_path / "t", role="teacher")
    sites = observe(ckpt, 64, calibration=calib).sites
    assert len(sites) == 5
    opts = dict(samples=24, seq_len=16, device="cpu")
    plain = score_teacher(ckpt, calib, **opts).scores
    gatherer = Gatherer(sites)
    fused = score_teacher(ckpt, calib, **opts, taps=gatherer.taps()).scores
    assert plain.vectors.keys() == fused.vectors.keys()
    assert all(torch.equal(plain.vectors[a], fused.vectors[a]) for a in plain.vectors)
    stats = gatherer.statistics(fused.metadata["calibration"], keep=32)
    alone = collect(ckpt, sites, calibration=calib, keep=32, **opts)
    assert torch.equal(stats.covariance, alone.covariance) and stats.tokens == alone.tokens == 24 * 16
    # the covariance from its definition: plain transformers, every norm input scaled to unit rms
    unit = [x / x.pow(2).mean(1, keepdim=True).sqrt() for x in norm_inputs(model, ids).values()]
    want = sum(x.T @ x for x in unit)
    assert torch.allclose(stats.covariance, want, rtol=1e-6, atol=1e-8)
    two = collect_two_passes(ckpt, sites, calibration=calib, keep=32, **opts)
    assert stats.sampled == two.sampled == 384 and stats.gains == alone.gains == two.gains  # 384 <= 512: every token
    assert len(set(stats.gains.values())) == len(sites)


def test_the_gains_reservoir_holds_a_uniform_sample_of_each_sites_rows():
    """A reservoir smaller than the rows seen holds exactly its budget of distinct rows, the same tokens at
    every site, drawn over all calls (not the first rows), whatever the calls' sizes."""
    from slicer.rotation.statistics import Gatherer

    rows = torch.arange(4000, dtype=torch.float32)[:, None] * torch.ones(1, 4)  # row i holds i
    g = Gatherer(["a", "b"], sample=100)
    for part in rows.split(700):
        g("a", part)
    for part in rows.split(333):
        g("b", part[None])  # [1, tokens, d], as a model hands a norm its input
    held = {s: sorted(int(v) for v in g.held(s)[:, 0]) for s in ("a", "b")}
    assert len(set(held["a"])) == 100 and held["a"] == held["b"]
    assert sum(v >= 2000 for v in held["a"]) > 30  # the later rows get their share
    small = Gatherer(["a"], sample=10_000)
    small("a", rows[:50])
    assert torch.equal(small.held("a"), rows[:50])
