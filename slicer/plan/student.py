"""The student's specification: tensor names and shapes, and its config.json.

From a template checkpoint only the headers are read: what ``save_file`` or
``save_pretrained`` of a randomly initialized student writes is enough.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..io.checkpoint import Checkpoint
from ..axes import Binder, Ranking
from .build import Options, StudentTensor


@dataclass
class StudentSpec:
    tensors: list[StudentTensor]
    origin: dict  # for the manifest: where the spec came from
    folder: Path | None = None  # the student's own folder, if any (never written to)
    files: dict[str, bytes] = field(default_factory=dict)  # config.json and friends for OUT
    # What the student's structure says about each tensor dimension: the flat binder knows
    # nothing (the paper's per-size rule); a config (the config route, or a template folder
    # with a config.json beside the teacher's) gives the model's own axes.
    make_binder: Callable[[Options], Binder] = lambda options: Binder()  # see hf.template_structure
    ranking: Ranking | None = None  # importance scores of the run (slicer.importance), if it uses them


def from_template(ckpt: Checkpoint) -> StudentSpec:
    """The student of a template checkpoint (opened by the caller: a local path or a URL)."""
    path = ckpt.path
    tensors = [StudentTensor(info.name, info.shape) for info in ckpt.tensors.values()]
    files = {}
    config = ckpt.config_path()
    if config is not None:
        files["config.json"] = config.read_bytes()
    origin = {"template": str(Path(path).resolve()), "files": [f.name for f in ckpt.files]}
    return StudentSpec(tensors, origin, ckpt.folder, files)
