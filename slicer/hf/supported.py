"""The releases of slicer's dependencies it is tested with, as pyproject.toml states them.

The ranges are read from the installed package's own metadata (pyproject.toml at install
time), so they are written once. A release outside its range still runs; it gets one
warning line per process, naming the range and the command that installs a release in it,
because the transformers route learns layouts by running transformers' modules, and those
change between releases.
"""
from __future__ import annotations

import logging
import re
from importlib import metadata

log = logging.getLogger("slicer")

DISTRIBUTION = "weight-slicer"
CHECKED = ("transformers", "torch", "accelerate", "huggingface_hub")
_warned: set[str] = set()


def ranges() -> dict[str, str]:
    """Distribution name -> its specifier (">=4.57,<6") from the installed metadata; {} when slicer
    runs from a checkout that is not installed."""
    try:
        requires = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return {}
    out: dict[str, str] = {}
    for req in requires:
        m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*([^;]*)", req)
        if m and m.group(2).strip():
            name = _normal(m.group(1))
            if name in {_normal(c) for c in CHECKED}:
                parts = m.group(2).replace(" ", "").split(",")  # lower bound first, as pyproject writes it
                out.setdefault(name, ",".join(sorted(parts, key=lambda p: not p.startswith(">"))))
    return out


def outside(name: str, version: str, spec: str) -> bool:
    """True when ``version`` is outside ``spec`` (local labels such as +cpu and pre-releases count as
    their release); False when either cannot be read."""
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import InvalidVersion, Version
    except ImportError:
        return False
    try:
        release = Version(Version(version).base_version)
        return release not in SpecifierSet(spec)
    except (InvalidVersion, ValueError):
        return False


def check(*names: str) -> list[str]:
    """Warn once per process for each installed distribution of ``names`` (default: all checked)
    whose release is outside slicer's range; returns the warnings given now."""
    given = []
    specs = ranges()
    for name in names or CHECKED:
        key = _normal(name)
        if key in _warned or key not in specs:
            continue
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        _warned.add(key)
        if outside(name, version, specs[key]):
            line = (f"{name} {version} is outside the range slicer is tested with ({specs[key]}); it may refuse "
                    f"or fail where a supported release works: pip install '{name}{specs[key]}'")
            log.warning("%s", line)
            given.append(line)
    return given


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
