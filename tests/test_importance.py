"""Importance selection (slicer.importance): the streamed forward, scores, planted importance,
consistency under --method importance, and bad input.

Teachers are the tiny transformers families of tests/families.py (plus a tiny Qwen3-MoE);
calibration is token ids in a .safetensors file, or text through a tiny word-level
tokenizer written into the teacher's folder.
"""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from safetensors.torch import save_file  # noqa: E402

import slicer  # noqa: E402
from slicer.cli import main  # noqa: E402
from consistency import Spec, check  # noqa: E402
from families import FAMILIES, LLAMA_EDITS, VOCAB, Family, build, example_inputs  # noqa: E402

QWEN3_MOE = Family("Qwen3MoeConfig", dict(architectures=["Qwen3MoeForCausalLM"], hidden_size=32, intermediate_size=64,
                                          moe_intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, head_dim=8, num_experts=8, num_experts_per_tok=2,
                                          vocab_size=VOCAB, tie_word_embeddings=False), {}, Spec([], {}))
STREAMED = {"llama": FAMILIES["llama"], "qwen3_moe": QWEN3_MOE, "gpt2": FAMILIES["gpt2"], "bert": FAMILIES["bert"]}
WORDS = ["the", "a", "of", "and", "to", "in", "is", "was", "it", "on", "sea", "bread", "light", "river", "map", "snow"]


def _ids(path, rows=4, length=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    save_file({"input_ids": torch.randint(0, VOCAB, (rows, length), generator=gen)}, str(path))
    return path


def _tokenizer(folder):
    """A word-level tokenizer of VOCAB ids (unknown words -> [UNK]) saved into ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.save_pretrained(folder)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("importance")


@pytest.fixture(scope="module")
def llama(root):
    folder = build(root / "llama", FAMILIES["llama"], coded=False)
    _tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def calibration(root):
    return _ids(root / "ids.safetensors")


def _score(teacher, calib, out):
    """``slicer score`` with the activation criterion, whose statistics these tests check
    (the default, Taylor, is checked against its definition in tests/test_taylor.py)."""
    rc = main(["score", str(teacher), "--calibration", str(calib), "-o", str(out), "--criterion", "activation", "--quiet"])
    assert rc == 0
    return out


# --------------------------------------------------------------------------- the streamed forward

@pytest.mark.parametrize("fam", sorted(STREAMED))
def test_streamed_forward_gives_the_whole_models_hidden_states(root, fam):
    from slicer.io.checkpoint import Checkpoint
    from slicer.importance.forward import CheckpointWeights, empty_model, stream

    family = STREAMED[fam]
    teacher = build(root / f"stream-{fam}", family, coded=False)
    inputs = example_inputs(family, family.config)
    whole = getattr(transformers, family.config["architectures"][0]).from_pretrained(teacher).eval()
    with torch.no_grad():
        want = whole(**inputs, output_hidden_states=True).hidden_states
    ckpt = Checkpoint.open(teacher)
    model = empty_model(ckpt.config_path())
    weights = CheckpointWeights(ckpt, model)
    stream(model, weights, torch.device("cpu"))
    assert all(p.device.type == "meta" for p in model.parameters()), "weights stay off the model between modules"
    with torch.no_grad():
        got = model(**inputs, output_hidden_states=True).hidden_states
    weights.close()
    assert len(got) == len(want) == family.config.get("num_hidden_layers", family.config.get("n_layer")) + 1
    for layer, (a, b) in enumerate(zip(want, got)):
        assert a.dtype == b.dtype == torch.float32
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), f"hidden states {layer}: {(a - b).abs().max()}"


# --------------------------------------------------------------------------- scores

def test_scores_are_deterministic_for_a_calibration(llama, root):
    text = root / "calib.txt"
    text.write_text("the sea and the light\n\nthe river was on the map in the snow\n\na bread of light\n" * 4)
    first = _score(llama, text, root / "s1.safetensors")
    second = _score(llama, text, root / "s2.safetensors")
    a, b = read_folder_scores(first), read_folder_scores(second)
    assert sorted(a) == sorted(b) and len(a) > 10
    for name in a:
        assert torch.equal(a[name], b[name]), name
    meta = slicer.importance.load(first).metadata
    assert meta["calibration"]["source"] == str(text)
    assert meta["calibration"]["shape"] == {"input_ids": [4, 16]} or meta["calibration"]["shape"]["input_ids"][0] >= 1


def read_folder_scores(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_scores_name_every_axis_of_the_plan(llama, calibration, root):
    scores = read_folder_scores(_score(llama, calibration, root / "names.safetensors"))
    assert {"hidden", "model.layers:layers", "model.layers.0.mlp:ffn", "model.layers.0.self_attn:kv-heads",
            "model.layers.0.self_attn:group", "model.layers.3.self_attn:q-heads"} <= set(scores)
    assert scores["hidden"].shape == (64,) and scores["model.layers.2.mlp:ffn"].shape == (128,)
    assert scores["model.layers:layers"].shape == (4,)
    # a kv head's score is the sum of its query heads' (kv-heads * group, row-major)
    q = scores["model.layers.1.self_attn:q-heads"].view(4, 2)
    assert torch.allclose(scores["model.layers.1.self_attn:kv-heads"], q.sum(1))
    assert torch.allclose(scores["model.layers.1.self_attn:group"], q.sum(0))


def test_importance_index_sets_are_sorted_and_of_the_students_size(llama, calibration, root, tmp_path):
    scores = _score(llama, calibration, root / "sorted.safetensors")
    out = tmp_path / "out"
    slicer.shrink(str(llama), str(out), config_set=LLAMA_EDITS, method="importance", scores=str(scores),
                  layer_selection="importance")
    manifest = json.loads((out / "slicer_manifest.json").read_text())
    ranked = {k: v for k, v in manifest["index_sets"].items() if k.startswith("importance:")}
    assert ranked, "no importance index set"
    for key, entry in ranked.items():
        idx = entry["indices"] if "indices" in entry else list(range(entry["start"], entry["start"] + entry["step"] * entry["s"], entry["step"]))
        assert idx == sorted(set(idx)) and len(idx) == entry["s"] and all(0 <= i < entry["t"] for i in idx), key
    assert manifest["options"]["method"] == "importance"
    assert manifest["scores"]["sha256"] == slicer.importance.scores.sha256_file(scores)
    assert len(manifest["layer_maps"]["model.layers"]) == 2
    for name, ax in manifest["axes"].items():
        if "index" in ax and ax["t"] != ax["s"] and ax["kind"] != "positions":
            assert ax["index"] == f"importance:{name}:{ax['t']}->{ax['s']}"


@pytest.mark.parametrize("hidden_from", ["residual", "weighted"])
def test_importance_keeps_every_axis_consistent_in_every_tensor(root, llama, calibration, tmp_path, hidden_from):
    """The consistency checker of the axes issue, with method importance, on a coded teacher
    ranked by the scores of its random twin (imported as another tool's ranking would be), for
    each hidden statistic: the coded values prove every kept member sits at the same place in
    every tensor."""
    from slicer.io.checkpoint import Checkpoint
    from slicer.importance.scores import Scores, save, teacher_files
    from slicer.importance.scoring import score_teacher

    family = FAMILIES["llama"]
    coded = build(root / "llama-coded", family, coded=True)
    if hidden_from == "residual":  # the default, through the CLI
        vectors = read_folder_scores(_score(llama, calibration, root / "twin.safetensors"))
    else:
        vectors = score_teacher(llama, calibration, hidden_from=hidden_from, criterion="activation").scores.vectors
    imported = tmp_path / "imported.safetensors"
    save(imported, Scores(vectors, {"teacher": teacher_files(Checkpoint.open(coded))}))
    out = tmp_path / "out"
    slicer.shrink(str(coded), str(out), config_set=family.edits, method="importance", scores=str(imported),
                  layer_selection="importance")
    report = check(out, coded, family.spec)
    assert not report.problems, "\n".join(report.problems[:10])
    assert report.members["hidden"] == sorted(torch.topk(vectors["hidden"], 32).indices.tolist())


def test_a_vision_teacher_scores_from_pixel_values(root, tmp_path):
    teacher = build(root / "vit", FAMILIES["vit"], coded=False)
    pixels = tmp_path / "pixels.safetensors"
    save_file({"pixel_values": torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))}, str(pixels))
    scores = read_folder_scores(_score(teacher, pixels, tmp_path / "vit.safetensors"))
    assert {"hidden", "vit.encoder.layer.0:ffn", "vit.encoder.layer.3.attention:kv-heads",
            "vit.encoder.layer:layers"} <= set(scores)
    assert all(torch.isfinite(v).all() and (v >= 0).all() for v in scores.values())


def test_importance_keeps_an_moe_student_consistent(root, calibration, tmp_path):
    """The same check on Qwen3-MoE (tests/families_moe.py): experts, their FFN axis, heads."""
    from families_moe import FAMILIES as MOE
    from slicer.io.checkpoint import Checkpoint
    from slicer.importance.scores import Scores, save, teacher_files

    family = MOE["qwen3_moe"]
    twin = build(root / "qwen3-moe", family, coded=False)
    coded = build(root / "qwen3-moe-coded", family, coded=True)
    vectors = read_folder_scores(_score(twin, calibration, root / "qwen3-moe.safetensors"))
    assert {"model.layers.0.mlp:experts", "model.layers.0.mlp.experts:ffn"} <= set(vectors)
    imported = tmp_path / "imported.safetensors"
    save(imported, Scores(vectors, {"teacher": teacher_files(Checkpoint.open(coded))}))
    out = tmp_path / "out"
    slicer.shrink(str(coded), str(out), config_set=family.edits, method="importance", scores=str(imported),
                  layer_selection="importance")
    report = check(out, coded, family.spec)
    assert not report.problems, "\n".join(report.problems[:10])


# --------------------------------------------------------------------------- planted importance

HIDDEN = [3, 4, 8, 11, 15, 19, 20, 23, 26, 30, 33, 34, 38, 41, 42, 45, 47, 50, 51, 53, 55, 57, 58, 59, 60, 61, 62, 63,
          0, 1, 5, 9]  # 32 of 64, not the even channels uniform keeps
FFN = {layer: sorted({(7 * k + 3 * layer) % 128 for k in range(48)}) for layer in range(4)}  # 48 of 128 per layer
KV = {0: [1, 3], 1: [0, 3], 2: [1, 2], 3: [2, 3]}  # 2 of 4 kv heads per layer
LAYERS = [1, 3]  # 2 of 4


def _planted_llama(folder):
    """A Llama whose planted channels / neurons / kv heads / layers carry the activations: the
    residual stream and the norms live on the planted hidden channels, the other neurons and
    kv heads get near-zero projections, the other layers add nothing to the residual."""
    cfg = dict(FAMILIES["llama"].config)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    small = 1e-3
    with torch.no_grad():
        h = torch.full((64,), small)
        h[HIDDEN] = 1.0
        for layer, block in enumerate(model.model.layers):
            block.input_layernorm.weight.copy_(h)
            block.post_attention_layernorm.weight.copy_(h)
            mlp, attn = block.mlp, block.self_attn
            for proj in (mlp.gate_proj, mlp.up_proj):
                proj.weight.normal_(0, 0.5)
                mask = torch.full((128, 1), small)
                mask[FFN[layer]] = 1.0
                proj.weight.mul_(mask)
            attn.v_proj.weight.normal_(0, 0.5)
            mask = torch.full((4, 8, 1), small)  # kv heads x head dim
            mask[KV[layer]] = 1.0
            attn.v_proj.weight.mul_(mask.view(32, 1))
            scale = 1.0 if layer in LAYERS else 0.0  # a layer that adds nothing has block influence 0
            # what a layer adds to the residual stream lands on the planted channels only
            attn.o_proj.weight.normal_(0, 0.5).mul_(scale * h.unsqueeze(1))
            mlp.down_proj.weight.normal_(0, 0.5).mul_(scale * h.unsqueeze(1))
        model.model.embed_tokens.weight.mul_(h)
        model.model.norm.weight.copy_(h)
    model.save_pretrained(folder)
    return folder


def test_importance_keeps_exactly_the_planted_members(root, calibration, tmp_path):
    teacher = _planted_llama(root / "planted")
    scores = _score(teacher, calibration, root / "planted.safetensors")
    kept = {}
    for method in ("importance", "uniform"):
        out = tmp_path / method
        extra = dict(scores=str(scores), layer_selection="importance") if method == "importance" else {}
        slicer.shrink(str(teacher), str(out), config_set=LLAMA_EDITS | {"intermediate_size": 48}, method=method, **extra)
        m = json.loads((out / "slicer_manifest.json").read_text())

        def members(axis):
            entry = m["index_sets"][m["axes"][axis]["index"]]
            return entry.get("indices") or list(range(entry["start"], entry["start"] + entry["step"] * entry["s"], entry["step"]))

        kept[method] = {"hidden": members("hidden"), "layers": m["layer_maps"].get("model.layers")}
        layers = kept[method]["layers"] or [0, 1]
        for j, t in enumerate(layers):
            kept[method][f"ffn{j}"] = members(f"model.layers.{t}.mlp:ffn")
            kept[method][f"kv{j}"] = members(f"model.layers.{t}.self_attn:kv-heads")
    got = kept["importance"]
    assert got["hidden"] == sorted(HIDDEN)
    assert got["layers"] == LAYERS
    for j, t in enumerate(LAYERS):
        assert got[f"ffn{j}"] == FFN[t]
        assert got[f"kv{j}"] == KV[t]
    uniform = kept["uniform"]
    assert uniform["hidden"] != sorted(HIDDEN) and uniform["ffn0"] != FFN[0]


def test_taylor_finds_the_planted_members_of_the_layers_that_reach_the_loss(root, calibration):
    """The default criterion (Taylor) on the planted Llama: the planted hidden channels, and in the
    layers that add to the residual stream the planted FFN neurons and kv heads. (The other layers'
    members change nothing downstream, so their gradients, and their Taylor scores, are zero.)"""
    from slicer.importance.scoring import score_teacher

    teacher = root / "planted"
    if not (teacher / "config.json").exists():
        _planted_llama(teacher)
    vectors = score_teacher(teacher, calibration).scores.vectors
    assert sorted(torch.topk(vectors["hidden"], 32).indices.tolist()) == sorted(HIDDEN)
    for t in LAYERS:
        assert sorted(torch.topk(vectors[f"model.layers.{t}.mlp:ffn"], 48).indices.tolist()) == FFN[t]
        assert sorted(torch.topk(vectors[f"model.layers.{t}.self_attn:kv-heads"], 2).indices.tolist()) == KV[t]
    for t in set(range(4)) - set(LAYERS):
        assert float(vectors[f"model.layers.{t}.mlp:ffn"].abs().max()) < 1e-12


def test_hidden_channels_scored_by_linear_inputs_find_the_planted_ones_too(root, calibration):
    from slicer.importance.scoring import score_teacher

    teacher = root / "planted"  # written by the test above, or now
    if not (teacher / "config.json").exists():
        _planted_llama(teacher)
    for hidden_from in ("inputs", "residual", "weighted"):
        hidden = score_teacher(teacher, calibration, hidden_from=hidden_from, criterion="activation").scores.vectors["hidden"]
        assert sorted(torch.topk(hidden, 32).indices.tolist()) == sorted(HIDDEN), hidden_from


def test_weighted_hidden_scores_are_wandas_norms_summed_over_every_reader(root, calibration):
    """hidden_from="weighted": a hidden channel's score is, summed over every linear that reads the
    hidden axis (q, k, v, gate, up of every layer), the norm of the weight's column times the L2
    norm of the channel's input over the calibration tokens (per token). Checked against that
    definition computed on the whole model in memory with plain forward hooks."""
    from safetensors.torch import load_file
    from slicer.importance.scoring import score_teacher

    teacher = root / "planted"
    if not (teacher / "config.json").exists():
        _planted_llama(teacher)
    got = score_teacher(teacher, calibration, hidden_from="weighted", criterion="activation").scores.vectors["hidden"]
    model = transformers.LlamaForCausalLM.from_pretrained(str(teacher), dtype=torch.float32).eval()
    ids = load_file(str(calibration))["input_ids"]
    want = torch.zeros(64, dtype=torch.float64)
    readers = [m for block in model.model.layers for m in (block.self_attn.q_proj, block.self_attn.k_proj,
               block.self_attn.v_proj, block.mlp.gate_proj, block.mlp.up_proj)]

    def add(module, args):
        nonlocal want
        x = args[0].reshape(-1, 64).double()
        want = want + module.weight.double().norm(dim=0) * (x.pow(2).sum(0) / ids.numel()).sqrt()
    handles = [m.register_forward_pre_hook(add) for m in readers]
    with torch.no_grad():
        model.model(ids)
    for h in handles:
        h.remove()
    assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-7), (got[:4], want[:4])
    assert sorted(torch.topk(got, 32).indices.tolist()) == sorted(HIDDEN)


def test_weighted_query_heads_are_scored_by_their_outputs_energy(root, calibration):
    """hidden_from="weighted": a query head's score is the L2 norm of its slice of the attention
    output projection's input over all calibration tokens (per token), not the mean of per-token
    norms; checked against that definition on the model in memory."""
    from safetensors.torch import load_file
    from slicer.importance.scoring import score_teacher

    teacher = root / "planted"
    if not (teacher / "config.json").exists():
        _planted_llama(teacher)
    vectors = score_teacher(teacher, calibration, hidden_from="weighted", criterion="activation").scores.vectors
    model = transformers.LlamaForCausalLM.from_pretrained(str(teacher), dtype=torch.float32).eval()
    ids = load_file(str(calibration))["input_ids"]
    seen = {}
    handles = [block.self_attn.o_proj.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0]))
               for i, block in enumerate(model.model.layers)]
    with torch.no_grad():
        model.model(ids)
    for h in handles:
        h.remove()
    heads = model.config.num_attention_heads
    for i, x in seen.items():
        want = (x.reshape(-1, heads, x.shape[-1] // heads).double().pow(2).sum((0, 2)) / ids.numel()).sqrt()
        got = vectors[f"model.layers.{i}.self_attn:q-heads"].double()
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-9), (i, got, want)


def test_importance_keeps_the_planted_experts(root, calibration, tmp_path):
    """REAP scores: experts whose outputs are near zero rank last, whatever the router does; the
    student keeps exactly the planted ones (the experts axis of slicer/bindings/moe.py)."""
    model = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(**QWEN3_MOE.config))
    planted = {0: [1, 4, 6], 1: [0, 2, 7]}
    with torch.no_grad():
        for layer, block in enumerate(model.model.layers):
            experts = block.mlp.experts
            experts.gate_up_proj.normal_(0, 0.5)
            experts.down_proj.normal_(0, 0.5)
            mask = torch.full((8, 1, 1), 1e-3)
            mask[planted[layer]] = 1.0
            experts.down_proj.mul_(mask)
            block.mlp.gate.weight.normal_(0, 0.02)  # near-uniform routing: every expert gets tokens
    teacher = root / "planted-moe"
    model.save_pretrained(teacher)
    path = _score(teacher, calibration, root / "planted-moe.safetensors")
    scores = read_folder_scores(path)
    for layer, want in planted.items():
        got = scores[f"model.layers.{layer}.mlp:experts"]
        assert sorted(torch.topk(got, 3).indices.tolist()) == want, got
    assert {"model.layers.0.mlp.experts:ffn", "model.layers.1.mlp.experts:ffn"} <= set(scores)  # inside the experts
    out = tmp_path / "out"
    slicer.shrink(str(teacher), str(out), config_set={"num_experts": 3}, method="importance", scores=str(path))
    m = json.loads((out / "slicer_manifest.json").read_text())
    for layer, want in planted.items():
        entry = m["index_sets"][m["axes"][f"model.layers.{layer}.mlp:experts"]["index"]]
        assert entry.get("indices") == want, entry


# --------------------------------------------------------------------------- bad input

def _fails(capsys, argv, *needles):
    capsys.readouterr()  # what building the teachers printed
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("slicer: error: "), err
    assert "Traceback" not in err[0]
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def test_a_scores_file_of_another_teacher_is_refused(root, llama, calibration, capsys, tmp_path):
    other = build(root / "llama-other", FAMILIES["llama"], coded=False, seed=1)
    scores = _score(other, calibration, root / "other.safetensors")
    argv = ["shrink", str(llama), str(tmp_path / "out"), "--method", "importance", "--scores", str(scores)]
    argv += [f"--set={k}={v}" for k, v in LLAMA_EDITS.items()]
    _fails(capsys, argv, "another teacher", str(scores))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, needle", [(b"", "empty"), (b"  \n\n ", "empty"), (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "not text"),
                                             (b"\xff\xfe\xfa caf\xe9", "not UTF-8")])
def test_an_empty_or_binary_calibration_file_is_refused(llama, tmp_path, capsys, content, needle):
    bad = tmp_path / "calib.txt"
    bad.write_bytes(content)
    out = tmp_path / "s.safetensors"
    _fails(capsys, ["score", str(llama), "--calibration", str(bad), "-o", str(out)], needle, str(bad))
    assert not out.exists()


def test_a_jsonl_line_that_is_not_json_is_refused(llama, tmp_path, capsys):
    bad = tmp_path / "calib.jsonl"
    bad.write_text('{"text": "the sea"}\nnot json\n')
    _fails(capsys, ["score", str(llama), "--calibration", str(bad), "-o", str(tmp_path / "s.safetensors")], "line 2")


def test_a_teacher_without_a_tokenizer_is_refused(root, tmp_path, capsys):
    teacher = build(root / "no-tokenizer", FAMILIES["llama"], coded=False)
    text = tmp_path / "calib.txt"
    text.write_text("the sea and the light")
    out = tmp_path / "s.safetensors"
    _fails(capsys, ["score", str(teacher), "--calibration", str(text), "-o", str(out)], "no tokenizer", str(teacher))
    assert not out.exists()


def test_importance_without_a_config_is_refused(ckpts, tmp_path, capsys):
    """A template without configs is selected flat: its dimensions are no axes to rank."""
    from slicer.io.checkpoint import Checkpoint
    from slicer.importance.scores import Scores, save, teacher_files

    teacher, _ = ckpts.teacher("llama")
    template, _ = ckpts.template("llama")
    scores = tmp_path / "scores.safetensors"
    save(scores, Scores({"hidden": torch.ones(8)}, {"teacher": teacher_files(Checkpoint.open(teacher))}))
    _fails(capsys, ["shrink", str(teacher), str(tmp_path / "out"), "--template", str(template), "--method", "importance",
                    "--scores", str(scores)], "selected flat", "--set")
    assert not (tmp_path / "out").exists()


def test_scores_without_importance_are_refused(llama, calibration, tmp_path, capsys):
    argv = ["plan", str(llama), "--calibration", str(calibration)] + [f"--set={k}={v}" for k, v in LLAMA_EDITS.items()]
    _fails(capsys, argv, "--method importance")


def test_layer_importance_keeps_the_top_layers_of_each_kind_in_order():
    from slicer.plan.layers import LayerMapper

    kinds = ["dense", "moe"] * 4  # 8 teacher layers: MoE every other layer
    teacher = [f"model.layers.{i}.w" for i in range(8)]
    student = [f"model.layers.{j}.w" for j in range(4)]
    scores = [0.1, 0.9, 0.8, 0.2, 0.7, 0.6, 0.3, 0.4]  # dense: 0, 2, 4, 6; moe: 1, 3, 5, 7
    mapper = LayerMapper(teacher, student, "importance", kinds={"model.layers": (kinds, ["dense", "moe"] * 2)},
                         layer_scores={"model.layers": scores})
    assert [mapper.teacher_name(n) for n in student] == [f"model.layers.{i}.w" for i in (2, 1, 4, 5)]
    plain = LayerMapper(teacher, student, "importance", layer_scores={"model.layers": scores})
    assert [plain.teacher_name(n) for n in student] == [f"model.layers.{i}.w" for i in (1, 2, 4, 5)]


def test_importance_asked_to_shrink_head_dim_says_what_to_do(tmp_path, capsys):
    """Scores rank whole heads, never the dimensions inside one: a student whose head_dim shrinks is refused in
    one line that names the way out."""
    from test_rotation import calibration, teacher

    teacher(tmp_path / "t", "llama")
    calib, _ = calibration(tmp_path / "calib.safetensors")
    capsys.readouterr()  # the teacher's own saving output
    code = main(["shrink", str(tmp_path / "t"), str(tmp_path / "s"), "--set", "head_dim=4", "--method", "importance",
                 "--calibration", str(calib), "--samples", "24", "--seq-len", "16", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and ("(8 -> 4 head-dim" in err[0] or "(4 -> 2 rotary-pairs" in err[0]), err
    assert "keep the teacher's head_dim" in err[0] and not (tmp_path / "s").exists()
