"""What an attention module does with its fused projection, seen by running it.

Transformers 5 hands every softmax attention its query, key and value states per head through
the attention-function interface (``ALL_ATTENTION_FUNCTIONS``), after the module has split,
reshaped and rotated them. So the layout of a fused projection's rows is observed, not read:

- a copy of the module is made (the model is on the meta device), its fused projection
  replaced by a stub whose output row ``r`` holds the number ``r``, every other projection by
  a stub of zeros of its output size (so nothing the size of the model is allocated);
- it is called at position 0, where rotary embeddings are the identity (cos 1, sin 0);
- a capturing attention function, registered in transformers' interface and named in the
  copy's config, receives the states and stops the forward: each (head, dim) of q, k and v
  then holds the projection row it came from.

A module that never reaches the interface (a linear attention, a model of its own code), or
whose states are no longer row numbers (a norm over the codes), is not observed: None, and
the caller falls back or refuses.
"""
from __future__ import annotations

import copy
import inspect
import logging

log = logging.getLogger("slicer")

CAPTURE = "slicer_observe"  # the attention implementation's name in transformers' interface


class _Seen(Exception):  # noqa: N818 - control flow, never escapes this module
    def __init__(self, states):
        super().__init__("captured")
        self.states = states


def _capture(module, query, key, value, *args, **kwargs):
    raise _Seen((query, key, value))


_registered = False


def _register() -> bool:
    try:
        from transformers import AttentionInterface
    except ImportError:
        return False
    global _registered
    if not _registered:
        AttentionInterface.register(CAPTURE, _capture)
        _registered = True
    return True


def _out_features(module) -> int | None:
    for name in ("out_features", "nf", "out_channels"):
        value = getattr(module, name, None)
        if isinstance(value, int) and value > 0:
            return value
    weight = getattr(module, "weight", None)
    return int(weight.shape[0]) if weight is not None and weight.dim() >= 2 else None


def _in_features(module) -> int | None:
    value = getattr(module, "in_features", None)
    if isinstance(value, int) and value > 0:
        return value
    weight = getattr(module, "weight", None)
    if weight is None or weight.dim() != 2:
        return None
    return int(weight.shape[0] if type(module).__name__ == "Conv1D" else weight.shape[1])


def fused_rows(module, leaf: str, rows: int, head_dim: int, rotary_dim: int = 0):
    """(q, k, v) as int64 tensors [heads, head_dim] of fused-projection row numbers, as the attention
    module ``module`` hands them to its attention function; None where that cannot be observed."""
    try:
        import torch
    except ImportError:
        return None
    if not _register():
        return None
    proj = dict(module.named_modules()).get(leaf)
    hidden = _in_features(proj) if proj is not None else None
    if hidden is None or _out_features(proj) != rows or rows >= 2 ** 24:  # float32 holds the row numbers exactly
        return None

    try:
        probe = copy.deepcopy(module)
    except Exception:  # noqa: BLE001 - a module that cannot be copied is not observed
        return None
    _stub_projections(probe, leaf, rows, stub)
    try:
        probe.to_empty(device="cpu")
        with torch.no_grad():
            for name, p in probe.named_parameters():
                p.fill_(1.0 if name.endswith("weight") else 0.0)  # norms: scale 1, shift 0
            for _, buf in probe.named_buffers():
                buf.zero_()
    except Exception:  # noqa: BLE001
        return None
    config = getattr(probe, "config", None)
    if config is None or not hasattr(config, "_attn_implementation_internal"):
        return None
    probe.config = copy.copy(config)
    probe.config._attn_implementation_internal = CAPTURE
    probe.eval()
    for rot in dict.fromkeys(d for d in (rotary_dim, head_dim) if d):
        states = _run(probe, hidden, rot)
        if states is not None:
            return _decode(states, rows, head_dim)
    return None


def stub(n: int, codes: bool):
    """A projection's stand-in of ``n`` outputs: output row ``r`` holds ``r`` (``codes``) or 0,
    whatever the input; so what reaches the attention function or a conv says which row it is."""
    import torch
    from torch import nn

    class Stub(nn.Module):
        def __init__(self):
            super().__init__()
            self.n, self.codes = n, codes

        def forward(self, x, *args, **kwargs):
            out = torch.arange(self.n, dtype=torch.float32) if self.codes else torch.zeros(self.n)
            return out.expand(*x.shape[:-1], self.n).contiguous()

    return Stub()


def _stub_projections(probe, leaf: str, rows: int, stub) -> None:
    """The fused projection -> row numbers; every other module holding a matrix -> zeros."""
    for path, child in list(probe.named_modules()):
        if not path or not any(p.dim() >= 2 for p in child.parameters(recurse=False)):
            continue
        n = rows if path == leaf else _out_features(child)
        if n is None:
            continue
        parent, _, name = path.rpartition(".")
        setattr(probe.get_submodule(parent) if parent else probe, name, stub(n, path == leaf))


def _run(probe, hidden: int, rot: int):
    import torch

    x = torch.zeros(1, 1, hidden)
    cos, sin = torch.ones(1, 1, rot), torch.zeros(1, 1, rot)
    offered = dict(hidden_states=x, attention_mask=None, position_embeddings=(cos, sin),
                   position_ids=torch.zeros(1, 1, dtype=torch.long), cache_position=torch.zeros(1, dtype=torch.long))
    try:
        params = inspect.signature(probe.forward).parameters
    except (TypeError, ValueError):
        return None
    kwargs = {}
    for name, p in params.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in offered:
            kwargs[name] = offered[name]
        elif p.default is inspect.Parameter.empty:
            kwargs[name] = None
    try:
        with torch.no_grad():
            probe(**kwargs)
    except _Seen as seen:
        return seen.states
    except Exception as e:  # noqa: BLE001 - any failure: not observed, the caller falls back
        log.debug("observing %s failed: %s", type(probe).__name__, e)
        return None
    return None  # the forward never reached the attention interface


def _decode(states, rows: int, head_dim: int):
    import torch

    out = []
    for t in states:
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[-1] != head_dim or t.shape[2] != 1:
            return None
        codes = t[0, :, 0, :].to(torch.float64)
        if not bool((codes == codes.round()).all()) or codes.min() < 0 or codes.max() >= rows:
            return None  # not row numbers any more (a norm or a scale over them)
        out.append(codes.to(torch.int64))
    return tuple(out)


def weights_used_before(module, inner: str, weights: list[str], width: int, lengths: tuple[int, ...]) -> int | None:
    """How many of ``weights`` (parameter paths below ``module``, in forward order) the forward of
    ``module`` has used when it first calls its submodule ``inner``: where in a chain of projections
    a norm sits. Run on the meta device (nothing is allocated) on an input [1, n, width], for the
    first n of ``lengths`` the forward accepts; None where no run gets there."""
    try:
        import torch
        from torch.overrides import TorchFunctionMode
    except ImportError:
        return None
    params = dict(module.named_parameters())
    ids = {id(params[w]): w for w in weights if w in params}
    target = dict(module.named_modules()).get(inner)
    if target is None or len(ids) != len(weights):
        return None
    used: list[str] = []
    seen: list[int] = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            for a in list(args) + list((kwargs or {}).values()):
                name = ids.get(id(a))
                if name is not None and name not in used:
                    used.append(name)
            return func(*args, **(kwargs or {}))

    def pre(_mod, _args):
        if not seen:
            seen.append(len(used))

    handle = target.register_forward_pre_hook(pre)
    try:
        for n in lengths:
            used.clear()
            seen.clear()
            try:
                with torch.no_grad(), Record():
                    module(torch.zeros(1, n, width, device="meta"))
            except Exception:  # noqa: BLE001 - a length this forward does not take: try the next
                continue
            if seen and used == [w for w in weights if w in used]:
                return seen[0]
    finally:
        handle.remove()
    return None


def merge_order(module, first: str, k: int, width: int) -> str | None:
    """How a projector that merges ``k`` vision features of ``width`` channels lays them side by side
    at the input of its first projection ``first`` (a submodule path): "inner" (k blocks of the
    channels, the channel innermost), "outer" (per channel its k features), None: not seen.

    A copy of the projector runs on k feature rows holding their own positions as values, its
    norms made identities (the question is where values go, not what they become) and ``first``
    replaced by a stub that stops the forward with what it receives."""
    try:
        import torch
        from torch import nn
    except ImportError:
        return None

    class Stop(nn.Module):
        def forward(self, x, *args, **kwargs):
            raise _Seen(x)

    try:
        probe = copy.deepcopy(module)
        for path, child in list(probe.named_modules()):
            if path and (path == first or "Norm" in type(child).__name__):
                parent, _, name = path.rpartition(".")
                setattr(probe.get_submodule(parent) if parent else probe, name,
                        Stop() if path == first else nn.Identity())
        probe.to_empty(device="cpu")
    except Exception:  # noqa: BLE001 - a projector that cannot be copied is not observed
        return None
    codes = torch.arange(k * width, dtype=torch.float32).view(k, width)
    inner, outer = codes.reshape(-1), codes.t().reshape(-1)
    for x in (codes, codes.unsqueeze(0)):
        try:
            with torch.no_grad():
                probe(x)
        except _Seen as seen:
            got = seen.states.reshape(-1) if isinstance(seen.states, torch.Tensor) else None
            if got is not None and got.shape == inner.shape:
                return "inner" if torch.equal(got, inner) else "outer" if torch.equal(got, outer) else None
        except Exception:  # noqa: BLE001 - a shape this forward does not take: try the next
            continue
    return None


def conv_input(module, proj: str, conv: str, rows: int) -> list[int] | None:
    """The ``proj`` row each channel of the convolution ``conv`` receives when ``module`` runs (a
    Gated DeltaNet: which rows of its fused projection reach its depthwise conv), or None.

    A copy runs with ``proj`` replaced by row numbers and every other projection by zeros; the
    first torch function handed the conv's weight stops it and gives up its input [1, channels, 1]."""
    try:
        import torch
        from torch.overrides import TorchFunctionMode
    except ImportError:
        return None

    source = dict(module.named_modules()).get(proj)
    hidden = _in_features(source) if source is not None else None
    if hidden is None or _out_features(source) != rows or rows >= 2 ** 24:
        return None
    try:
        probe = copy.deepcopy(module)
        for path, child in list(probe.named_modules()):
            if path and path != conv and type(child).__name__ == "Linear":
                parent, _, name = path.rpartition(".")
                setattr(probe.get_submodule(parent) if parent else probe, name,
                        stub(rows if path == proj else child.out_features, path == proj))
        probe.to_empty(device="cpu")
        with torch.no_grad():
            for _, p in probe.named_parameters():
                p.fill_(1.0)
        weight = probe.get_submodule(conv).weight
    except Exception:  # noqa: BLE001 - not observed
        return None

    derived = {id(weight)}  # the weight and what is made of it alone (a kernel may squeeze it first)

    class Stop(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            given = [a for a in list(args) + list((kwargs or {}).values()) if isinstance(a, torch.Tensor)]
            if any(id(a) in derived for a in given):
                others = [a for a in given if id(a) not in derived and a.dim() == 3]
                if others:
                    raise _Seen(others[0])
                out = func(*args, **(kwargs or {}))
                if isinstance(out, torch.Tensor):
                    derived.add(id(out))
                return out
            return func(*args, **(kwargs or {}))

    try:
        with torch.no_grad(), Stop():
            probe(torch.zeros(1, 1, hidden))
    except _Seen as seen:
        x = seen.states
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[0] != 1:
            return None
        codes = x[0, :, -1]  # the last step: the token itself, after any causal padding
        if not bool((codes == codes.round()).all()):
            return None
        return [int(c) for c in codes.tolist()]
    except Exception as e:  # noqa: BLE001
        log.debug("observing %s failed: %s", type(module).__name__, e)
    return None
