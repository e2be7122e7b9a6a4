"""What the engine does to each student tensor under a rotation: from the plan's bindings (which
dimensions are bound to the hidden axis) and what the teacher's forward showed (``observe``).

- a dimension bound to the hidden axis is multiplied by ``Qk`` (the roles below differ only in
  the gain folded in); bound inside a composite layout (``hidden | x``) it cannot be: refused;
- a norm site's gain: filled with the site's student gain;
- a reader of a site (its last dimension hidden): ``W diag(g) Qk``, g the site's teacher gain;
  the output embedding reads the last site;
- anything else bound to the hidden axis (the embedding, the writers and their biases):
  ``Qk`` on those dimensions, nothing folded. A writer needs no site, so its module need not
  have run (a multimodal projector's last linear, in a text forward); a matrix other than the
  embedding whose last dimension is hidden-bound reads the residual stream: if it was not seen
  reading a site, it is refused rather than guessed.
"""
from __future__ import annotations

from ..axes import format_layout
from ..errors import SlicerError
from ..plan.build import Plan
from ..run.rotate import Op
from .observe import Observed


def hidden_axis(plan: Plan, seen: Observed) -> str:
    """The language model's hidden axis: the one the input embedding's last dimension is bound to."""
    names = set(seen.sources.get(seen.embedding or "", [])) | {seen.embedding}
    for job in plan.jobs:
        if job.source.name in names and job.layouts:
            return next(f for seg in job.layouts[-1] for f in seg if isinstance(f, str))
    return f"{seen.text_config}hidden"


def residual_sites(plan: Plan, seen: Observed) -> list[str]:
    """The observed norm sites whose gain the plan binds to the hidden axis. An RMSNorm over a width that
    merely equals d (MLA's ``q_a_layernorm`` where ``q_lora_rank == hidden_size``) passes the forward's
    test but normalizes something else: its gain is bound to its own axis. Sites of layers the
    student leaves out are not in the plan: kept (their statistics are the teacher's residual stream)."""
    axis = hidden_axis(plan, seen)
    bound = {job.source.name: job.layouts[0] == ((axis,),) for job in plan.jobs if len(job.shape) == 1}
    return [site for site in seen.sites
            if all(bound.get(n, True) for n in seen.sources.get(f"{site}.weight", []))]


def ops(plan: Plan, seen: Observed, site_gains: dict, where: str) -> tuple[dict[str, Op], dict[str, dict]]:
    """(op per student tensor, its manifest record)."""
    axis = hidden_axis(plan, seen)
    embedding = set(seen.sources.get(seen.embedding or "", []))
    # the head's checkpoint names (a tied head resolves to the embedding's: that one is the embedding)
    head = {seen.head} | {n for n in seen.sources.get(seen.head or "", []) if n not in embedding}
    modules_of: dict[str, set[str]] = {}  # a tied tensor belongs to several modules
    for key, found in seen.sources.items():
        for n in found:
            modules_of.setdefault(n, set()).add(key.rsplit(".", 1)[0])
    out: dict[str, Op] = {}
    records: dict[str, dict] = {}
    for job in plan.jobs:
        dims = []
        for d, layout in enumerate(job.layouts):
            if any(f == axis for seg in layout for f in seg):
                if layout != ((axis,),):
                    raise SlicerError(f"{where}: tensor {job.source.name!r} binds the hidden axis inside "
                                      f"{format_layout(layout)} (dimension {d}): --hidden rotate cannot multiply it")
                dims.append(d)
        if not dims:
            continue
        last = len(job.shape) - 1
        src = job.source.name
        if src in seen.norm_tensors and job.name not in head:
            site = seen.norm_tensors[src]
            out[job.name] = Op("fill", value=float(site_gains[site]))
            records[job.name] = {"role": "norm", "site": site, "value": float(site_gains[site])}
            continue
        site = seen.sites[-1] if job.name in head else seen.reader_tensors.get(src)
        if site is not None and last not in dims:
            site = None  # a module that reads the norm and writes the residual (packed experts): this tensor writes
        if site is not None:
            if dims != [last]:
                raise SlicerError(f"{where}: tensor {src!r} reads the norm {site} but its hidden axis is dimension "
                                  f"{dims}, not the last: --hidden rotate cannot fold the gain")
            out[job.name] = Op("rotate", tuple(dims), scale=seen.gains[site])
            records[job.name] = {"role": "reader", "dims": dims, "site": site,
                                 "gain": seen.sources.get(f"{site}.weight", [f"{site}.weight"])[0]}
            continue
        if len(job.shape) > 1 and last in dims and src not in embedding:
            # A writer needs no site (its hidden dimension is an output: Qk^T W, a bias Qk^T b), so a module the
            # text forward does not run (a multimodal projector's last linear) may be one; a matrix whose last
            # dimension is the hidden axis reads the residual stream, through a norm that was not seen.
            modules = modules_of.get(src, set())
            how = "did not run in the teacher's text forward" if modules and not modules & seen.ran else \
                "was not seen reading the output of any norm site"
            raise SlicerError(f"{where}: tensor {src!r} reads the hidden axis but its module "
                              f"{min(modules) if modules else '?'} {how}, so its role under a rotation is unknown")
        out[job.name] = Op("rotate", tuple(dims))
        records[job.name] = {"role": "embedding" if src in embedding else "writer",
                             "dims": dims}
    return out, records
