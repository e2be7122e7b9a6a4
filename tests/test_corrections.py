"""--correct: refits fed the student's own inputs (slicer.corrections), against their definition.

- ``ridge`` is the argmin of ``||X W^T - Y||^2 + lam ||W - W0||^2`` (checked against the stacked
  least-squares problem that defines it);
- on a tiny Llama with biases, the refitted layer-0 o_proj (a writer) and q_proj (a reader)
  equal the ridge solution computed here from plain transformers forwards of the unrefitted
  student and the teacher (the student's inputs, the teacher's outputs: whole for a writer,
  in the student's hidden basis; the kept heads' rows for a reader);
- the members kept are unchanged (index sets, axes, every tensor not refitted bit for bit), a
  very large alpha gives back the written weights, and a student whose inputs are the
  teacher's (full width, rotated) is reproduced by its refit;
- verify skips the refitted tensors' values and checks the rest; a remote teacher is refused.
"""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from safetensors.torch import load_file  # noqa: E402
from test_rotation import calibration, load, teacher  # noqa: E402

from slicer import api  # noqa: E402
from slicer.cli import main  # noqa: E402
from slicer.corrections.refit import ridge  # noqa: E402
from slicer.verify import verify  # noqa: E402

CUT = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}


def stacked(x, y, w0, alpha):
    """The ridge problem as one least-squares system: [X; sqrt(lam) I] W^T = [Y; sqrt(lam) W0^T]."""
    n = x.shape[1]
    lam = alpha * float((x * x).sum()) / n
    a = torch.cat([x, lam ** 0.5 * torch.eye(n, dtype=x.dtype)])
    b = torch.cat([y, lam ** 0.5 * w0.T])
    return torch.linalg.lstsq(a, b).solution.T


def test_ridge_is_the_argmin_of_its_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y = torch.randn(40, 3, generator=g, dtype=torch.float64)
    w0 = torch.randn(3, 6, generator=g, dtype=torch.float64)
    for alpha in (0.0, 0.1, 3.0):
        got = ridge(x.T @ x, x.T @ y, w0, alpha)
        assert torch.allclose(got, stacked(x, y, w0, alpha), atol=1e-10)
    assert not torch.allclose(ridge(x.T @ x, x.T @ y, w0, 0.1), ridge(x.T @ x, x.T @ y, w0, 0.0))
    assert torch.allclose(ridge(x.T @ x, x.T @ y, w0, 1e12), w0, atol=1e-8)  # lam -> large: W0


def inputs_and_outputs(model, ids, module: str):
    """(input rows, output rows) of one module over a plain transformers forward."""
    got = {}
    handle = model.get_submodule(module).register_forward_hook(
        lambda m, a, out: got.update(x=a[0].reshape(-1, a[0].shape[-1]).double(),
                                     y=out.reshape(-1, out.shape[-1]).double()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    return got["x"], got["y"]


def indices(manifest: dict, key: str) -> list[int]:
    entry = manifest["index_sets"][key]
    return entry["indices"] if "indices" in entry else list(range(entry["start"], entry["start"] + entry["step"] *
                                                                   entry["s"], entry["step"]))


def with_ones(x):
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)


@pytest.mark.parametrize("which,module", [("writers", "model.layers.0.self_attn.o_proj"),
                                          ("readers", "model.layers.0.self_attn.q_proj")])
def test_a_refit_is_the_ridge_solution_on_the_students_own_inputs(tmp_path, monkeypatch, which, module):
    import slicer.corrections.refit as refit

    monkeypatch.setattr(refit, "_ROWS", 5)  # output rows in slabs of 5 (a head's vocabulary is solved so)
    t = teacher(tmp_path / "t", "llama-biases")
    calib, ids = calibration(tmp_path / "calib.safetensors")
    kw = dict(config_set=CUT, method="importance", attention="heads", calibration=calib, samples=24, seq_len=16,
              device="cpu")
    api.shrink(tmp_path / "t", tmp_path / "plain", **kw)
    api.shrink(tmp_path / "t", tmp_path / "fit", correct=which, correct_alpha=0.05, **kw)
    manifest = json.loads((tmp_path / "fit" / "slicer_manifest.json").read_text())
    plain = load(tmp_path / "plain")
    xs, _ = inputs_and_outputs(plain, ids, module)
    xt, yt = inputs_and_outputs(t, ids, module)
    rec = manifest["tensors"][module + ".weight"]
    # a writer: the teacher's whole output, on the student's hidden channels; a reader: the kept heads' rows
    y = yt[:, indices(manifest, rec["index"][0])]
    p = plain.get_submodule(module)
    w0 = torch.cat([p.weight.double(), p.bias.double()[:, None]], 1)
    want = stacked(with_ones(xs), y, w0, 0.05)
    got = load_file(str(tmp_path / "fit" / "model.safetensors"))
    assert torch.allclose(got[module + ".weight"].double(), want[:, :-1], rtol=1e-4, atol=1e-5)
    assert torch.allclose(got[module + ".bias"].double(), want[:, -1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got[module + ".weight"].double(), w0[:, :-1], rtol=1e-3, atol=1e-4)  # it moved
    fits = manifest["corrections"]["fits"][module]
    assert fits["relative_error_after"] < fits["relative_error_before"]


def test_a_bias_correction_moves_a_writers_bias_by_the_mean_it_misses(tmp_path):
    t = teacher(tmp_path / "t", "llama-biases")
    calib, ids = calibration(tmp_path / "calib.safetensors")
    kw = dict(config_set=CUT, method="importance", attention="heads", calibration=calib, samples=24, seq_len=16,
              device="cpu")
    api.shrink(tmp_path / "t", tmp_path / "plain", **kw)
    api.shrink(tmp_path / "t", tmp_path / "fit", correct="bias", **kw)
    manifest = json.loads((tmp_path / "fit" / "slicer_manifest.json").read_text())
    assert sorted(manifest["corrections"]["tensors"]) == sorted(
        f"model.layers.{i}.{m}.bias" for i in (0, 1) for m in ("self_attn.o_proj", "mlp.down_proj"))
    module = "model.layers.0.self_attn.o_proj"
    plain = load(tmp_path / "plain")
    _, ys = inputs_and_outputs(plain, ids, module)
    _, yt = inputs_and_outputs(t, ids, module)
    hidden = indices(manifest, manifest["tensors"][module + ".weight"]["index"][0])
    want = plain.get_submodule(module).bias.double() + (yt[:, hidden] - ys).mean(0)
    got = load_file(str(tmp_path / "fit" / "model.safetensors"))
    assert torch.allclose(got[module + ".bias"].double(), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(got[module + ".weight"], plain.get_submodule(module).weight)


def test_the_members_kept_are_unchanged_and_a_large_alpha_keeps_the_weights(tmp_path):
    teacher(tmp_path / "t", "llama")
    calib, _ = calibration(tmp_path / "calib.safetensors")
    kw = dict(config_set=CUT, method="importance", attention="heads", calibration=calib, samples=24, seq_len=16,
              device="cpu")
    api.shrink(tmp_path / "t", tmp_path / "plain", **kw)
    summary = api.shrink(tmp_path / "t", tmp_path / "fit", correct="writers,readers,lm_head", **kw)
    api.shrink(tmp_path / "t", tmp_path / "stiff", correct="writers,readers,lm_head", correct_alpha=1e9, **kw)
    plain, fit, stiff = (json.loads((tmp_path / f / "slicer_manifest.json").read_text())
                         for f in ("plain", "fit", "stiff"))
    for m in (fit, stiff):
        assert m["index_sets"] == plain["index_sets"] and m["axes"] == plain["axes"]
        assert {k: v["index"] for k, v in m["tensors"].items()} == {k: v["index"] for k, v in plain["tensors"].items()}
    refitted = set(fit["corrections"]["tensors"])
    assert refitted == set(summary.corrections["tensors"]) and "lm_head.weight" in refitted
    assert {"model.layers.1.mlp.down_proj.weight", "model.layers.1.self_attn.k_proj.weight"} <= refitted
    a, b, c = (load_file(str(tmp_path / f / "model.safetensors")) for f in ("plain", "fit", "stiff"))
    for name in a:
        assert b[name].shape == a[name].shape
        if name not in refitted:
            assert torch.equal(b[name], a[name]) and torch.equal(c[name], a[name]), name
        else:
            assert not torch.allclose(b[name], a[name], rtol=1e-3, atol=1e-4), name
            assert torch.allclose(c[name], a[name], rtol=1e-5, atol=1e-6), name
    report = verify(tmp_path / "fit", teacher=tmp_path / "t", full=True)
    assert report.ok and report.tensors_corrected == len(refitted), report.problems
    assert report.tensors_compared == len(a) - len(refitted)


def test_a_rotated_student_whose_inputs_are_the_teachers_is_reproduced(tmp_path):
    teacher(tmp_path / "t", "llama")
    calib, _ = calibration(tmp_path / "calib.safetensors")
    kw = dict(config_set={"hidden_size": 64}, hidden="rotate", calibration=calib, samples=24, seq_len=16,
              device="cpu")
    api.shrink(tmp_path / "t", tmp_path / "plain", **kw)
    api.shrink(tmp_path / "t", tmp_path / "fit", correct="writers,readers,lm_head", correct_alpha=1e-4, **kw)
    a, b = (load_file(str(tmp_path / f / "model.safetensors")) for f in ("plain", "fit"))
    assert len(json.loads((tmp_path / "fit" / "slicer_manifest.json").read_text())["corrections"]["tensors"]) == 15
    for name in a:
        assert torch.allclose(b[name], a[name], rtol=1e-3, atol=1e-4 * float(a[name].abs().max())), name


def test_with_layer_selection_each_student_layer_is_fitted_to_its_teacher_layer(tmp_path):
    teacher(tmp_path / "t", "llama", num_hidden_layers=4)
    calib, _ = calibration(tmp_path / "calib.safetensors")
    kw = dict(config_set={"num_hidden_layers": 2}, layer_selection="uniform", device="cpu")
    api.shrink(tmp_path / "t", tmp_path / "plain", **kw)
    api.shrink(tmp_path / "t", tmp_path / "fit", correct="writers", correct_alpha=1e-4, calibration=calib, samples=24,
               seq_len=16, **kw)
    layers = json.loads((tmp_path / "fit" / "slicer_manifest.json").read_text())["layer_maps"]["model.layers"]
    assert layers[0] == 0 and layers[1] != 1
    a, b = (load_file(str(tmp_path / f / "model.safetensors")) for f in ("plain", "fit"))
    # student layer 0 is teacher layer 0 on the teacher's own inputs: its refit gives back its weights; student
    # layer 1 reads what teacher layer 1 wrote in the teacher, which the student lacks: its writers move
    for m in ("self_attn.o_proj", "mlp.down_proj"):
        w = f"model.layers.0.{m}.weight"
        assert torch.allclose(b[w], a[w], rtol=1e-3, atol=1e-4 * float(a[w].abs().max())), w
        w = f"model.layers.1.{m}.weight"
        assert not torch.allclose(b[w], a[w], rtol=1e-2, atol=1e-3), w


def test_the_cli_refits_records_and_says_so(tmp_path, capsys):
    teacher(tmp_path / "t", "llama")
    calib, _ = calibration(tmp_path / "calib.safetensors")
    code = main(["shrink", str(tmp_path / "t"), str(tmp_path / "s"), "--set", "hidden_size=32", "--hidden", "rotate",
                 "--calibration", str(calib), "--samples", "24", "--seq-len", "16", "--device", "cpu",
                 "--correct", "writers,lm_head"])
    out = capsys.readouterr().out
    assert code == 0 and "corrected (writers,lm_head, alpha 0.1): 5 tensors refitted on 384 calibration tokens" in out
    record = json.loads((tmp_path / "s" / "slicer_manifest.json").read_text())["corrections"]
    assert record["which"] == ["writers", "lm_head"] and record["alpha"] == 0.1 and record["peak_anon_bytes"] > 0
    assert main(["verify", str(tmp_path / "s")]) == 0  # the shards' new sha256 are the manifest's
    from slicer.io.writer import proven_files  # and a later --overwrite knows them as slicer's own

    manifest = json.loads((tmp_path / "s" / "slicer_manifest.json").read_text())
    assert {s["name"] for s in manifest["shards"]} <= proven_files(tmp_path / "s", manifest)


def test_a_remote_teacher_is_refused_with_one_line(tmp_path, capsys):
    code = main(["shrink", "hf://org/model", str(tmp_path / "s"), "--set", "hidden_size=32", "--correct", "writers"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--correct" in err[0] and "local files" in err[0], err
    assert not (tmp_path / "s").exists()
    code = main(["shrink", str(tmp_path), str(tmp_path / "s"), "--set", "hidden_size=32", "--correct", "bogus"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "unknown correction 'bogus'" in err[0]
    teacher(tmp_path / "t", "llama-tied")  # a tied head cannot be refitted alone: refused before anything is written
    capsys.readouterr()
    code = main(["shrink", str(tmp_path / "t"), str(tmp_path / "s"), "--set", "hidden_size=32", "--correct", "lm_head"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "tied to its embedding" in err[0] and not (tmp_path / "s").exists()
    for alpha in ("-1", "nan", "inf"):  # a ridge needs a finite strength >= 0: refused before anything is written
        code = main(["shrink", str(tmp_path / "t"), str(tmp_path / "s"), "--set", "hidden_size=32", "--correct",
                     "writers", "--correct-alpha", alpha])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "expected a finite number >= 0" in err[0] and alpha in err[0], err
        assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("hidden", ["select", "rotate"])
def test_a_bf16_students_refitted_tensors_stay_bf16_and_verify(tmp_path, hidden):
    """The refit runs in float32/float64; what it writes back is in the dtype the student was written in
    (a bf16 teacher's student is bf16): the manifest's dtypes hold and verify passes."""
    teacher(tmp_path / "t32", "llama").to(torch.bfloat16).save_pretrained(tmp_path / "t")
    calib, _ = calibration(tmp_path / "calib.safetensors")
    api.shrink(tmp_path / "t", tmp_path / "s", config_set=CUT, method="importance", attention="heads", hidden=hidden,
               calibration=calib, samples=24, seq_len=16, device="cpu", correct="writers,lm_head")
    manifest = json.loads((tmp_path / "s" / "slicer_manifest.json").read_text())
    refitted = set(manifest["corrections"]["tensors"])
    got = load_file(str(tmp_path / "s" / "model.safetensors"))
    assert refitted and {got[n].dtype for n in got} == {torch.bfloat16}
    assert verify(tmp_path / "s").ok

