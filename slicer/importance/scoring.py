"""``slicer score``: run the teacher on a calibration batch, streamed, and score every axis.

1. Plan the teacher's own config (identity): the plan binds every teacher tensor dimension
   to the model's axes, so the scores are named as every student's plan names them and one
   scores file serves every student of that teacher.
2. Build the teacher's model with empty weights, put probes where the plan's layouts say an
   axis shows in the activations (``hooks``), and run it streamed (``forward``).
3. Turn the sums into one vector per axis: derived axes handed down to their leaves
   (``members.hand_down``), experts and layers from their own sums.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..version import __version__
from ..io.checkpoint import Checkpoint
from ..teacher import open_checkpoint
from ..errors import SlicerError
from . import calibration as calib
from .hooks import Sums, attach, find_sites
from .members import hand_down
from .scores import Scores, layer_key, teacher_files

log = logging.getLogger("slicer")
# hidden channels: the residual stream entering each layer, the linear inputs, or those inputs' L2 norm times the
# reading weight's column norm, summed over every reader (Wanda's |W| ||x||, aggregated as a dependency group)
HIDDEN_FROM = ("residual", "weighted", "inputs")
_REST = ("experts: mean router-weighted output norm over their tokens (REAP); layers: 1 - mean cos(input, "
         "output hidden states)")
STATISTICS = {  # the scores file's metadata "statistic", per hidden_from
    "residual": "mean over calibration tokens of the L2 norm of each member's activations (hidden: the residual "
                "stream entering each layer; others: linear-layer inputs; derived axes summed into their leaves); " + _REST,
    "inputs": "mean over calibration tokens of the L2 norm of each member's activations (hidden: the normed inputs "
              "of the linears that read it; others: linear-layer inputs; derived axes summed into their leaves); " + _REST,
    "weighted": "hidden channels: sum over every linear that reads them of the weight's column norm x the L2 norm "
                "of the channel's input per calibration token (Wanda); query heads: the L2 norm of their output per "
                "token; other axes: mean over calibration tokens of the L2 norm of each member's linear-layer inputs; "
                "derived axes summed into their leaves; " + _REST,
}


@dataclass
class ScoreRun:
    scores: Scores
    seconds: float
    tokens: int
    device: str


def identity_plan(ckpt: Checkpoint):
    """The plan of the teacher's own config: every axis bound, nothing shrunk."""
    from ..hf.route import from_config
    from ..plan.build import Options, build_plan
    from ..plan.quantized import teacher_scheme

    if ckpt.config_path() is None:
        raise SlicerError(f"{ckpt.path}: scoring needs the teacher's config.json beside its weights")
    spec = from_config(ckpt, None, {}, attention="heads")
    scheme = teacher_scheme(ckpt)
    # MXFP4: the plan's experts are the dequantized tensors the streamed forward loads (not the packed
    # blocks a --dtype keep plan copies), so that Taylor finds them
    options = Options(attention="heads", dtype="fp32" if scheme is not None and scheme.method == "mxfp4" else "keep")
    return build_plan(ckpt, spec.tensors, options, spec.make_binder(options), origin=spec.origin)


CRITERIA = ("activation", "taylor")


def score_teacher(teacher: str | Path | Checkpoint, calibration: str | Path | None = None, *, samples: int = 32,
                  seq_len: int = 128, device: str = "auto", hidden_from: str = "residual",
                  criterion: str = "taylor", taylor: str | None = None,
                  taps: Mapping[str, Callable[[torch.Tensor], None]] | None = None) -> ScoreRun:
    """Scores of every axis of ``teacher`` (one module's weights in memory at a time).

    ``criterion="taylor"`` (the default): every axis but experts and layers by first-order
    Taylor importance, gradient x weight of the teacher's next-token loss over every tensor
    dimension the axis binds, streamed backwards layer by layer (``taylor.py``); ``taylor``
    picks the reduction over elements: ``squared`` (the default) sums (w g)^2, ``abs`` sums
    |w g| (Torch-Pruning's), ``signed`` takes |sum w g|. On SmolLM2-135M at half width it is
    6x (heads 6/3) and 4x (heads 6/2) below the activation statistics' perplexity, and MiniLM's
    Spearman is 0.872 (bench/RESULTS.md).

    ``criterion="activation"``: activation norms of one forward, the hidden channels by
    ``hidden_from``: ``residual``: the residual stream entering every layer, heads by the mean
    of per-token norms; ``weighted``: Wanda's |W| ||x|| summed over every linear that reads
    them, query heads by the L2 norm of their output over all tokens; ``inputs``: the (normed)
    inputs of the linear layers that read the hidden axis, as Minitron. The metadata's
    ``criterion``, ``taylor`` and ``statistic`` describe the one that ran.

    ``taps``: module path -> a callable given that module's input on the same forward (the
    rotation's statistics ride along: one pass of the teacher for both); the scores do not
    depend on them."""
    from ..hf.bindings.view import ModelView
    from .forward import CheckpointWeights, empty_model, import_accelerate, pick_device, stream

    if hidden_from not in HIDDEN_FROM:
        raise SlicerError(f"unknown hidden statistic {hidden_from!r} (choose from {', '.join(HIDDEN_FROM)})")
    if criterion not in CRITERIA:
        raise SlicerError(f"unknown importance criterion {criterion!r} (choose from {', '.join(CRITERIA)})")
    if criterion == "taylor" and taylor is None:
        from .taylor import DEFAULT as taylor
    start = time.perf_counter()
    import_accelerate()
    ckpt = teacher if isinstance(teacher, Checkpoint) else open_checkpoint(teacher, role="teacher")
    if ckpt.source.fetches:
        raise SlicerError(f"{ckpt.path}: scoring runs the teacher from local files; a remote teacher is read for its "
                          "kept rows only, never as a whole: download it, or score it where it is stored")
    plan = identity_plan(ckpt)
    batch = calib.load(calibration, ckpt.folder, samples=samples, seq_len=seq_len)
    dev = pick_device(device)
    model = empty_model(ckpt.config_path())
    view = ModelView(model)
    sites = find_sites(plan, view, hidden_from=hidden_from)
    sums = Sums()
    attach(model, view, sites, sums, hidden_from=hidden_from)
    weights = CheckpointWeights(ckpt, model)
    grads = None
    if criterion == "taylor":
        from .taylor import GradSums, attach_grads

        grads = GradSums(plan, model, weights, taylor)
        attach_grads(model, grads)
    try:
        stream(model, weights, dev)
        with tapping(model, taps or {}, ckpt, once=grads is not None):  # a backward's recompute must not tap again
            if grads is None:
                run_forward(model, batch.inputs, dev, ckpt)
            else:
                from .taylor import run_backward

                runner, kwargs = forward_runner(model, batch.inputs, dev)
                sums = run_backward(model, runner, kwargs, ckpt, grads, sums)
    finally:
        weights.close()
    probed = len(sites.linears) + len(sites.experts) + len(sites.layers)
    log.debug("%d of %d probed modules ran on the calibration batch", len(sums.seen), probed)
    vectors = finish(plan.axes, sums, batch.tokens)
    if not vectors:
        raise SlicerError(f"{ckpt.path}: no activation reached a scored axis; is the calibration right for this teacher?")
    statistic = STATISTICS[hidden_from]
    if grads is not None:  # Taylor replaces the activation scores of the axes it reached; the names stay the same
        from .taylor import HOW, STATISTIC

        vectors.update({k: v for k, v in grads.vectors().items() if k in vectors})
        statistic = STATISTIC.format(how=HOW[taylor])
    metadata = {"teacher": teacher_files(ckpt), "calibration": batch.describe(), "statistic": statistic,
                "criterion": criterion, "hidden_from": hidden_from, "slicer_version": __version__}
    if grads is not None:
        metadata["taylor"] = taylor
    seconds = time.perf_counter() - start
    log.debug("scored %d axes in %.1f s on %s", len(vectors), seconds, dev)
    return ScoreRun(Scores(vectors, metadata, f"scores of {ckpt.path}"), seconds, batch.tokens, str(dev))


@contextlib.contextmanager
def tapping(model, taps: Mapping[str, Callable[[torch.Tensor], None]], ckpt: Checkpoint, once: bool = False):
    """Within the block, each tapped module's first input goes to its callable (forward pre-hooks);
    ``once``: its first call only (a backward's recompute runs the module again on the same input)."""
    modules = dict(model.named_modules())
    missing = [m for m in taps if m not in modules]
    if missing:
        raise SlicerError(f"{ckpt.path}: the model has no module {missing[0]} (is this a "
                          f"{model.config.model_type} checkpoint?)")
    done: set[str] = set()

    def hook(name, fn):
        def pre(module, args):
            if once and name in done:
                return
            done.add(name)
            fn(args[0])
        return pre

    handles = [modules[m].register_forward_pre_hook(hook(m, fn)) for m, fn in taps.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def forward_runner(model, inputs: dict, device: torch.device):
    """The base model (no LM head: logits of a large vocabulary are not needed) and its inputs;
    the whole model when the base model does not take these inputs."""
    import inspect

    base = getattr(model, "base_model", None)
    runner = base if isinstance(base, torch.nn.Module) and base is not model else model
    params = inspect.signature(runner.forward).parameters
    kwargs = {k: v.to(device) for k, v in inputs.items()}
    if "input_ids" in kwargs and "input_ids" not in params or "pixel_values" in kwargs and "pixel_values" not in params:
        runner = model
        params = inspect.signature(runner.forward).parameters
    if "use_cache" in params:
        kwargs["use_cache"] = False
    return runner, kwargs


def run_forward(model, inputs: dict, device: torch.device, ckpt: Checkpoint) -> None:
    """One forward of the base model, no gradients."""
    runner, kwargs = forward_runner(model, inputs, device)
    try:
        with torch.no_grad():
            runner(**kwargs)
    except SlicerError:
        raise
    except Exception as e:  # noqa: BLE001 - the model's own errors: wrong inputs for this teacher
        from ..hf.common import first_line

        raise SlicerError(f"{ckpt.path}: the teacher's forward failed on the calibration batch "
                          f"{ {k: list(v.shape) for k, v in inputs.items()} }: {first_line(e)}") from e


def finish(table, sums: Sums, tokens: int) -> dict[str, torch.Tensor]:
    """Sums -> one vector per axis (leaves, the derived axes they came from, experts, layers)."""
    raw = {name: s / max(tokens, 1) for name, s in sums.norms.items()}
    for name, s in sums.weighted_scores(tokens).items():
        raw[name] = raw[name] + s if name in raw else s
    for axis, total in sums.expert_sum.items():
        count = sums.expert_count[axis]
        raw[axis] = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    vectors = hand_down(table, raw)  # e.g. grouped experts (expert-groups * experts-per-group) to their leaves
    for prefix, by_layer in sums.cos_sum.items():
        depth = max(by_layer) + 1
        bi = torch.zeros(depth, dtype=torch.float64)
        for i, s in by_layer.items():
            bi[i] = 1.0 - s / max(sums.cos_count[prefix][i], 1)
        vectors[layer_key(prefix)] = bi
    return vectors
