"""The teacher's forward pass, streamed: one module's weights in memory at a time.

The model is built by transformers with empty weights (accelerate's ``init_empty_weights``:
parameters on the meta device, buffers real), then accelerate's offloaded execution
(``attach_align_device_hook`` with ``offload=True``) puts every module's weights on the
execution device just before the module runs and back on the meta device right after. The
weights come from ``CheckpointWeights``, a lazy map from the model's parameter names to
tensors read from the teacher's safetensors through the slicer's own reader; checkpoint
names that are not the model's own (legacy renamings, per-expert tensors packed into one)
go through transformers' own conversion mapping, the one ``from_pretrained`` applies.

An FP8 teacher (``quant_method: fp8``) runs dequantized: the model is built from its config
without the ``quantization_config`` (plain float Linear layers), and a weight stored as FP8 beside
a ``*_scale_inv`` is read times its block scales by the engine's own dequantizing arithmetic
(slicer.run.dequant: transformers', bit for bit); a static scheme's ``activation_scale`` is not
applied. An MXFP4 teacher (gpt-oss) runs likewise: each packed ``X_blocks`` / ``X_scales`` pair is
read as the model's float ``X``, unpacked by the same code as the gather (transformers'
``convert_moe_packed_tensors``, bit for bit). The teacher measured is the dequantized one, as a
float ``--dtype`` writes it.

So memory is the weights of one module (the largest: an embedding table or a layer's packed
experts) plus the activations of the calibration batch, which are carried from layer to
layer by the model's own forward: no per-architecture forward code.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from ..io.checkpoint import Checkpoint
from ..errors import SlicerError
from ..io.reader import TeacherReader
from ..io.format import BITS_DTYPE, DTYPES, TensorInfo
from ..plan.quantized import FP8_DTYPES, logical_tensor, scale_name, teacher_scheme

log = logging.getLogger("slicer")
MX_BLOCKS, MX_SCALES = "_blocks", "_scales"  # gpt-oss's packed experts: X_blocks, X_scales (slicer.plan.quantized)
INSTALL_HINT = "pip install 'weight-slicer[hf]'"


def import_accelerate():
    try:
        import accelerate  # noqa: F401
    except ImportError as e:
        raise SlicerError(f"scoring a teacher needs accelerate and transformers ({e}); install them with "
                          f"{INSTALL_HINT}") from e
    return accelerate


def empty_model(config_path: Path, dtype: torch.dtype = torch.float32):
    """The teacher's model class built from its config.json with no weights (params on meta)."""
    import_accelerate()
    from accelerate import init_empty_weights

    from ..hf import common as hf

    transformers = hf.import_transformers()
    config_dict = dict(hf.read_json(config_path))
    quantization = config_dict.pop("quantization_config", None)
    if quantization:
        method = quantization.get("quant_method", "?") if isinstance(quantization, dict) else "?"
        if method not in ("fp8", "mxfp4"):
            raise SlicerError(f"{config_path}: the teacher is quantized ({method}); the streamed forward reads floating, "
                              "FP8 and MXFP4 weights only (dequantized); dequantize the teacher first")
        # plain float Linear layers and experts, fed the dequantized weights (CheckpointWeights); a static
        # FP8 scheme's activation scales are not applied: the teacher measured is the dequantized one
    cls = hf.config_class(transformers, config_dict, config_path)
    config = hf.build_config(cls, config_dict, str(config_path))
    arch = hf.architecture(transformers, config_dict, str(config_path))
    # Eager experts: every expert is a plain F.linear call, which the expert scorer relies on.
    with contextlib.suppress(Exception):
        config._experts_implementation = "eager"
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with hf.quiet(), init_empty_weights(include_buffers=False):
            model = arch(config)
    except SlicerError:
        raise
    except Exception as e:
        raise SlicerError(f"{config_path}: {arch.__name__} cannot be built from this config: {hf.first_line(e)}") from e
    finally:
        torch.set_default_dtype(previous)
    with contextlib.suppress(Exception):
        model.tie_weights()  # as from_pretrained does: a tied head reads the embedding the checkpoint holds
    return model.eval()


class CheckpointWeights(Mapping):
    """Model parameter name -> its tensor, read from the teacher's files when asked for.

    Keys are the model's own names; each resolves to the checkpoint tensor(s) it is loaded
    from, renamed or converted (packed experts, fused projections) by transformers' own
    conversion mapping; a tied parameter resolves to the one the checkpoint holds."""

    def __init__(self, ckpt: Checkpoint, model, dtype: torch.dtype = torch.float32):
        self.ckpt = ckpt
        self.model = model
        self.dtype = dtype
        self.reader = TeacherReader()
        # FP8 weights are read dequantized (their ``*_scale_inv`` siblings are not model parameters)
        self.scheme = teacher_scheme(ckpt)
        self.packed: dict[str, tuple[TensorInfo, TensorInfo]] = {}  # MXFP4: model key -> (X_blocks, X_scales)
        self.sources: dict[str, list[tuple[str, str | None]]] = {}  # model key -> [(checkpoint name, pattern)]
        self._converters: dict[str, object] = {}
        self._cache: dict[str, torch.Tensor] = {}  # a one-to-many conversion's other outputs, until asked for
        self._map_names()

    def _map_names(self) -> None:
        from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

        try:
            from transformers.conversion_mapping import get_model_conversion_mapping

            transforms = get_model_conversion_mapping(self.model, add_legacy=True)
        except Exception:  # noqa: BLE001 - a model transformers cannot map: names are the model's own
            transforms = []
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
        self._converters = {p: c for c in converters for p in c.source_patterns}
        meta = self.model.state_dict()
        prefix = getattr(self.model, "base_model_prefix", None)
        for name in sorted(self.ckpt.tensors, key=dot_natural_key):
            base = name[: -len(MX_BLOCKS)] if name.endswith(MX_BLOCKS) else None
            if base in meta and base + MX_SCALES in self.ckpt.tensors:  # packed experts, dequantized when read
                self.packed[base] = (self.ckpt.tensors[name], self.ckpt.tensors[base + MX_SCALES])
                # the source is the dequantized tensor as the plan names it (slicer.plan.quantized.logical_tensor)
                self.sources.setdefault(base, []).append((base, None))
                continue
            if name in meta:
                key, pattern = name, None
            else:
                key, pattern = rename_source_key(name, renamings, converters, prefix, meta)
                if key not in meta:
                    continue  # a tensor the model does not load (e.g. an unused pooler): never read
            self.sources.setdefault(key, []).append((name, pattern))
        # tied parameters: every name of one Parameter resolves to the one the checkpoint holds
        names_of: dict[int, list[str]] = {}
        for n, p in self.model.named_parameters(remove_duplicate=False):
            names_of.setdefault(id(p), []).append(n)
        for names in names_of.values():
            held = next((n for n in names if n in self.sources), None)
            for n in names:
                if held is not None and n not in self.sources:
                    self.sources[n] = self.sources[held]

    def missing(self) -> list[str]:
        """Parameters and persistent buffers of the model that the checkpoint does not hold."""
        return [n for n in self.model.state_dict() if n not in self.sources]

    def __getitem__(self, key: str) -> torch.Tensor:
        sources = self.sources.get(key)
        if sources is None:
            raise KeyError(key)
        if key in self._cache:
            return self._cache.pop(key)
        if key in self.packed:
            return self._unpacked(*self.packed[key])
        (first, pattern) = sources[0]
        if pattern is None:
            return self._read(first)
        converter = copy.deepcopy(self._converters[pattern])
        for name, pat in sources:
            converter.add_tensor(key, name, pat, lambda name=name: self._read(name))
        try:
            out = converter.convert(key, model=self.model, config=self.model.config)
        except Exception as e:  # noqa: BLE001 - transformers' conversion ops raise what they raise
            raise SlicerError(f"{self.ckpt.path}: cannot convert {first!r} into the model's {key!r}: {e}") from e
        out = {k: (v[0] if isinstance(v, list) else v) for k, v in out.items()}
        if key not in out:
            raise SlicerError(f"{self.ckpt.path}: converting {first!r} gave {sorted(out)[:3]}, not the model's {key!r}")
        self._cache = {k: v for k, v in out.items() if k != key}  # one-to-many (a fused tensor split)
        return out[key]

    def _read(self, name: str) -> torch.Tensor:
        info = self.ckpt.tensors[name]
        scale = self.ckpt.tensors.get(scale_name(name))
        if scale is not None and info.dtype in FP8_DTYPES:
            return self._dequantized(info, scale)
        dt = DTYPES[info.dtype]
        if dt.torch_dtype is None:
            raise SlicerError(f"{info.path}: tensor {name!r} has dtype {info.dtype}, which this torch cannot read")
        numel = 1
        for d in info.shape:
            numel *= d
        t = self.reader.span(info, 0, numel, dt.torch_dtype).view(info.shape)
        if dt.floating and t.dtype != self.dtype:
            t = t.to(self.dtype)  # a private copy; fp32 tensors stay views of the (file-backed) map
        return t

    def _dequantized(self, info, scale) -> torch.Tensor:
        """An FP8 weight times its block scales, whole: the engine's dequantizing gather (slicer.run.dequant,
        transformers' arithmetic) over every index."""
        from ..run.dequant import fp8

        if self.scheme is None or self.scheme.method != "fp8":
            raise SlicerError(f"{info.path}: tensor {info.name!r} has block scales but the teacher's config.json declares "
                              "no fp8 quantization_config, so their block size is unknown")
        index = [torch.arange(n, dtype=torch.int64) for n in info.shape]
        try:
            return fp8(self._bits, info, scale, self.scheme.block, index, self.dtype)
        except (RuntimeError, ValueError) as e:
            raise SlicerError(f"{info.path}: dequantizing tensor {info.name!r} failed: {e}") from e

    def _bits(self, tensor, first: int, count: int) -> torch.Tensor:
        """slicer.run.dequant's ``read``: a span of a stored tensor as same-width integers."""
        return self.reader.span(tensor, first, count, BITS_DTYPE[tensor.itemsize])

    def _unpacked(self, blocks, scales) -> torch.Tensor:
        """MXFP4 packed experts as the model's parameter [E, G*32, R], whole: the engine's dequantizing
        gather (slicer.run.dequant, transformers' ``convert_moe_packed_tensors``) over every index."""
        from ..run.dequant import mxfp4

        logical = logical_tensor(blocks, scales)
        index = [torch.arange(n, dtype=torch.int64) for n in logical.shape]
        try:
            return mxfp4(self._bits, blocks, scales, index, self.dtype).contiguous()  # the layout a float teacher loads
        except (RuntimeError, ValueError) as e:
            raise SlicerError(f"{blocks.path}: dequantizing tensor {blocks.name!r} failed: {e}") from e

    def __iter__(self) -> Iterator[str]:
        return iter(self.sources)

    def __len__(self) -> int:
        return len(self.sources)

    def close(self) -> None:
        self.reader.close()


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SlicerError(f"--device {device}: no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise SlicerError(f"--device {device!r}: {e}") from e


def _libc():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()


def give_back_memory() -> None:
    """Return the heap's free pages to the system (glibc ``malloc_trim``), after each layer.

    glibc raises its mmap threshold to the size of every large block freed (up to 32 MB), so
    once the first layer's weights are dropped the next layers' weights land on its heap, and
    the freed heap pages stay in the process: a 24-layer teacher grew by 0.7 GB over one
    forward, flat with a trim per layer (bench/importance_cost.py measures it)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:  # glibc only; elsewhere nothing to do
        trim(0)


def stream(model, weights: CheckpointWeights, device: torch.device) -> None:
    """Make ``model`` run with one module's weights on ``device`` at a time (accelerate's
    offloaded execution over ``weights``). Hooks already on a module (the scorer's probes)
    stay first, so they see the module's weights loaded."""
    from accelerate.hooks import attach_align_device_hook

    missing = weights.missing()
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SlicerError(f"{weights.ckpt.path}: the teacher's files hold no tensor for the model's {missing[0]!r}{more}; "
                          "the config does not describe these weights")
    buffers = {n for n, _ in model.named_buffers()}
    for name in list(model.state_dict()):  # persistent buffers: small, loaded once
        if name in buffers:
            module_path, _, leaf = name.rpartition(".")
            module = model.get_submodule(module_path)
            module._buffers[leaf] = weights[name].to(module._buffers[leaf].dtype).clone()
    attach_align_device_hook(model, execution_device=device, offload=True, weights_map=weights, offload_buffers=False)
