"""The options of a run, written once: what the CLI and the API's keyword wrappers build.

A :class:`Request` says which student to make and how: the student's description
(template or config), how each axis is selected, where the teacher lies, how importance
ranks, and how the run writes (device, backend, OUT's rules, the rotated hidden axis,
distributed shards). It is built once, checked once (an unknown name is one line), and
passed whole to every stage below; each stage reads the fields it needs. Defaults live
here and in :class:`~slicer.plan.build.Options` (the plan's record of the selection), and
nowhere else. Pure: nothing is opened here.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SlicerError
from .build import Options

DEFAULT_SAMPLES, DEFAULT_SEQ_LEN = 32, 128  # calibration rows x tokens when importance scores on the fly
DEFAULT_CHUNK_BYTES = 32 << 20  # memory per chunk in flight (run.engine repeats it; a test keeps them equal)
DEFAULT_MAX_SHARD_SIZE = "5GB"
ATTENTION_CHOICES = ("flat", "heads")
HIDDEN_CHOICES = ("select", "rotate")


@dataclass(frozen=True)
class Request:
    # -- the student and its selection (plan, shrink, stream)
    template: str | Path | None = None  # a checkpoint whose headers give the student's names and shapes
    student_config: str | Path | None = None  # or a Hugging Face config.json ...
    config_set: Mapping = field(default_factory=dict)  # ... and/or keys edited into the teacher's (--set)
    method: str = Options.method
    seed: int = Options.seed
    layer_selection: str = Options.layer_selection
    attention: str | None = None  # None: whole heads wherever the model is known, flat with a bare template
    exclude: tuple[str, ...] = ()
    dtype: str = Options.dtype
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE
    quantized: str | None = Options.quantized
    route_cache: bool = Options.route_cache  # reuse the transformers route an earlier run derived (slicer.hf.route_cache)
    # -- where the teacher lies (a URL: slicer.remote)
    revision: str | None = None
    cache_dir: str | Path | None = None
    remote: Mapping | None = None  # RemoteOptions fields
    # -- importance: a scores file, or scoring on the fly
    scores: str | Path | None = None
    calibration: str | Path | None = None  # or importance.calibration.Source(path, field): a JSONL field, a parquet column
    samples: int = DEFAULT_SAMPLES
    seq_len: int = DEFAULT_SEQ_LEN
    device: str = "auto"  # scoring and gathering
    # -- writing (shrink only)
    backend: str = "auto"
    overwrite: bool = False
    resume: bool = False
    progress: bool = False
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    hidden: str = "select"  # "rotate": the hidden axis keeps principal components (slicer.rotation)
    rotation_weighting: str = "normalized"
    save_rotation: bool = False
    correct: str | tuple | None = None  # refits after writing (slicer.corrections): "writers,lm_head"
    correct_alpha: float = 0.1  # slicer.corrections.options.DEFAULT_ALPHA
    shards: Iterable[int] | None = None  # beyond one machine (slicer.distributed)
    executor: str | None = None
    executor_options: Mapping | None = None

    # The fields that describe the student (what plan and stream take, and what every worker
    # of a distributed run re-plans from); the rest only change how a shrink writes.
    STUDENT = ("template", "student_config", "config_set", "method", "seed", "layer_selection", "attention", "exclude",
               "dtype", "max_shard_size", "quantized", "route_cache", "revision", "cache_dir", "remote", "scores", "calibration",
               "samples", "seq_len", "device")

    @classmethod
    def of(cls, *, allowed: Iterable[str] | None = None, **options) -> "Request":
        """A request from keyword options; a name it does not know (or ``allowed`` does not
        list) is one line naming it."""
        names = {f.name for f in dataclasses.fields(cls)} if allowed is None else set(allowed)
        unknown = sorted(set(options) - names)
        if unknown:
            raise SlicerError(f"unknown option{'s' * (len(unknown) > 1)} {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(names))})")
        if options.get("config_set") is None:
            options.pop("config_set", None)
        if "exclude" in options:
            options["exclude"] = tuple(options["exclude"] or ())
        return cls(**options)

    def replace(self, **changes) -> "Request":
        return dataclasses.replace(self, **changes)

    def student_fields(self) -> dict:
        """The fields that describe the student, as keywords."""
        return {name: getattr(self, name) for name in self.STUDENT}

    @property
    def distributed(self) -> bool:
        return self.shards is not None or self.executor not in (None, "local")
