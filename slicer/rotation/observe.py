"""The role of each tensor under a rotation, observed on the teacher's own forward (no names parsed).

One short streamed forward of the teacher (the model transformers builds from its config, one
module's weights in memory at a time) with hooks on every module that holds parameters:

- a **norm site** is a module with one parameter, a [d] gain, whose output is observed to be
  ``gain * x / rms(x)`` of its input x (RMSNorm over the hidden axis: the residual stream
  enters it). LayerNorm (mean subtracted), ``(1 + w)`` gains and per-head norms fail the test;
- a **reader** of a site is a module whose input is that site's output (the same storage: a
  view counts, as MoE blocks flatten tokens before the router and the experts; every norm's
  output is held for the pass, so no storage is reused): q/k/v,
  gate/up, MLA's ``q_a_proj`` / ``kv_a_proj_with_mqa``, routers, experts, shared experts;
- the output embedding (the LM head, which the forward does not run) reads the last site;
- the teacher's gain of each site is taken from the module as the forward streams it in.

Every other tensor dimension bound to the hidden axis (by the plan's bindings, which
transformers' modules give) is the residual stream written or read without a norm: the
embedding and the writers (o_proj, down_proj, experts' down projections, their biases).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import SlicerError
from ..io.checkpoint import Checkpoint


@dataclass
class Observed:
    sites: list[str]  # norm modules over the residual stream, in forward order
    readers: dict[str, str]  # module -> the site whose output it reads
    gains: dict[str, torch.Tensor]  # site -> the teacher's gain [d], float64
    ran: set[str]  # modules the forward ran
    sources: dict[str, list[str]]  # model parameter name -> checkpoint tensor names
    head: str | None  # the output embedding's parameter name (reads the last site)
    embedding: str | None  # the input embedding's parameter name
    tied: bool = False
    text_config: str = ""  # "text_config." where the language model's config is nested
    reader_tensors: dict[str, str] = field(default_factory=dict)  # checkpoint tensor -> site
    norm_tensors: dict[str, str] = field(default_factory=dict)  # checkpoint tensor -> site
    modules: dict[str, list[str]] = field(default_factory=dict)  # reader module -> its parameter names

    def keep_sites(self, sites: list[str]) -> None:
        """Only these sites (in forward order) and their readers; the checkpoint names of both."""
        self.sites = [s for s in self.sites if s in set(sites)]
        self.readers = {m: s for m, s in self.readers.items() if s in self.sites}
        self.reader_tensors = {n: site for m, site in self.readers.items() for p in self.modules.get(m, [])
                               for n in self.sources.get(f"{m}.{p}", [])}
        self.norm_tensors = {n: site for site in self.sites for n in self.sources.get(f"{site}.weight", [])}


def _is_rmsnorm(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, d: int) -> bool:
    """``y == w * x / sqrt(mean(x^2) + eps)`` token by token, for one eps >= 0 (any eps: the test does
    not need to know it, and the rotation keeps it)."""
    if x.shape[-1] != d or y.shape != x.shape:
        return False
    xd = x.detach().double().reshape(-1, d)
    got = y.detach().double().reshape(-1, d)
    wx = w.detach().double().to(xd.device) * xd
    live = wx.norm(dim=1) > 0
    if not bool(live.any()):
        return False
    wx, got, xd = wx[live], got[live], xd[live]
    scale = (got * wx).sum(1) / (wx * wx).sum(1)
    along = (got - scale[:, None] * wx).norm(dim=1) <= 1e-4 * got.norm(dim=1) + 1e-12  # y is parallel to w * x
    if not bool(along.all()) or not bool((scale > 0).all()):
        return False
    ms = xd.pow(2).mean(1)
    eps = 1 / scale.pow(2) - ms  # what each token's scale says eps is: one value, if y is an RMSNorm of x
    return bool(((eps - eps.median()).abs() <= 1e-3 * ms + 1e-9).all() and float(eps.median()) > -1e-3 * float(ms.min()))


def observe(ckpt: Checkpoint, d: int, calibration=None, device: str = "cpu", tokens: int = 8) -> Observed:
    from ..importance import calibration as calib
    from ..importance.forward import CheckpointWeights, empty_model, import_accelerate, pick_device, stream
    from ..importance.scoring import run_forward

    import_accelerate()
    batch = calib.load(calibration, ckpt.folder, samples=1, seq_len=tokens)
    model = empty_model(ckpt.config_path())
    weights = CheckpointWeights(ckpt, model)
    names = {id(m): n for n, m in model.named_modules()}
    sites: list[str] = []
    readers: dict[str, str] = {}
    gains: dict[str, torch.Tensor] = {}
    ran: set[str] = set()
    # every norm's output seen, by storage (kept alive, so no storage is reused: 8 tokens x d per norm)
    outputs: dict[int, tuple[torch.Tensor, str]] = {}

    def pre(module, args, kwargs):
        x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
        name = names[id(module)]
        ran.add(name)
        seen = outputs.get(x.untyped_storage().data_ptr()) if isinstance(x, torch.Tensor) else None
        if seen is not None and name not in gains:
            readers.setdefault(name, seen[1])

    def post(module, args, kwargs, y):
        x = args[0] if args else None
        name = names[id(module)]
        params = [(p, t.shape) for p, t in module.named_parameters(recurse=False)]
        if len(params) != 1 or tuple(params[0][1]) != (d,) or not isinstance(x, torch.Tensor) \
                or not isinstance(y, torch.Tensor):
            return
        w = weights[f"{name}.{params[0][0]}"]  # the streamed module's own is back on the meta device by now
        if _is_rmsnorm(w, x, y, d):
            if name not in gains:
                sites.append(name)
                gains[name] = w.detach().double().cpu().clone()
            readers.pop(name, None)
            outputs[y.untyped_storage().data_ptr()] = (y, name)

    hooks = []
    try:
        stream(model, weights, pick_device(device))
        for module in model.modules():
            if any(True for _ in module.parameters(recurse=False)):
                hooks.append(module.register_forward_pre_hook(pre, with_kwargs=True))
                hooks.append(module.register_forward_hook(post, with_kwargs=True))
        run_forward(model, batch.inputs, pick_device(device), ckpt)
    finally:
        for h in hooks:
            h.remove()
        weights.close()
    if not sites:
        raise SlicerError(f"{ckpt.path}: --hidden rotate found no RMSNorm over the hidden axis ({d}) in the teacher's "
                          "forward: rotation needs pre-norm RMSNorm blocks")
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    head = f"{names[id(out_emb)]}.weight" if out_emb is not None else None
    embedding = f"{names[id(in_emb)]}.weight" if in_emb is not None else None
    sources = {key: [n for n, _ in found] for key, found in weights.sources.items()}
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    nested = "text_config." if text is not config else ""
    seen = Observed(sites, readers, gains, ran, sources, head, embedding,
                    tied=bool(getattr(text, "tie_word_embeddings", False) or getattr(config, "tie_word_embeddings", False)),
                    text_config=nested)
    modules = dict(model.named_modules())
    seen.modules = {m: [p for p, _ in modules[m].named_parameters(recurse=False)] for m in readers}
    seen.keep_sites(sites)
    return seen
