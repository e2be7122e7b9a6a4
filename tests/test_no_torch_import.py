"""The commands that never touch a tensor, and a CPU shrink without casts, run without
importing torch (its import alone takes seconds on small machines).

Each runs in a fresh interpreter, ended by an assertion on ``sys.modules``; bench/
fixed_costs.py times the same commands.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import REPO_ROOT

RUN = """
import sys
from slicer.cli import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules, "torch was imported"
assert code == 0, code
"""


def _run_without_torch(args, env) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-c", RUN, *map(str, args)], env=env, cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_import_slicer_imports_neither_torch_nor_numpy(subprocess_env):
    code = ("import sys, slicer, slicer.cli; "
            "assert not {'torch', 'numpy'} & set(sys.modules), sorted({'torch', 'numpy'} & set(sys.modules))")
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env, cwd=REPO_ROOT)


def test_help_imports_no_torch(subprocess_env):
    code = ("import sys\nfrom slicer.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env, cwd=REPO_ROOT, capture_output=True)


@pytest.mark.parametrize("fam", ["llama", "vit"])
def test_plan_shrink_and_verify_import_no_torch(ckpts, tmp_path, subprocess_env, fam):
    teacher, _ = ckpts.teacher(fam, "sharded")
    template, _ = ckpts.template(fam)
    plan = _run_without_torch(["plan", teacher, "--template", template], subprocess_env)
    assert "student tensor" in plan.stdout
    _run_without_torch(["shrink", teacher, tmp_path / "out", "--template", template, "--quiet"], subprocess_env)
    _run_without_torch(["verify", tmp_path / "out", "--quiet"], subprocess_env)


def test_a_cast_imports_torch_only_then(ckpts, tmp_path, subprocess_env):
    teacher, _ = ckpts.teacher("llama")
    template, _ = ckpts.template("llama")
    r = subprocess.run([sys.executable, "-c", RUN, "shrink", str(teacher), str(tmp_path / "out"), "--template",
                        str(template), "--dtype", "fp32", "--quiet"], env=subprocess_env, cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=120)
    assert "torch was imported" in r.stderr  # so the checks above can fail


def test_the_api_repeats_the_engine_constants_exactly():
    from slicer import job
    from slicer.plan import request
    from slicer.run import engine

    assert (request.DEFAULT_CHUNK_BYTES, job.PIPELINE_DEPTH) == (engine.DEFAULT_CHUNK_BYTES, engine.PIPELINE_DEPTH)
