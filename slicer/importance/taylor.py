"""First-order Taylor importance (gradient x weight), streamed: ``score_teacher(criterion="taylor")``.

A member's score is, over every element of every teacher tensor dimension its axis binds
(readers' input columns, writers' output rows, norm gains, embeddings: the plan's layouts, so
the whole dependency group, as Torch-Pruning's ``GroupTaylorImportance`` aggregates),
``sum |w * dL/dw|`` (``reduction="abs"``, Torch-Pruning's default) or ``|sum w * dL/dw|``
(``"signed"``: the first-order change of the loss when the member is removed). ``L`` is the
teacher's next-token loss on the calibration batch (mean cross-entropy over every next
token); a model with no output embeddings (an encoder) uses ``0.5 * mean ||h||^2`` of its last
hidden states. Derived axes are handed down like the activation scores (a kv head gets its
own k/v rows plus its query heads); ``signed`` takes the absolute value after that.

Streamed, with transformers' own modules and accelerate's offloaded execution (``forward``):

- the layers transformers marks ``GradientCheckpointingLayer`` are run under reentrant
  activation checkpointing: the forward keeps only each layer's input hidden states
  (tokens x d per layer), and the backward re-runs each layer, from the last, with its weights
  loaded again by accelerate's hook, and back-propagates through it alone;
- every loaded parameter gets a post-accumulate-grad hook: the moment its gradient is in,
  ``w * grad`` is reduced onto the members of its dimensions and both are dropped. So memory
  is one layer's weights and gradients, the stored hidden states, and the embedding (whose
  gradient, with a tied head's, is only complete at the end);
- the loss is taken over chunks of tokens through the output embeddings, so the logits of a
  large vocabulary are never whole.

What Taylor does not score keeps the activation statistic of the same forward: experts (REAP),
layers (block influence), and any axis whose tensors the model holds in another shape than the
checkpoint (packed experts converted from per-expert tensors).
"""
from __future__ import annotations

import copy
import logging
from functools import partial

import torch

from ..axes import AxisTable
from ..errors import SlicerError
from .forward import give_back_memory
from .members import element_members, hand_down

log = logging.getLogger("slicer")
REDUCTIONS = ("abs", "squared", "signed")
DEFAULT = "squared"  # measured best of the three on SmolLM2 and MiniLM at half width (docs/importance.md)
LOSS_CHUNK = 512  # tokens per chunk of logits: bounds the [tokens, vocab] temporaries
STATISTIC = ("first-order Taylor: per member, {how} over every element of every tensor dimension its axis binds "
             "(a dependency group), of w x dL/dw, L the teacher's next-token loss on the calibration batch "
             "(an encoder: 0.5 mean ||h||^2 of its last hidden states); derived axes summed into their leaves; "
             "experts: mean router-weighted output norm over their tokens (REAP); layers: 1 - mean cos(input, "
             "output hidden states)")
HOW = {"abs": "sum of |w x grad|", "squared": "sum of (w x grad)^2", "signed": "|sum of w x grad|"}


class GradSums:
    """Per axis, the running sum over tensor elements of ``w * grad`` (or its absolute value)."""

    def __init__(self, plan, model, weights, reduction: str = "abs"):
        if reduction not in REDUCTIONS:
            raise SlicerError(f"unknown Taylor reduction {reduction!r} (choose from {', '.join(REDUCTIONS)})")
        self.table: AxisTable = plan.axes
        self.reduction = reduction
        self.sums: dict[str, torch.Tensor] = {}
        self.stash: dict[str, list] = {}  # checkpoint tensor -> [model key, weight, summed grad] (read more than once)
        self.seen: set[str] = set()
        # model parameter key -> (checkpoint tensor, per dimension: [(axis, kept elements, members, t)])
        self.targets: dict[str, tuple[str, list]] = {}
        by_source = {job.source.name: job for job in plan.jobs}
        params = dict(model.named_parameters(remove_duplicate=False))
        uses: dict[str, int] = {}
        for key, sources in weights.sources.items():
            if key not in params or len(sources) != 1 or sources[0][1] is not None:
                continue  # a buffer, or converted from other tensors: its dimensions are not the checkpoint's
            name = sources[0][0]
            job = by_source.get(name)
            if job is None or tuple(params[key].shape) != tuple(job.source.shape) or len(job.layouts) != params[key].dim():
                continue
            dims = []
            for d, layout in enumerate(job.layouts):
                groups = []
                for axis, members in element_members(self.table, layout).items():
                    if self.table[axis].kind in ("flat", "experts"):
                        continue  # experts keep REAP
                    kept = torch.nonzero(members >= 0).flatten()
                    groups.append((axis, kept, members[kept], self.table[axis].t))
                dims.append(groups)
            if any(dims):
                self.targets[key] = (name, dims)
                uses[name] = uses.get(name, 0) + 1
        self.shared = {n for n, k in uses.items() if k > 1}  # tied: the gradients add up before the product

    def take(self, key: str, head: bool, p: torch.Tensor) -> None:
        """A loaded parameter's gradient is in: reduce ``w * grad`` onto its members now, or keep
        it until the end when more gradient will come for the same tensor (tied, or the head,
        which runs once per chunk of the loss)."""
        g = p.grad
        p.grad = None
        if g is None:
            return
        name, _ = self.targets[key]
        if head or name in self.shared:
            held = self.stash.get(name)
            if held is None:
                self.stash[name] = [key, p.detach(), g.detach().clone()]
            else:
                held[2] += g
            return
        self._add(key, p.detach(), g)
        del g
        give_back_memory()  # as the forward does after each layer: freed gradients would stay in the heap

    def flush(self) -> None:
        """Reduce what was kept until every gradient was in."""
        for key, w, g in self.stash.values():
            self._add(key, w, g)
        self.stash.clear()

    def _add(self, key: str, w: torch.Tensor, g: torch.Tensor) -> None:
        _, dims = self.targets[key]
        prod = w.float() * g.float()
        if self.reduction == "abs":
            prod = prod.abs()
        elif self.reduction == "squared":
            prod = prod.pow(2)
        for d, groups in enumerate(dims):
            if not groups:
                continue
            other = [i for i in range(prod.dim()) if i != d]
            along = (prod.sum(other) if other else prod).double().cpu()
            for axis, kept, members, t in groups:
                add = torch.zeros(t, dtype=torch.float64).index_add_(0, members, along[kept])
                self.sums[axis] = self.sums[axis] + add if axis in self.sums else add
        self.seen.add(key)

    def vectors(self) -> dict[str, torch.Tensor]:
        out = hand_down(self.table, self.sums)
        return {k: v.abs() for k, v in out.items()} if self.reduction == "signed" else out


def attach_grads(model, grads: GradSums) -> None:
    """A probe on every module holding a scored parameter (appended after the activation probes,
    before accelerate's offloading hook): after each forward that builds a graph, a hook on each
    loaded parameter hands its gradient to ``grads`` once accumulated."""
    from accelerate.hooks import add_hook_to_module

    from .hooks import probe_class

    Probe = probe_class()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    owners: dict[str, list[tuple[str, str]]] = {}
    for key in grads.targets:
        path, _, leaf = key.rpartition(".")
        owners.setdefault(path, []).append((leaf, key))
    for path, leaves in owners.items():
        module = model.get_submodule(path) if path else model

        def after(module, args, kwargs, output, leaves=leaves, is_head=module is head):
            if not torch.is_grad_enabled():
                return  # the checkpointed first pass: no graph, the recompute will come
            for leaf, key in leaves:
                p = module._parameters.get(leaf)
                if p is not None and p.requires_grad and p.device.type != "meta":
                    p.register_post_accumulate_grad_hook(partial(grads.take, key, is_head))
        add_hook_to_module(module, Probe(after=after), append=True)


def checkpoint_layers(model) -> int:
    """Reentrant activation checkpointing on every ``GradientCheckpointingLayer`` (transformers'
    own switch, set per layer; the layer alone is put in training mode, its children stay in eval
    so no dropout runs). Returns how many layers are checkpointed."""
    from torch.utils.checkpoint import checkpoint

    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # older transformers: no streamed backward, the graph keeps every layer
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.gradient_checkpointing = True
            module._gradient_checkpointing_func = partial(checkpoint, use_reentrant=True)
            module.training = True
            n += 1
    return n


def run_backward(model, runner, kwargs: dict, ckpt, grads: GradSums, sums):
    """Forward with grad, the loss in chunks, the backward layer by layer; returns a copy of the
    activation sums as they were after the forward (the recompute runs the probes again).
    ``runner(**kwargs)``: the base model on the calibration batch (``scoring.forward_runner``)."""
    from .hooks import first_tensor

    layers = checkpoint_layers(model)
    if layers == 0:
        log.warning("no layer of %s can be checkpointed: the backward keeps every layer's weights", ckpt.path)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    try:
        with torch.enable_grad():
            hidden = first_tensor(runner(**kwargs))
            snapshot = copy.deepcopy(sums)
            if hidden is None or not hidden.requires_grad:
                raise SlicerError(f"{ckpt.path}: the teacher's forward gave no hidden states to differentiate")
            ids = kwargs.get("input_ids")
            if head is not None and ids is not None and runner is not model and hidden.dim() == 3:
                grad = _next_token_loss(head, hidden.detach(), ids)
            else:  # an encoder: the energy of its last hidden states
                leaf = hidden.detach().requires_grad_(True)
                (0.5 * leaf.pow(2).sum(-1).mean()).backward()
                grad = leaf.grad
            hidden.backward(grad)
    except SlicerError:
        raise
    except Exception as e:  # noqa: BLE001 - the model's own errors
        from ..hf.common import first_line

        raise SlicerError(f"{ckpt.path}: the teacher's backward failed on the calibration batch: {first_line(e)}") from e
    grads.flush()
    log.debug("Taylor: %d layers checkpointed, %d of %d scored tensors got a gradient", layers, len(grads.seen),
              len(grads.targets))
    return snapshot


def _next_token_loss(head, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The gradient, with respect to ``hidden`` [rows, length, d], of the mean cross-entropy of
    every next token, back-propagated through the head one chunk of tokens at a time."""
    rows, length, d = hidden.shape
    x = hidden[:, :-1].reshape(-1, d).detach().requires_grad_(True)
    labels = ids[:, 1:].reshape(-1).to(x.device)
    total = labels.numel()
    for start in range(0, total, LOSS_CHUNK):
        logits = head(x[start:start + LOSS_CHUNK]).float()
        loss = torch.nn.functional.cross_entropy(logits, labels[start:start + LOSS_CHUNK], reduction="sum") / total
        loss.backward()
    grad = torch.zeros_like(hidden)
    if x.grad is not None:
        grad[:, :-1] = x.grad.view(rows, length - 1, d)
    return grad
