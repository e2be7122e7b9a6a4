"""Refits fed the student's own inputs, layer by layer (SlimGPT / ZipLM style), streamed.

After the student is written, teacher and student run together over the calibration batch,
one decoder layer of each resident at a time (transformers runs the layers; the inputs of the
first layer are caught at its call, so no per-architecture forward). Inside a layer the linear
maps are refitted in the order the teacher calls them, each from the student's input at that
point (the earlier refits of the layer included), and the student's corrected output is carried
to the next layer. A map is refitted against the teacher's output on the same tokens:

- a *writer* into the residual stream (its first dimension bound to the hidden axis: o_proj,
  down_proj): the teacher's whole output (every head and neuron, the cut ones included) taken
  to the student's hidden basis, ``Y = X_t W_t^T P`` (P = ``Qk`` for a rotated hidden axis, the
  kept columns of the identity for a selected one);
- a *reader* (its last dimension bound to the hidden axis: q/k/v, gate/up, lm_head): the
  teacher's outputs of the members the student kept, ``Y = X_t W_t[R]^T``.

Each is the ridge solution pulled towards the written weights,
``W = argmin ||X_s W^T - Y||^2 + lam ||W - W0||^2``, i.e. ``(G + lam I) W^T = X_s^T Y + lam W0^T``
with ``G = X_s^T X_s`` and ``lam = alpha * trace(G) / n`` (n inputs): as alpha grows W tends to
W0, and when the student's inputs and targets are the teacher's own the solution is W0 for any
alpha. Only Grams are formed: ``X_s^T Y = (X_s^T X_t) W_t^T (P)``, so the lm_head's target
(logits over the whole vocabulary) is never materialized. A bias is fitted as one more input
column of ones.
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from ..errors import SlicerError
from ..io.checkpoint import Checkpoint
from ..io.writer import MANIFEST_NAME, sha256_file
from ..selection import manifest_indices
from .options import CORRECTIONS, DEFAULT_ALPHA

log = logging.getLogger("slicer")


def parse(text: str | None) -> tuple[str, ...]:
    """``--correct writers,lm_head`` -> ("writers", "lm_head"); "" / None -> ()."""
    if not text or text == "none":
        return ()
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [n for n in names if n not in CORRECTIONS]
    if bad:
        raise SlicerError(f"--correct: unknown correction {bad[0]!r} (choose from {', '.join(CORRECTIONS)}, "
                          "comma-separated)")
    return names


def check_request(teacher, request) -> tuple[str, ...]:
    """Refuse, before anything is written, what the corrections cannot do; the corrections named."""
    from ..io.checkpoint import is_url

    which = parse(request.correct) if isinstance(request.correct, str) or request.correct is None else \
        parse(",".join(request.correct))
    if not which:
        return which
    if is_url(teacher) or request.remote or request.revision:
        raise SlicerError(f"{teacher}: --correct runs the teacher on calibration data from local files; download the "
                          "teacher first")
    if request.distributed:
        raise SlicerError("--correct runs in one process after the student is written; drop --shards / --executor")
    if request.resume:
        raise SlicerError("--correct with --resume: a refitted student's shards are not the plan's; rerun without "
                          "--resume")
    alpha = request.correct_alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise SlicerError(f"--correct-alpha {alpha!r}: expected a finite number >= 0 (the default is {DEFAULT_ALPHA:g})")
    ckpt = Checkpoint.open(teacher, role="teacher")
    config = ckpt.config_path()
    if config is None:
        raise SlicerError(f"{ckpt.path}: --correct needs the teacher's config.json beside its weights")
    config = json.loads(Path(config).read_text())
    quant = (config.get("quantization_config") or {}).get("quant_method")
    if quant:
        raise SlicerError(f"{ckpt.path}: --correct is not offered for quantized teachers ({quant}): the refit's "
                          "forward reads floating weights only; dequantize the teacher first")
    tied = (request.config_set or {}).get("tie_word_embeddings", config.get("tie_word_embeddings", False))
    if "lm_head" in which and tied and request.hidden != "rotate":  # a rotated student's head is untied
        raise SlicerError(f"{ckpt.path}: --correct lm_head: the student's head is tied to its embedding; refitting "
                          "it would change the embedding too (untie it: --set tie_word_embeddings=false)")
    return which


def ridge(gram: torch.Tensor, cross: torch.Tensor, w0: torch.Tensor, alpha: float) -> torch.Tensor:
    """``argmin_W ||X W^T - Y||^2 + lam ||W - W0||^2`` from ``gram = X^T X`` [n, n] and
    ``cross = X^T Y`` [n, m], ``lam = alpha * trace(gram) / n``; returns W [m, n] (float64)."""
    n = gram.shape[0]
    lam = alpha * float(torch.diagonal(gram).sum()) / max(n, 1)
    a = gram.double() + lam * torch.eye(n, dtype=torch.float64, device=gram.device)
    b = cross.double() + lam * w0.double().T
    try:
        chol = torch.linalg.cholesky(a)
        return torch.cholesky_solve(b, chol).T
    except RuntimeError:  # singular (alpha 0 and too few tokens): the minimum-norm solution
        return torch.linalg.lstsq(a, b).solution.T


class _Stop(Exception):
    """Raised by a hook to end a forward once what it needs is caught."""


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.detach().reshape(-1, x.shape[-1]).double()


def _ones(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], 1)


def _materialize(module, weights, prefix: str, device) -> None:
    from accelerate.utils import set_module_tensor_to_device

    for name, _ in list(module.named_parameters()):
        set_module_tensor_to_device(module, name, device, value=weights[prefix + name])


def _release(module) -> None:
    module.to("meta")


def _layer_list(model) -> tuple[str, torch.nn.ModuleList]:
    n = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) == n:
            return name, m
    raise SlicerError(f"{model.config.model_type}: no list of {n} decoder layers found; --correct needs one")


class _Side:
    """One model (teacher or student), streamed: empty weights, one layer materialized at a time."""

    def __init__(self, ckpt: Checkpoint, device):
        from ..importance.forward import CheckpointWeights, empty_model

        self.ckpt = ckpt
        self.model = empty_model(ckpt.config_path())
        self.weights = CheckpointWeights(ckpt, self.model)
        self.device = device
        self.prefix, self.layers = _layer_list(self.model)
        self.names = {id(m): n for n, m in self.model.named_modules()}

    def outside(self) -> list:
        """The modules with parameters outside the layer list (embeddings, final norm, head)."""
        found = []
        for name, m in self.model.named_modules():
            inside = name == self.prefix or name.startswith(self.prefix + ".")
            if not inside and any(True for _ in m.parameters(recurse=False)):
                found.append(m)
        return found

    def first_layer_inputs(self, inputs: dict) -> tuple[torch.Tensor, tuple, dict]:
        """The hidden states and the other arguments the model hands its first layer."""
        around = self.outside()
        for m in around:  # small beside the layers (an embedding table, a head): what runs before layer 0
            _materialize(m, self.weights, self.names[id(m)] + ".", self.device)
        caught = {}

        def catch(module, args, kwargs):
            kwargs = dict(kwargs)
            caught["hidden"] = args[0] if args else kwargs.pop("hidden_states")
            caught["args"] = tuple(args[1:])
            caught["kwargs"] = kwargs
            raise _Stop

        handle = self.layers[0].register_forward_pre_hook(catch, with_kwargs=True)
        kwargs = {k: v.to(self.device) for k, v in inputs.items()}
        if "use_cache" in inspect.signature(self.model.forward).parameters:
            kwargs["use_cache"] = False
        try:
            with torch.no_grad():
                self.model(**kwargs)
        except _Stop:
            pass
        finally:
            handle.remove()
            for m in around:
                _release(m)
        if "hidden" not in caught:
            raise SlicerError(f"{self.ckpt.path}: the forward never reached its first decoder layer")
        return caught["hidden"], (caught["args"], caught["kwargs"])

    def load(self, module) -> None:
        _materialize(module, self.weights, self.names[id(module)] + ".", self.device)


def _call(layer, hidden, rest):
    args, kwargs = rest
    out = layer(hidden, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _manifest(out: Path) -> dict:
    path = out / MANIFEST_NAME
    if not path.is_file():
        raise SlicerError(f"{out}: no {MANIFEST_NAME}; --correct refits a student slicer wrote")
    return json.loads(path.read_text())


def correct(teacher: str | Path, out: str | Path, which: tuple[str, ...], *, hidden_map: torch.Tensor | None = None,
            alpha: float = DEFAULT_ALPHA, calibration=None, samples: int = 32, seq_len: int = 128,
            device: str = "cpu") -> dict:
    """Refit the student in ``out`` (written by slicer from ``teacher``) in place; return the
    manifest's ``corrections`` record (also written into the manifest, with the new shards'
    sizes and sha256). ``hidden_map`` [d, k]: the rotation's kept columns; None: the manifest's
    hidden index set."""
    from ..importance import calibration as calib
    from ..importance.forward import give_back_memory, import_accelerate, pick_device
    from ..run.memory import PeakSampler, anon_bytes

    which = tuple(which)
    if not which:
        return {}
    import_accelerate()
    start = time.perf_counter()
    out = Path(out)
    manifest = _manifest(out)
    if manifest.get("quantization"):
        raise SlicerError(f"{out}: --correct is not offered for quantized teachers: the refit reads floating weights")
    tckpt = Checkpoint.open(teacher, role="teacher")
    sckpt = Checkpoint.open(out, role="student")
    for c in (tckpt, sckpt):
        if c.config_path() is None:
            raise SlicerError(f"{c.path}: --correct needs config.json beside the weights")
    dev = pick_device(device)
    batch = calib.load(calibration, tckpt.folder, samples=samples, seq_len=seq_len)
    t, s = _Side(tckpt, dev), _Side(sckpt, dev)
    tensors = manifest["tensors"]
    emb_key = s.names[id(s.model.get_input_embeddings())] + ".weight"
    axis = tensors[_ckpt_name(s, emb_key)]["axes"][-1]
    sets = manifest["index_sets"]
    if hidden_map is None:
        kept = manifest_indices(sets[manifest["axes"][axis]["index"]])
        d = tckpt.tensors[tensors[_ckpt_name(s, emb_key)]["source"]].shape[-1]
        hidden_map = torch.eye(d, dtype=torch.float64)[:, kept]
    p = hidden_map.double().to(dev)
    layer_map = manifest.get("layer_maps", {}).get(s.prefix) or list(range(len(s.layers)))
    student_of = {ti: si for si, ti in enumerate(layer_map)}
    changed: dict[str, torch.Tensor] = {}
    fits: dict[str, dict] = {}
    staging = Path(tempfile.mkdtemp(prefix=".slicer-correct-", dir=out))
    before = anon_bytes()
    sampler = PeakSampler().__enter__()  # RssAnon + RssShmem: the page cache of the mapped files apart
    try:
        with torch.no_grad():
            ht, kt = t.first_layer_inputs(batch.inputs)
            hs, ks = s.first_layer_inputs(batch.inputs)
            for ti, tlayer in enumerate(t.layers):
                t.load(tlayer)
                si = student_of.get(ti)
                if si is None:  # a layer the student leaves out: the teacher's stream goes on
                    ht = _call(tlayer, ht, kt)
                    _release(tlayer)
                    continue
                slayer = s.layers[si]
                s.load(slayer)
                xt, order, same = _teacher_inputs(tlayer, ht, kt)
                last: tuple[str, torch.Tensor] | None = None  # (the first linear of an input, the student's input)
                for name in order:
                    role = _role(s, slayer, name, tensors, axis)
                    mode = _mode(role, which, slayer.get_submodule(name))
                    if mode is None:
                        continue
                    if last is None or last[0] != same[name]:  # q, k, v (gate, up) share one input: one pass
                        last = (same[name], _student_input(slayer, name, hs, ks))
                    xs = last[1]
                    key = f"{s.names[id(slayer)]}.{name}"
                    fits[key] = _refit(s, t, slayer.get_submodule(name), tlayer.get_submodule(name), key,
                                       f"{t.names[id(tlayer)]}.{name}", xs, xt[name], role, p, tensors, sets, alpha,
                                       changed, bias_only=mode == "bias")
                ht, hs = _call(tlayer, ht, kt), _call(slayer, hs, ks)
                _release(tlayer)
                _release(slayer)
                if changed:
                    _stage(staging, si, changed)
                give_back_memory()
            if "lm_head" in which:
                fits.update(_refit_head(s, t, ht, hs, p, tensors, sets, alpha, changed))
                _stage(staging, len(s.layers), changed)
        s.weights.close()
        t.weights.close()
        names = _rewrite(out, manifest, staging)
    finally:
        sampler.__exit__(None, None, None)
        for f in staging.glob("*"):
            f.unlink()
        staging.rmdir()
    record = {"which": list(which), "alpha": alpha, "calibration": batch.describe(), "tensors": names,
              "fits": fits,
              "seconds": round(time.perf_counter() - start, 3), "anon_before_bytes": before,
              "peak_anon_bytes": sampler.peak,
              "note": "the listed tensors were refitted after selection (ridge least squares against the teacher's "
                      "outputs on the calibration batch, the student's own inputs): their values are not the "
                      "teacher's selected or rotated; which members are kept is unchanged"}
    manifest["corrections"] = record
    _write_manifest(out, manifest)
    log.info("corrections %s: %d tensors refitted in %.1f s (alpha %g)", ",".join(which), len(names),
             record["seconds"], alpha)
    return record


def _ckpt_name(side: _Side, key: str) -> str:
    sources = side.weights.sources.get(key)
    if not sources or sources[0][1] is not None:
        raise SlicerError(f"{side.ckpt.path}: the model's {key!r} is not one checkpoint tensor; --correct needs one")
    return sources[0][0]


def _teacher_inputs(layer, hidden, kwargs):
    """The inputs of every linear of a teacher layer (rows, float64), in call order; ``same``
    maps a linear to the first one that saw the same input tensor (q, k, v; gate, up)."""
    xt: dict[str, torch.Tensor] = {}
    order: list[str] = []
    seen: dict[int, str] = {}
    same: dict[str, str] = {}
    alive: list[torch.Tensor] = []  # held for the pass, so that no later input reuses a freed one's address
    handles = []
    for name, m in layer.named_modules():
        if isinstance(m, torch.nn.Linear):
            def grab(module, args, name=name):
                x = args[0]
                alive.append(x)
                key = x.data_ptr()
                same[name] = seen.setdefault(key, name)
                xt[name] = xt[same[name]] if same[name] != name else _rows(x)
                order.append(name)
            handles.append(m.register_forward_pre_hook(grab))
    try:
        _call(layer, hidden, kwargs)
    finally:
        for h in handles:
            h.remove()
    return xt, order, same


def _student_input(layer, name: str, hidden, kwargs) -> torch.Tensor:
    caught = {}

    def grab(module, args):
        caught["x"] = _rows(args[0])
        raise _Stop

    handle = layer.get_submodule(name).register_forward_pre_hook(grab)
    try:
        _call(layer, hidden, kwargs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return caught["x"]


def _mode(role: str | None, which: tuple[str, ...], module) -> str | None:
    """What is refitted of one linear: "all" (weight and bias), "bias" (a writer's bias alone), or None."""
    if role == "reader" and "readers" in which or role == "writer" and "writers" in which:
        return "all"
    if role == "writer" and "bias" in which and module.bias is not None:
        return "bias"
    return None


def _role(side: _Side, layer, name: str, tensors: dict, axis: str) -> str | None:
    key = f"{side.names[id(layer)]}.{name}.weight"
    rec = tensors.get(_ckpt_name(side, key))
    if rec is None:
        return None
    if rec["axes"][0] == axis:
        return "writer"
    if rec["axes"][-1] == axis:
        return "reader"
    return None


def _refit(s: _Side, t: _Side, smod, tmod, skey: str, tkey: str, xs, xt, role: str, p, tensors: dict, sets: dict,
           alpha: float, changed: dict, bias_only: bool = False) -> dict:
    """Refit one linear in place (the student's module keeps the new weights for the rest of its layer).

    ``bias_only`` (FLAP's bias compensation, generalized): the weight kept, the bias moved by the
    mean of what the student's output misses, ``b = b0 + mean(Y - X_s W0^T - b0)``: the least
    squares bias for the written weight (what the cut members and the cut hidden channels
    contributed on average)."""
    if bias_only:
        target = torch.cat([tmod.weight.detach().double(), tmod.bias.detach().double()[:, None]], 1).T @ p
        mean_y = _ones(xt).mean(0) @ target
        mean_s = xs.mean(0) @ smod.weight.detach().double().T + smod.bias.detach().double()
        smod.bias.data = (smod.bias.detach().double() + mean_y - mean_s).to(smod.bias.dtype).contiguous()
        changed[_ckpt_name(s, skey + ".bias")] = smod.bias.detach().cpu()
        return {"role": "writer bias", "tokens": xs.shape[0],
                "mean_shift": round(float((mean_y - mean_s).norm() / mean_y.norm().clamp(min=1e-30)), 6)}
    has_bias = smod.bias is not None
    if has_bias:
        xs, xt = _ones(xs), _ones(xt)
    name = _ckpt_name(s, skey + ".weight")
    rows = manifest_indices(sets[tensors[name]["index"][0]]) if role == "reader" else None
    gram, xst, xtt = xs.T @ xs, xs.T @ xt, xt.T @ xt
    out_rows = smod.weight.shape[0]
    new_w = torch.empty(smod.weight.shape, dtype=smod.weight.dtype, device=smod.weight.device)
    new_b = torch.empty_like(smod.bias) if has_bias else None
    sums = [0.0, 0.0, 0.0]  # ||Y||^2, ||X_s W0^T - Y||^2, ||X_s W^T - Y||^2
    for a in range(0, out_rows, _ROWS):  # output rows are independent: a vocabulary-sized head in slabs
        b = min(a + _ROWS, out_rows)
        if rows is not None:  # a reader: the teacher's rows of the members kept
            wt = _with_bias(tmod, rows[a:b])
            target = wt.T  # [in_t, rows]
        else:  # a writer: the teacher's whole output, in the student's hidden basis (the bias row too)
            target = _with_bias(tmod, None).T @ p[:, a:b]
        w0 = _with_bias(smod, list(range(a, b)))
        cross = xst @ target
        w = ridge(gram, cross, w0, alpha)
        yy = float(torch.einsum("ij,ij->", target, xtt @ target))
        sums[0] += yy
        for i, m in ((1, w0), (2, w)):
            sums[i] += float(torch.einsum("ij,ij->", m.T, gram @ m.T)) - 2 * float(torch.einsum("ij,ij->", m.T, cross)) \
                + yy
        if has_bias:
            new_b[a:b] = w[:, -1].to(new_b.dtype)
            w = w[:, :-1]
        new_w[a:b] = w.to(new_w.dtype)
    # new storage, not copy_: a float32 weight read from the student's files is a view of its read-only map
    if has_bias:
        smod.bias.data = new_b
        changed[_ckpt_name(s, skey + ".bias")] = smod.bias.detach().cpu()
    smod.weight.data = new_w
    changed[name] = smod.weight.detach().cpu()
    return {"role": role, "tokens": xs.shape[0], "inputs": xs.shape[1],
            "relative_error_before": round(max(sums[1], 0.0) / max(sums[0], 1e-300), 6),
            "relative_error_after": round(max(sums[2], 0.0) / max(sums[0], 1e-300), 6)}


_ROWS = 8192  # output rows solved at a time (the right-hand sides of one Cholesky factorization, refactored per slab)


def _with_bias(module, rows: list[int] | None) -> torch.Tensor:
    """The module's [weight | bias] rows (all with None) in float64."""
    w = module.weight.detach() if rows is None else module.weight.detach()[rows]
    if module.bias is None:
        return w.double()
    b = module.bias.detach() if rows is None else module.bias.detach()[rows]
    return torch.cat([w.double(), b.double()[:, None]], 1)


def _refit_head(s: _Side, t: _Side, ht, hs, p, tensors, sets, alpha, changed) -> dict:
    """The output head: a reader of the final norm, fitted to the teacher's logits."""
    shead, thead = s.model.get_output_embeddings(), t.model.get_output_embeddings()
    if shead is None or thead is None:
        raise SlicerError(f"{s.ckpt.path}: --correct lm_head: the model has no output head")
    snorm, tnorm = _final_norm(s), _final_norm(t)
    if getattr(s.model.config.get_text_config(), "tie_word_embeddings", False):
        raise SlicerError(f"{s.ckpt.path}: --correct lm_head: the student's head is tied to its embedding; refitting "
                          "it would change the embedding too (untie it: --set tie_word_embeddings=false)")
    for side, module in ((s, snorm), (t, tnorm), (s, shead), (t, thead)):
        side.load(module)
    try:
        xs, xt = _rows(snorm(hs)), _rows(tnorm(ht))
        key = s.names[id(shead)]
        return {key: _refit(s, t, shead, thead, key, t.names[id(thead)], xs, xt, "reader", p, tensors, sets, alpha,
                            changed)}
    finally:
        for module in (snorm, tnorm, shead, thead):
            _release(module)


def _final_norm(side: _Side):
    """The module whose output the head reads: caught at the head's call is not possible without
    running it, so the base model's last child that is a norm over the hidden size."""
    base = side.model.get_decoder() if hasattr(side.model, "get_decoder") else side.model
    for name in ("norm", "final_layernorm", "ln_f"):
        if isinstance(getattr(base, name, None), torch.nn.Module):
            return getattr(base, name)
    raise SlicerError(f"{side.ckpt.path}: no final norm found; --correct lm_head needs one")


def _stage(staging: Path, index: int, changed: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in changed.items()}, str(staging / f"part-{index:05d}.safetensors"))
    changed.clear()


def _rewrite(out: Path, manifest: dict, staging: Path) -> list[str]:
    """Put the staged tensors into the student's shards, one shard in memory at a time."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    parts = sorted(staging.glob("part-*.safetensors"))
    where: dict[str, Path] = {}
    for part in parts:
        with safe_open(str(part), "pt") as f:
            for k in f.keys():
                where[k] = part
    by_shard: dict[str, list[str]] = {}
    for name in where:
        by_shard.setdefault(manifest["tensors"][name]["shard"], []).append(name)
    for shard in manifest["shards"]:
        names = by_shard.get(shard["name"])
        if not names:
            continue
        path = out / shard["name"]
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        for name in names:  # in the dtype the student was written in (the refit runs in float32 / float64)
            with safe_open(str(where[name]), "pt") as f:
                tensors[name] = f.get_tensor(name).to(tensors[name].dtype)
        tmp = path.with_name(path.name + ".corrected.tmp")
        save_file(tensors, str(tmp), metadata=meta)
        del tensors
        os.replace(tmp, path)
        shard["sha256"], shard["size"] = sha256_file(path)
        if shard["name"] in manifest.get("written", {}):  # what a later --overwrite proves the file by
            manifest["written"][shard["name"]] = {"sha256": shard["sha256"], "size": shard["size"]}
    return sorted(where)


def _write_manifest(out: Path, manifest: dict) -> None:
    path = out / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)

