"""First-order Taylor importance (``score_teacher(criterion="taylor")``, ``slicer score --criterion
taylor``): the streamed backward against the whole model's ``loss.backward()``, the students
written from its scores, and the scores file's metadata.

The reference is written from the definition, per axis and per tensor of a Llama, with no
slicer code: a member's score is, over every element of every tensor its axis binds (embedding
and head columns, norm gains, the readers' input columns and the writers' output rows), the sum
of |w * dL/dw| ("abs"), of (w * dL/dw)^2 ("squared"), or the absolute value of the sum of w * dL/dw
("signed"), L the mean
next-token cross-entropy transformers computes with ``labels=input_ids``; a kv head also gets its
query heads' sums, a group member the sums of its query head in every kv head.
"""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from safetensors.torch import load_file, save_file  # noqa: E402

import slicer  # noqa: E402
from slicer.cli import main  # noqa: E402
from consistency import check  # noqa: E402
from families import FAMILIES, VOCAB, build  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("taylor")


@pytest.fixture(scope="module")
def calibration(root):
    path = root / "ids.safetensors"
    save_file({"input_ids": torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(0))}, str(path))
    return path


def _teacher(root, tied: bool):
    """The tiny random Llama of tests/families.py (4 layers, 8 query heads on 4 kv heads), its
    head tied to the embedding or not."""
    teacher = root / f"llama-{'tied' if tied else 'untied'}"
    if not (teacher / "config.json").exists():
        family = FAMILIES["llama"]
        build(teacher, family, coded=False, config=family.config | {"tie_word_embeddings": tied})
    return teacher


def _reference(teacher, ids, reduction):
    """Axis -> scores of a Llama, from its whole model in memory and one ``loss.backward()``."""
    model = transformers.LlamaForCausalLM.from_pretrained(str(teacher), dtype=torch.float32).eval()
    model(ids, labels=ids).loss.backward()

    def wg(p):
        prod = (p.detach() * p.grad).double()
        return {"abs": prod.abs(), "squared": prod.pow(2), "signed": prod}[reduction]
    m, cfg = model.model, model.config
    hd, heads, kv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    hidden = wg(m.embed_tokens.weight).sum(0) + wg(m.norm.weight)
    if not cfg.tie_word_embeddings:  # tied: one parameter, whose gradient already holds the head's
        hidden = hidden + wg(model.lm_head.weight).sum(0)
    want = {}
    for i, block in enumerate(m.layers):
        attn, mlp = block.self_attn, block.mlp
        hidden = hidden + wg(block.input_layernorm.weight) + wg(block.post_attention_layernorm.weight)
        for reader in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            hidden = hidden + wg(reader.weight).sum(0)
        for writer in (attn.o_proj, mlp.down_proj):
            hidden = hidden + wg(writer.weight).sum(1)
        want[f"model.layers.{i}.mlp:ffn"] = (wg(mlp.gate_proj.weight).sum(1) + wg(mlp.up_proj.weight).sum(1)
                                             + wg(mlp.down_proj.weight).sum(0))
        q = (wg(attn.q_proj.weight).sum(1) + wg(attn.o_proj.weight).sum(0)).view(heads, hd).sum(1)  # head = kv*G + g
        own = (wg(attn.k_proj.weight).sum(1) + wg(attn.v_proj.weight).sum(1)).view(kv, hd).sum(1)
        want[f"model.layers.{i}.self_attn:kv-heads"] = own + q.view(kv, heads // kv).sum(1)
        want[f"model.layers.{i}.self_attn:group"] = q.view(kv, heads // kv).sum(0)
    want["hidden"] = hidden
    return {k: v.abs() if reduction == "signed" else v for k, v in want.items()}


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("reduction", ["abs", "squared", "signed"])
def test_streamed_taylor_scores_equal_the_whole_models_gradient_x_weight(root, calibration, reduction, tied):
    from slicer.importance.scoring import score_teacher

    teacher = _teacher(root, tied)
    got = score_teacher(teacher, calibration, criterion="taylor", taylor=reduction).scores.vectors
    want = _reference(teacher, load_file(str(calibration))["input_ids"], reduction)
    for name, w in want.items():
        assert torch.allclose(got[name].double(), w, rtol=1e-4, atol=1e-9), (name, got[name][:4], w[:4])
    assert "model.layers:layers" in got  # layers keep their block influence


def test_students_from_taylor_scores_keep_every_axis_consistent(root, calibration, tmp_path):
    """The axes issue's consistency checker on a coded teacher ranked by its random twin's Taylor
    scores (written by ``slicer score``, whose default criterion is Taylor, imported as another
    tool's would be)."""
    from slicer.io.checkpoint import Checkpoint
    from slicer.importance.scores import Scores, load, save, teacher_files

    family = FAMILIES["llama"]
    twin = _teacher(root, tied=False)
    written = root / "taylor.safetensors"
    assert main(["score", str(twin), "--calibration", str(calibration), "-o", str(written), "--quiet"]) == 0
    scores = load(written)
    assert scores.metadata["criterion"] == "taylor" and scores.metadata["taylor"] == "squared"
    assert scores.metadata["statistic"].startswith("first-order Taylor")
    coded = build(root / "llama-coded", family, coded=True)
    imported = tmp_path / "imported.safetensors"
    save(imported, Scores(scores.vectors, {"teacher": teacher_files(Checkpoint.open(coded))}))
    out = tmp_path / "out"
    slicer.shrink(str(coded), str(out), config_set=family.edits, method="importance", scores=str(imported),
                  layer_selection="importance")
    report = check(out, coded, family.spec)
    assert not report.problems, "\n".join(report.problems[:10])
    assert report.members["hidden"] == sorted(torch.topk(scores.vectors["hidden"], 32).indices.tolist())


def test_an_unknown_criterion_is_refused(root, calibration):
    from slicer.errors import SlicerError
    from slicer.importance.scoring import score_teacher

    with pytest.raises(SlicerError, match="unknown importance criterion 'hessian'"):
        score_teacher(root, calibration, criterion="hessian")
    with pytest.raises(SlicerError, match="unknown Taylor reduction 'cubed'"):
        score_teacher(_teacher(root, tied=False), calibration, criterion="taylor", taylor="cubed")
