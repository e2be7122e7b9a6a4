"""The checkout's kernels/ folder never shadows PyPI's ``kernels`` (transformers >= 5.25 imports it
when a model is built), while ``slicer.kernels`` keeps importing.

Each check runs in a fresh interpreter whose current directory is the repository root: that is
where ``python -m ...`` puts the root first on sys.path, and where the shadowing happened.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_at_root(code: str) -> subprocess.CompletedProcess:
    # "-c" puts "" (the current directory: the root) first on sys.path, as "python -m" does
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_transformers_own_import_of_kernels_gets_the_distribution_from_the_repository_root():
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed")
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("kernels")
    except PackageNotFoundError:
        pytest.skip("PyPI's kernels is not installed (transformers < 5.25 does not need it)")
    code = ("import os, sys, transformers.integrations.hub_kernels as hub\n"
            "import kernels\n"
            "from kernels import LayerRepository, Mode\n"  # names the checkout's folder does not have
            "print(os.path.realpath(kernels.__file__))\n"
            "print(sys.path[0] == '')\n")
    r = run_at_root(code)
    assert r.returncode == 0, r.stderr[-2000:]
    where, first = r.stdout.split()
    assert first == "True"  # the root really was first on the path
    assert not Path(where).is_relative_to(ROOT / "kernels"), where
    assert Path(where).is_relative_to(Path(dist.locate_file("")).resolve()), where


def test_a_model_with_hub_kernels_builds_from_the_repository_root():
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed")
    code = ("import torch, transformers\n"
            "cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,\n"
            "                               num_attention_heads=2, num_key_value_heads=1, vocab_size=64)\n"
            "with torch.device('meta'):\n"
            "    transformers.LlamaForCausalLM(cfg)\n"
            "print('built')\n")
    r = run_at_root(code)
    assert r.returncode == 0 and r.stdout.strip() == "built", r.stderr[-2000:]


def test_slicer_kernels_still_imports_from_the_repository_root():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    r = run_at_root("import slicer.kernels, os; print(os.path.realpath(slicer.kernels.__file__))")
    assert r.returncode == 0, r.stderr[-2000:]
    assert Path(r.stdout.strip()) == (ROOT / "kernels" / "__init__.py").resolve()


def test_the_folder_imported_as_kernels_without_the_distribution_reads_as_absent():
    """No distribution (transformers < 5.25 does not need one): transformers probes ``kernels`` by importing
    it, and must find nothing it takes for an install (no __file__, no __version__) and no Triton code run
    under a foreign name, instead of an error that breaks its own import."""
    code = ("import sys, importlib.machinery\n"
            "_find = importlib.machinery.PathFinder.find_spec\n"
            "def find(name, path=None, target=None):\n"
            "    spec = _find(name, path, target)\n"
            "    return None if name == 'kernels' and spec is not None and 'site-packages' in (spec.origin or '') else spec\n"
            "importlib.machinery.PathFinder.find_spec = staticmethod(find)\n"  # an installed one is hidden
            "import kernels\n"
            "print(kernels.__file__, hasattr(kernels, '__version__'), 'slicer.kernels' in sys.modules,\n"
            "      'triton' in sys.modules, kernels.__spec__.origin.endswith('kernels/__init__.py'))\n")
    r = run_at_root(code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["None", "False", "False", "False", "True"]
