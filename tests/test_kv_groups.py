"""Query heads chosen per kv head under importance (the nested ``q-heads = kv-heads * group`` axis).

Pure tests first (the axes core, expected members written out from the rule), then tiny GQA
Llama / Qwen3 teachers from transformers configs: with scores under which different kv heads
prefer different query heads, the student's q/o/k/v tensors equal the teacher's chosen heads
(torch.equal against a gather written here from the rule), and a teacher whose dropped heads
contribute nothing gives the student its very logits.
"""
from __future__ import annotations

import json

import pytest
import torch

from slicer import SlicerError
from slicer.axes import Axis, AxisTable, Chooser, Ranking, product
from slicer.axes.audit import audit


def nested_table(kv_s=2, group_s=2):
    """3 kv heads of 4 query heads each -> kv_s of group_s."""
    t = AxisTable()
    t.add(Axis("kv", "kv-heads", 3, kv_s))
    t.add(Axis("group", "group", 4, group_s))
    t.add(Axis("q", "q-heads", 12, kv_s * group_s, product("kv", "group"), nested=True))
    return t


# q scores: kv 0 prefers its heads 1, 3; kv 1 its heads 0, 2 (teacher 4, 6); kv 2 its heads 2, 3 (10, 11)
Q = [0, 5, 1, 4, 9, 0, 8, 1, 0, 1, 7, 6]
KV = [3, 1, 2]  # kv heads 0 and 2 kept
GROUP = [9, 6, 16, 11]  # sums over kv heads: the shared choice keeps offsets 2, 3 in every kv head


def test_a_ranking_of_the_query_heads_chooses_them_per_kept_kv_head():
    t = nested_table()
    chooser = Chooser("importance", ranking=Ranking({"kv": KV, "group": GROUP, "q": Q}))
    assert chooser.dim(t, product("q")).indices() == [1, 3, 10, 11]
    assert chooser.dim(t, product("q", 2)).indices() == [2, 3, 6, 7, 20, 21, 22, 23]
    assert chooser.dim(t, product("kv", 2)).indices() == [0, 1, 4, 5]
    assert chooser.leaf_keys["q"] == "importance:q:12->4" and "group" not in chooser.leaf_keys


def test_without_query_head_scores_the_group_is_shared_as_before():
    t = nested_table()
    chooser = Chooser("importance", ranking=Ranking({"kv": KV, "group": GROUP}))  # a scores file of before
    assert chooser.dim(t, product("q")).indices() == [2, 3, 10, 11]
    assert "q" not in chooser.leaf_keys and chooser.leaf_keys["group"] == "importance:group:4->2"


@pytest.mark.parametrize("method", ["uniform", "consecutive", "random"])
def test_formulas_compose_the_query_heads_whatever_the_nesting(method):
    nested, flat = nested_table(), AxisTable()
    flat.add(Axis("kv", "kv-heads", 3, 2))
    flat.add(Axis("group", "group", 4, 2))
    flat.add(Axis("q", "q-heads", 12, 4, product("kv", "group")))
    a, b = Chooser(method, seed=3), Chooser(method, seed=3)
    assert a.dim(nested, product("q", 2)) == b.dim(flat, product("q", 2))


def test_a_group_kept_whole_or_bound_beside_key_and_value_is_composed():
    chooser = Chooser("importance", ranking=Ranking({"kv": KV, "group": GROUP, "q": Q}))
    t = nested_table(group_s=4)  # nothing to choose within a kv head
    assert chooser.dim(t, product("q")).indices() == [0, 1, 2, 3, 8, 9, 10, 11] and chooser.owned["q"] is None
    t = nested_table()
    t.add(Axis("slots", "group-qkv", 6, 4, ((("group",), (1,), (1,)))))  # Falcon: [its queries, k, v] per kv head
    chooser = Chooser("importance", ranking=Ranking({"kv": KV, "group": GROUP, "q": Q}))
    assert chooser.dim(t, product("q")).indices() == [2, 3, 10, 11]


def test_a_nested_axis_must_be_made_of_two_axes():
    t = AxisTable()
    t.add(Axis("kv", "kv-heads", 3, 2))
    with pytest.raises(SlicerError, match="nested"):
        t.add(Axis("q", "q-heads", 6, 4, product("kv", 2), nested=True))


def _manifest(q_members):
    t = nested_table()
    sets = {"kv": {"t": 3, "s": 2, "indices": [0, 2]}, "q": {"t": 12, "s": 4, "indices": q_members},
            "rows": {"t": 24, "s": 8, "indices": [i * 2 + d for i in q_members for d in range(2)]}}
    axes = {name: {**ax.describe(), **({"index": name} if name in ("kv", "q") else {})} for name, ax in t.axes.items()}
    axes["dim"] = {"kind": "head-dim", "t": 2, "s": 2, "index": "dim"}
    sets["dim"] = {"t": 2, "s": 2, "indices": [0, 1]}
    tensors = {"o.weight": {"axes": ["q * dim"], "teacher_shape": [24], "shape": [8], "index": ["rows"]}}
    return {"axes": axes, "tensors": tensors}, (lambda key, n: sets[key]["indices"] if sets[key]["s"] == n else None)


def test_the_audit_checks_each_run_of_query_heads_against_its_kv_head():
    problems, checked = audit(*_manifest([1, 3, 10, 11]))
    assert problems == [] and checked == 1
    problems, _ = audit(*_manifest([1, 3, 5, 11]))  # query head 5 is kv head 1's, which is not kept
    assert any("q" in p and "kv-heads member 2" in p for p in problems), problems


# --------------------------------------------------------------------------- tiny GQA models

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from safetensors.torch import save_file  # noqa: E402

import slicer  # noqa: E402
from slicer.cli import main  # noqa: E402
from families import VOCAB  # noqa: E402

D = 8  # head_dim
CONFIGS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
}


def _teacher(folder, family, seed=0, live=None):
    """hidden 48, 2 layers, 12 query heads over 3 kv heads; ``live``: per layer, the query heads whose
    output reaches the residual (the others' o_proj columns are zero)."""
    cfg_class, arch = CONFIGS[family]
    cfg = getattr(transformers, cfg_class)(architectures=[arch], hidden_size=48, intermediate_size=48,
                                           num_hidden_layers=2, num_attention_heads=12, num_key_value_heads=3,
                                           head_dim=D, vocab_size=VOCAB, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5) if p.dim() > 1 else p.uniform_(0.5, 1.5)
        for layer, block in enumerate(model.model.layers):
            if live is not None:
                mask = torch.zeros(12, D)
                mask[live[layer]] = 1.0
                block.self_attn.o_proj.weight.mul_(mask.view(1, -1))
    model.save_pretrained(folder)
    return folder


def _scores(teacher, out, calibration, criterion="taylor", **override):
    from slicer.importance.scores import Scores, save
    from slicer.importance.scoring import score_teacher

    run = score_teacher(teacher, calibration, criterion=criterion, device="cpu")
    vectors = dict(run.scores.vectors)
    for k, v in override.items():
        if v is None:
            vectors.pop(k)
        else:
            vectors[k] = torch.tensor(v, dtype=torch.float32)
    save(out, Scores(vectors, run.scores.metadata))
    return out, vectors


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    path = tmp_path_factory.mktemp("kvg") / "ids.safetensors"
    save_file({"input_ids": torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))}, str(path))
    return path


def _top(values, candidates, s):
    return sorted(sorted(candidates, key=lambda i: (-float(values[i]), i))[:s])


def _members(entry):
    """An index set of the manifest: explicit, or start and step."""
    return entry["indices"] if "indices" in entry else list(range(entry["start"], entry["start"] + entry["step"] * entry["s"],
                                                                   entry["step"]))


def _load(folder):
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("per_kv, criterion", [(True, "taylor"), (False, "taylor"), (False, "activation")])
def test_the_student_keeps_each_kept_kv_heads_own_query_heads(tmp_path, calibration, family, per_kv, criterion):
    """Taylor scores with query-head scores: per kv head; without them (an old file) or by the activation
    criterion (a head's output norm, measured worse per kv head): one group per block."""
    teacher = _teacher(tmp_path / "t", family)
    A = "model.layers.{}.self_attn"
    crafted = {f"{A.format(i)}:q-heads": Q if criterion == "activation" or per_kv else None for i in range(2)}
    crafted |= {f"{A.format(i)}:kv-heads": KV for i in range(2)} | {f"{A.format(i)}:group": GROUP for i in range(2)}
    scores, vectors = _scores(teacher, tmp_path / "s.safetensors", calibration, criterion, **crafted)
    out = tmp_path / "out"
    slicer.shrink(str(teacher), str(out), config_set=dict(hidden_size=24, num_attention_heads=4, num_key_value_heads=2),
                  method="importance", scores=str(scores))
    # the rule, written out: kv heads by their scores, then per kept kv head its best 2 query heads
    hidden = _top(vectors["hidden"], range(48), 24)
    kv = _top(KV, range(3), 2)
    heads = [h for k in kv for h in _top(Q, range(4 * k, 4 * k + 4), 2)] if per_kv else \
        [4 * k + g for k in kv for g in _top(GROUP, range(4), 2)]
    assert heads == ([1, 3, 10, 11] if per_kv else [2, 3, 10, 11])
    T, S = _load(teacher), _load(out)
    for i in range(2):
        p = f"model.layers.{i}.self_attn."
        q = T[p + "q_proj.weight"].view(12, D, 48)[heads].reshape(-1, 48)[:, hidden]
        o = T[p + "o_proj.weight"][hidden].view(24, 12, D)[:, heads].reshape(24, -1)
        assert torch.equal(S[p + "q_proj.weight"], q)
        assert torch.equal(S[p + "o_proj.weight"], o)
        for w in ("k_proj", "v_proj"):
            assert torch.equal(S[p + w + ".weight"], T[p + w + ".weight"].view(3, D, 48)[kv].reshape(-1, 48)[:, hidden])
    manifest = json.loads((out / "slicer_manifest.json").read_text())
    ax = manifest["axes"][A.format(0) + ":q-heads"]
    assert ax["nested"] is True and (ax.get("index") is not None) == per_kv
    report = slicer.verify(str(out), teacher=str(teacher))
    assert report.ok and report.dimensions_audited > 0, report


def test_a_teacher_whose_dropped_heads_add_nothing_gives_the_student_its_logits(tmp_path, calibration):
    """Query heads 0, 2 of kv head 0 and 5, 6 of kv head 1 reach the residual (kv head 2's none): Taylor
    scores (the default, on the calibration) keep them; one group shared by both kv heads could not."""
    live = {0: [0, 2, 5, 6], 1: [1, 3, 4, 7]}
    teacher = _teacher(tmp_path / "t", "llama", live=live)
    scores = tmp_path / "s.safetensors"
    assert main(["score", str(teacher), "--calibration", str(calibration), "-o", str(scores), "--quiet"]) == 0
    out = tmp_path / "out"
    slicer.shrink(str(teacher), str(out), config_set=dict(num_attention_heads=4, num_key_value_heads=2),
                  method="importance", scores=str(scores))
    manifest = json.loads((out / "slicer_manifest.json").read_text())
    for i in range(2):
        key = manifest["axes"][f"model.layers.{i}.self_attn:q-heads"]["index"]
        assert _members(manifest["index_sets"][key]) == live[i]
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = transformers.AutoModelForCausalLM.from_pretrained(str(teacher)).eval()(ids).logits
        got = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_rotated_student_keeps_the_query_heads_of_each_kv_head_too(tmp_path, calibration):
    """--hidden rotate + importance with a Taylor scores file: the query heads per kv head, and verify checks
    every tensor against the rotated teacher with those heads. Scored on the fly (the activation criterion
    of a rotated student): one group per block."""
    from slicer.rotation.shrink import shrink_rotated

    teacher = _teacher(tmp_path / "t", "llama")
    scores = tmp_path / "s.safetensors"
    assert main(["score", str(teacher), "--calibration", str(calibration), "-o", str(scores), "--quiet"]) == 0
    for how in ("file", "on the fly"):
        out = tmp_path / how
        # a scores file and --calibration together: the file ranks, the calibration feeds the rotation
        given = {"scores": str(scores)} if how == "file" else {}
        shrink_rotated(teacher, out, config_set=dict(hidden_size=24, num_attention_heads=4, num_key_value_heads=2),
                       method="importance", calibration=str(calibration), samples=2, seq_len=12, device="cpu",
                       save_rotation=True, **given)
        manifest = json.loads((out / "slicer_manifest.json").read_text())
        assert manifest["rotation"]["calibration"]["source"] == str(calibration)
        for i in range(2):
            a = f"model.layers.{i}.self_attn"
            rows = manifest["tensors"][a + ".q_proj.weight"]["index"][0]
            if how == "on the fly":
                assert "index" not in manifest["axes"][a + ":q-heads"] and f"importance:{a}:group:4->2" in rows
                continue
            heads = _members(manifest["index_sets"][manifest["axes"][a + ":q-heads"]["index"]])
            kv = _members(manifest["index_sets"][manifest["axes"][a + ":kv-heads"]["index"]])
            assert [h // 4 for h in heads] == [k for k in kv for _ in range(2)]
            assert rows.startswith(f"[importance:{a}:q-heads:12->4 ")
        assert main(["verify", str(out), "--teacher", str(teacher)]) == 0
