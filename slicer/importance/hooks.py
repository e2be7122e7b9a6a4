"""Where activations are read, found through the plan, and what is accumulated there.

The plan of the teacher's own config binds every teacher tensor dimension to axes; a
module whose weight binds an axis on its *input* dimension sees that axis's members in its
input activations. So, with no per-architecture code:

- the input of every linear layer (``nn.Linear``, GPT-2's ``Conv1D``) is grouped by the layout
  of the weight's input dimension: a down projection's input -> its FFN neurons, an attention
  output projection's input -> its query heads (``q-heads * head-dim``), a q/k/v or up
  projection's input -> the (normed) hidden channels, unless those are scored by the residual
  stream (``hidden_from="residual"``, the default: every layer's input hidden states);
- an experts module with transformers' experts interface (``forward(hidden_states,
  top_k_index, top_k_weights)``) is run again on each expert's own tokens with the router's
  weights, right after its forward while its weights are loaded: the norm of that
  router-weighted output is the expert's score (REAP); the F.linear calls inside are read
  like linear layers (an expert's down projection input -> the experts' FFN axis);
- every layer of the outermost layer lists: 1 - cos(input, output hidden states), its block
  influence, for ``--layer-selection importance``.

A member's score is the mean over calibration tokens of the L2 norm of the activations it
owns (one element: mean |x|; a head: the norm of its output), summed over every place that
sees the axis. With ``hidden_from="weighted"`` two axes are scored otherwise:
a hidden channel by Wanda's ``|W| ||x||`` (the reading weight's column norm times the L2
norm of the channel's input over all tokens) summed over every linear that reads it, and a
query head by the L2 norm of its output over all tokens. The probes are accelerate ``ModelHook``s placed before accelerate's offloading
hooks, so they run while the module's weights are loaded.
"""
from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode

from ..axes import AxisTable, Layout
from ..plan.layers import depths
from .forward import give_back_memory
from .members import element_members

TOKEN_CHUNK = 4096  # tokens per step when grouping activations: bounds the temporaries


@dataclass
class Site:
    """One place an activation is read: how its last dimension splits into axis members."""

    groups: list[tuple[str, torch.Tensor, torch.Tensor, int, bool]]  # (axis, kept elements, members, t, one each)
    # hidden_from="weighted": axis -> scored by the reading weight's column norm x activation L2 (True), or by the
    # activation L2 alone (False: a head's energy over all tokens)
    weighted: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def of(cls, table: AxisTable, layout: Layout, skip_kinds: frozenset[str] = frozenset(),
           weighted_kinds: dict[str, bool] | None = None) -> "Site | None":
        groups = []
        weighted = {}
        for name, members in element_members(table, layout).items():
            ax = table[name]
            if ax.kind == "flat" or ax.kind in skip_kinds:
                continue
            kept = torch.nonzero(members >= 0).flatten()
            identity = len(kept) == len(members) == ax.t and bool((members == torch.arange(ax.t)).all())
            groups.append((name, kept, members[kept], ax.t, identity))
            if weighted_kinds and ax.kind in weighted_kinds:
                weighted[name] = weighted_kinds[ax.kind]
        return cls(groups, weighted) if groups else None


@dataclass
class Sums:
    """Everything accumulated over the calibration batch."""

    norms: dict[str, torch.Tensor] = field(default_factory=dict)  # axis -> sum over tokens of member norms
    expert_sum: dict[str, torch.Tensor] = field(default_factory=dict)  # experts axis -> sum of weighted output norms
    expert_count: dict[str, torch.Tensor] = field(default_factory=dict)  # experts axis -> tokens routed
    cos_sum: dict[str, dict[int, float]] = field(default_factory=dict)  # layer list -> layer -> sum of cos
    cos_count: dict[str, dict[int, int]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # sites that actually ran
    # (site path, axis) -> [per-member weight column norm, per-member sum over tokens of x^2]
    weighted: dict[tuple[str, str], list[torch.Tensor]] = field(default_factory=dict)

    def add_norms(self, site: Site, x: torch.Tensor, module=None, path: str = "") -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        for start in range(0, x.shape[0], TOKEN_CHUNK):
            chunk = x[start:start + TOKEN_CHUNK].float()
            for name, kept, members, t, identity in site.groups:
                if name in site.weighted and module is not None:
                    self._add_weighted(path, name, chunk, module if site.weighted[name] else None, kept, members, t)
                    continue
                if identity:
                    got = chunk.abs().sum(0)
                else:
                    sq = chunk[:, kept.to(chunk.device)].pow(2)
                    per = torch.zeros(chunk.shape[0], t, device=chunk.device).index_add_(1, members.to(chunk.device), sq)
                    got = per.sqrt().sum(0)
                got = got.double().cpu()
                self.norms[name] = self.norms[name] + got if name in self.norms else got

    def _add_weighted(self, path: str, name: str, chunk: torch.Tensor, module, kept: torch.Tensor,
                      members: torch.Tensor, t: int) -> None:
        """Wanda's |W| * ||x|| per member, over every element it owns: the column norm of the
        weight (how strongly the layer reads the member; 1 with no ``module``) and the sum of
        squares of its activations; the square root is taken once all tokens are in
        (``weighted_scores``)."""
        key = (path, name)
        dev = chunk.device
        sq = torch.zeros(t, dtype=torch.float64).index_add_(0, members, chunk[:, kept.to(dev)].pow(2).sum(0).double().cpu())
        if key not in self.weighted:
            if module is None:
                norm = torch.ones(t, dtype=torch.float64)
            else:
                cols = module.weight.detach().float().pow(2).sum(1 - linear_input_dim(module))  # one per input element
                norm = torch.zeros(t, dtype=torch.float64).index_add_(0, members, cols[kept.to(cols.device)].double().cpu())
                norm = norm.sqrt()
            self.weighted[key] = [norm, sq]
        else:
            self.weighted[key][1] += sq

    def weighted_scores(self, tokens: int) -> dict[str, torch.Tensor]:
        """Axis -> sum over the sites that read it of column norm x activation L2 (per token)."""
        out: dict[str, torch.Tensor] = {}
        for (_, name), (norm, sq) in self.weighted.items():
            got = norm * (sq / max(tokens, 1)).sqrt()
            out[name] = out[name] + got if name in out else got
        return out


def linear_input_dim(module) -> int | None:
    """Which dimension of the module's weight its input runs along (None: not a linear layer)."""
    if isinstance(module, torch.nn.Linear):
        return 1
    if type(module).__name__ == "Conv1D":  # GPT-2: weight [in, out]
        return 0
    return None


def has_experts_interface(module) -> bool:
    try:
        params = inspect.signature(type(module).forward).parameters
    except (TypeError, ValueError):
        return False
    return "top_k_index" in params and "top_k_weights" in params


@dataclass
class Sites:
    linears: dict[str, Site] = field(default_factory=dict)  # module path -> its input
    experts: dict[str, str] = field(default_factory=dict)  # experts module path -> experts axis
    packed: dict[tuple[str, str], Site] = field(default_factory=dict)  # (experts module, param) -> F.linear input
    layers: dict[str, tuple[str, int, str | None]] = field(default_factory=dict)  # layer module -> (list, index, hidden)


def find_sites(plan, view, *, hidden_from: str = "residual") -> Sites:
    """The sites of a plan's tensors in the model ``view`` wraps (a ``bindings.ModelView``)."""
    table = plan.axes
    sites = Sites()
    skip = frozenset({"hidden"}) if hidden_from == "residual" else frozenset()
    # weighted: hidden channels by |W| ||x|| over every reader; query heads by their output's energy over all
    # tokens (L2, not the mean of per-token norms: measured better on SmolLM2, bench/selection_quality.py)
    weighted = {"hidden": True, "q-heads": False} if hidden_from == "weighted" else None
    by_module: dict[str, list] = {}
    for job in plan.jobs:
        owner = view.owner(job.source.name)
        module = owner.module
        if module is None:
            continue
        by_module.setdefault(owner.module_path, []).append((job, owner))
        d = linear_input_dim(module)
        if d is not None and owner.key == f"{owner.module_path}.weight" and len(job.layouts) == 2:
            site = Site.of(table, job.layouts[d], skip, weighted)
            if site is not None:
                sites.linears[owner.module_path] = site
        elif has_experts_interface(module) and len(job.layouts) >= 2:
            param = owner.key.rsplit(".", 1)[-1]
            if (owner.module_path, param) not in sites.packed:
                site = Site.of(table, job.layouts[-1], skip)
                if site is not None:
                    sites.packed[(owner.module_path, param)] = site
    for path, entries in by_module.items():
        if has_experts_interface(view.modules[path]):
            sites.experts[path] = _experts_axis(table, path, entries, view)
    sites.layers = _layers(plan, view, table)
    return sites


def _experts_axis(table: AxisTable, path: str, entries, view) -> str:
    """The plan's experts axis for this module, else ``{moe block}:experts`` (teacher naming)."""
    for job, _ in entries:
        for layout in job.layouts:
            for leaf in table.leaves(layout):
                if table[leaf].kind == "experts":
                    return leaf
    name = entries[0][0].source.name
    layer = _layer_prefix(name)
    scoped = [a.name for a in table.axes.values() if a.kind == "experts" and layer
              and a.name.startswith((layer + ".", layer + ":"))]
    if len(scoped) == 1:
        return scoped[0]
    block = name.split(".experts", 1)[0] if ".experts" in name else name.rsplit(".", 2)[0]
    return f"{block}:experts"


def _layer_prefix(name: str) -> str:
    parts = name.split(".")
    for k, part in enumerate(parts):
        if part.isascii() and part.isdigit():
            return ".".join(parts[:k + 1])
    return ""


def _layers(plan, view, table: AxisTable) -> dict[str, tuple[str, int, str | None]]:
    """Module path of every layer of the outermost layer lists -> (list prefix, index, its hidden axis)."""
    names = list(plan.teacher.tensors)
    prefixes = set(depths(names))
    outer = {p for p in prefixes if not any(p != q and p.startswith(q + ".") for q in prefixes)}
    lists = {path for path, m in view.modules.items() if isinstance(m, torch.nn.ModuleList)}
    hidden_of: dict[str, Counter] = {}
    for job in plan.jobs:
        layer = _layer_prefix(job.source.name)
        for layout in job.layouts:
            for leaf in table.leaves(layout):
                if table[leaf].kind == "hidden":
                    hidden_of.setdefault(layer, Counter())[leaf] += 1
    out = {}
    for name in names:
        parts = name.split(".")
        for k in range(len(parts) - 1):
            prefix = ".".join(parts[:k])
            if prefix in outer and parts[k].isascii() and parts[k].isdigit():
                index = int(parts[k])
                path = _module_layer(view.owner(name).key, lists)
                if path is not None and path not in out:
                    counts = hidden_of.get(".".join(parts[:k + 1]))
                    out[path] = (prefix, index, counts.most_common(1)[0][0] if counts else None)
                break
    return out


def _module_layer(key: str, lists: set[str]) -> str | None:
    parts = key.split(".")
    for k in range(1, len(parts)):
        if ".".join(parts[:k]) in lists and parts[k].isascii() and parts[k].isdigit():
            return ".".join(parts[:k + 1])
    return None


# --------------------------------------------------------------------------- probes

def probe_class():
    from accelerate.hooks import ModelHook

    class Probe(ModelHook):
        """Reads a module's inputs (and outputs) while accelerate has its weights loaded."""

        def __init__(self, before=None, after=None):
            self.before, self.after = before, after
            self.args = self.kwargs = None

        def pre_forward(self, module, *args, **kwargs):
            if self.before is not None:
                self.before(module, args, kwargs)
            if self.after is not None:
                self.args, self.kwargs = args, kwargs
            return args, kwargs

        def post_forward(self, module, output):
            if self.after is not None:
                self.after(module, self.args, self.kwargs, output)
                self.args = self.kwargs = None
            return output

    return Probe


def attach(model, view, sites: Sites, sums: Sums, *, hidden_from: str = "residual") -> None:
    """Put probes on the model's modules (before accelerate's offloading hooks are added)."""
    from accelerate.hooks import add_hook_to_module

    Probe = probe_class()
    for path, site in sites.linears.items():
        def read(module, args, kwargs, output, site=site, path=path):
            x = args[0] if args else kwargs.get("input", kwargs.get("x"))
            if x is not None:
                sums.add_norms(site, x, module, path)
                sums.seen.add(path)
        # read after the forward: a weighted site needs the module's weights, which the offloading
        # hook (after this probe) loads in its pre_forward and drops in its post_forward
        add_hook_to_module(view.modules[path], Probe(after=read))
    for path, axis in sites.experts.items():
        packed = {param: site for (p, param), site in sites.packed.items() if p == path}
        add_hook_to_module(view.modules[path], Probe(after=_expert_scorer(axis, packed, sums, path)))
    for path, (prefix, index, hidden) in sites.layers.items():
        residual = hidden if hidden_from == "residual" else None
        add_hook_to_module(view.modules[path], Probe(after=_layer_scorer(prefix, index, residual, sums, path)))


def first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], torch.Tensor):
        return obj[0]
    first = getattr(obj, "last_hidden_state", None)
    if isinstance(first, torch.Tensor):
        return first
    if hasattr(obj, "values"):
        for v in obj.values():
            if isinstance(v, torch.Tensor):
                return v
    return None


def _layer_scorer(prefix: str, index: int, residual: str | None, sums: Sums, path: str):
    def after(module, args, kwargs, output):
        give_back_memory()  # the layer's weights are off the model again: keep memory flat in depth
        x = args[0] if args else kwargs.get("hidden_states")
        y = first_tensor(output)
        if not isinstance(x, torch.Tensor) or y is None or x.shape != y.shape:
            return  # not a hidden -> hidden block: no block influence
        cos = torch.nn.functional.cosine_similarity(x.detach().float(), y.detach().float(), dim=-1)
        sums.cos_sum.setdefault(prefix, {})[index] = sums.cos_sum.get(prefix, {}).get(index, 0.0) + float(cos.sum())
        sums.cos_count.setdefault(prefix, {})[index] = sums.cos_count.get(prefix, {}).get(index, 0) + cos.numel()
        if residual is not None:
            got = x.detach().reshape(-1, x.shape[-1]).float().abs().sum(0).double().cpu()
            sums.norms[residual] = sums.norms[residual] + got if residual in sums.norms else got
        sums.seen.add(path)
    return after


class _LinearInputs(TorchFunctionMode):
    """Inside an experts module: the input of every F.linear whose weight is one of its packed
    parameters (an expert's slice shares the parameter's storage)."""

    def __init__(self, by_storage: dict[int, Site], sums: Sums):
        super().__init__()
        self.by_storage, self.sums = by_storage, sums

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            site = self.by_storage.get(weight.untyped_storage().data_ptr()) if weight is not None else None
            if site is not None:
                self.sums.add_norms(site, args[0] if args else kwargs["input"])
        return func(*args, **kwargs)


def _expert_scorer(axis: str, packed: dict[str, Site], sums: Sums, path: str):
    def after(module, args, kwargs, output):
        bound = inspect.signature(type(module).forward).bind(module, *args, **kwargs).arguments
        hidden, index, weights = bound.get("hidden_states"), bound.get("top_k_index"), bound.get("top_k_weights")
        if hidden is None or index is None or weights is None:
            return
        n = _num_experts(module, index)
        total = torch.zeros(n, dtype=torch.float64)
        count = torch.zeros(n, dtype=torch.float64)
        by_storage = {getattr(module, p).untyped_storage().data_ptr(): site for p, site in packed.items()
                      if isinstance(getattr(module, p, None), torch.Tensor)}
        with torch.no_grad(), _LinearInputs(by_storage, sums):
            for e in torch.unique(index).tolist():
                if not 0 <= e < n:
                    continue
                rows, pos = torch.where(index == e)
                x = hidden[rows]
                w = weights[rows, pos].unsqueeze(-1).to(hidden.dtype)
                y = module._old_forward(x, torch.full((len(rows), 1), e, dtype=index.dtype, device=index.device), w)
                total[e] += float(y.float().norm(dim=-1).sum())
                count[e] += len(rows)
        sums.expert_sum[axis] = sums.expert_sum.get(axis, torch.zeros(n, dtype=torch.float64)) + total
        sums.expert_count[axis] = sums.expert_count.get(axis, torch.zeros(n, dtype=torch.float64)) + count
        sums.seen.add(path)
    return after


def _num_experts(module, index: torch.Tensor) -> int:
    for name in ("num_experts", "num_local_experts", "n_routed_experts"):
        value = getattr(module, name, None)
        if isinstance(value, int) and value > 0:
            return value
    for p in module.parameters(recurse=False):
        return p.shape[0]
    return int(index.max()) + 1
