"""The transformers route, paid once: what the bindings derivation answered, kept on disk.

Deriving the bindings of a Hugging Face pair (config.json beside the teacher's weights and
the template's) imports transformers and builds both models on the meta device: seconds and
hundreds of MB before the first byte moves. What comes out is small and depends only on the
two configs, the tensor names and shapes, the run's options and the versions of transformers,
torch and slicer's own code. So the first run *records* every answer the plan got from the
binder (the layer kinds, the components, each tensor's layouts, the axes each answer added
to the table), and a later run with the same key *replays* them without importing
transformers or torch.

A replayed answer is only given to the very question it answered: the plan's calls are
checked one by one against the recording, and the first that differs raises ``Stale``, on
which the caller plans again with the derived binder. An entry whose checksum, key or
format does not match is ignored (and overwritten). Entries live in ``$SLICER_CACHE``, else
``$XDG_CACHE_HOME/slicer``, else ``~/.cache/slicer`` (as huggingface_hub keeps its cache),
under ``routes/``; deleting the folder is always safe.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from ..axes import Axis, AxisTable, Binder

log = logging.getLogger("slicer")

FORMAT = 2  # 2: an axis records whether it is nested (query heads chosen per kv head)
CACHE_ENV = "SLICER_CACHE"
_PACKAGE = Path(__file__).resolve().parents[1]  # slicer/: every module of the package is in the key


class Stale(Exception):
    """A replayed plan asked a question the recording does not hold; ``derive()`` gives the binder to plan with."""

    def __init__(self, message: str, derive: Callable[[], Binder]):
        super().__init__(message)
        self.derive = derive


def cache_dir() -> Path:
    """Where slicer keeps what it may recompute: $SLICER_CACHE, else $XDG_CACHE_HOME/slicer, else ~/.cache/slicer."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "slicer"


def versions() -> dict[str, str]:
    """What the derivation's code is: the releases it runs, and slicer's own source (an editable
    checkout changes without a new version number, so its files' sizes and times count too)."""
    out = {}
    for dist in ("transformers", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    from ..version import __version__

    h = hashlib.sha256(__version__.encode())
    for path in sorted(_PACKAGE.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(_PACKAGE)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    out["slicer"] = f"{__version__}+{h.hexdigest()[:16]}"
    return out


def key_of(parts: dict) -> str:
    """sha256 of the parts as canonical JSON."""
    return hashlib.sha256(_canonical(parts)).hexdigest()


def cached(derive: Callable[[object], Binder], parts: dict) -> Callable[[object], Binder]:
    """A ``StudentSpec.make_binder``: the recorded binder where the cache holds this key, else
    ``derive(options)`` recorded on its way. ``parts`` is everything the derivation depends on
    besides the options and the versions (configs, tensor names and shapes)."""
    def make(options) -> Binder:
        if not getattr(options, "route_cache", True):
            return derive(options)
        key = key_of({"format": FORMAT, "parts": parts, "options": options.as_dict(), "versions": versions()})
        path = cache_dir() / "routes" / f"{key}.json"
        entry = load(path, key)
        if entry is not None:
            log.debug("bindings replayed from %s", path)
            return Replay(entry, lambda: derive(options))
        return Recorder(derive(options), path, key)

    return make


# ------------------------------------------------------------------ entries on disk

def load(path: Path, key: str) -> dict | None:
    """The entry's payload, or None where it is absent, unreadable, corrupt or for another key."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        entry = json.loads(raw)
        payload = entry["payload"]
        ok = (entry.get("format") == FORMAT and entry.get("key") == key
              and entry.get("sha256") == hashlib.sha256(_canonical(payload)).hexdigest())
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        ok = False
    if not ok:
        log.warning("%s: ignoring a damaged bindings cache entry (the bindings are derived again)", path)
        return None
    return payload


def store(path: Path, key: str, payload: dict) -> None:
    """Written whole or not at all (a temporary file renamed); a cache that cannot be written only costs time."""
    entry = {"format": FORMAT, "key": key, "sha256": hashlib.sha256(_canonical(payload)).hexdigest(), "payload": payload}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(entry, separators=(",", ":")).encode())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        log.warning("%s: cannot keep the bindings for the next run (%s); pass --no-cache to skip it", path,
                    e.strerror or e)


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _plain(obj):
    """Tuples as lists, as JSON gives them back: recorded and asked questions compare equal."""
    if isinstance(obj, (tuple, list)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _layout(obj):
    """A layout (or None) back from JSON: segments and the layout itself are tuples."""
    return None if obj is None else tuple(tuple(seg) for seg in obj)


def _axis_json(ax: Axis) -> list:
    return [ax.name, ax.kind, ax.t, ax.s, _plain(ax.parts), ax.nested]


def _axis(obj) -> Axis:
    name, kind, t, s, parts, nested = obj
    return Axis(name, kind, t, s, _layout(parts), bool(nested))


# ------------------------------------------------------------------ record and replay

class Recorder(Binder):
    """The derived binder, with every answer written down; kept once the plan has finished."""

    def __init__(self, inner: Binder, path: Path, key: str):
        self.inner, self.path, self.key = inner, path, key
        self.name = inner.name
        self.calls: list = []

    def _call(self, method: str, args: list, table: AxisTable | None, fn: Callable):
        before = dict(table.axes) if table is not None else {}
        result = fn()
        added = [] if table is None else [_axis_json(ax) for n, ax in table.axes.items() if before.get(n) is not ax]
        removed = [] if table is None else [n for n in before if n not in table.axes]
        self.calls.append([method, _plain(args), _plain(result), added, removed])
        return result

    def layer_kinds(self):
        return self._call("layer_kinds", [], None, self.inner.layer_kinds)

    def component(self, student_prefix, teacher_prefix, t, s, table):
        return self._call("component", [student_prefix, teacher_prefix, t, s], table,
                          lambda: self.inner.component(student_prefix, teacher_prefix, t, s, table))

    def bind(self, student_name, teacher_name, tshape, sshape, table):
        return self._call("bind", [student_name, teacher_name, tshape, sshape], table,
                          lambda: self.inner.bind(student_name, teacher_name, tshape, sshape, table))

    def unbound(self, student_name, d, t, s, table):
        return self._call("unbound", [student_name, d, t, s], table,
                          lambda: self.inner.unbound(student_name, d, t, s, table))

    def finish(self, jobs, layer_maps):
        self.inner.finish(jobs, layer_maps)
        if type(self.inner).finish is not Binder.finish:
            return  # a binder that vouches for the index sets themselves is asked every time
        store(self.path, self.key, {"name": self.name, "calls": self.calls})


class Replay(Binder):
    """The recorded answers, given back in order to the same questions."""

    def __init__(self, payload: dict, derive: Callable[[], Binder]):
        self.name = payload["name"]
        self.calls = payload["calls"]
        self.derive = derive
        self.next = 0

    def _answer(self, method: str, args: list, table: AxisTable | None):
        call = self.calls[self.next] if self.next < len(self.calls) else None
        if call is None or call[0] != method or call[1] != _plain(args):
            raise Stale(f"the bindings cache holds no answer to {method}{tuple(args)}", self.derive)
        self.next += 1
        _, _, result, added, removed = call
        if table is not None:
            for name in removed:
                del table.axes[name]
            for obj in added:
                ax = _axis(obj)
                table.axes.pop(ax.name, None)  # a refined axis moves to the end, as AxisTable.refine leaves it
                table.axes[ax.name] = ax
        return result

    def layer_kinds(self):
        return {p: (tuple(t), tuple(s)) for p, (t, s) in self._answer("layer_kinds", [], None).items()}

    def component(self, student_prefix, teacher_prefix, t, s, table):
        return self._answer("component", [student_prefix, teacher_prefix, t, s], table)

    def bind(self, student_name, teacher_name, tshape, sshape, table):
        result = self._answer("bind", [student_name, teacher_name, tshape, sshape], table)
        return None if result is None else tuple(_layout(x) for x in result)

    def unbound(self, student_name, d, t, s, table):
        return _layout(self._answer("unbound", [student_name, d, t, s], table))

    def finish(self, jobs, layer_maps):
        if self.next != len(self.calls):
            raise Stale(f"the plan asked {self.next} of the {len(self.calls)} recorded questions", self.derive)


# ------------------------------------------------------------------ a student spec from a config

def spec_entry(parts: dict) -> tuple[Path, str, dict | None]:
    """(path, key, payload or None) of the kept student of the config route (``--set`` / ``--student-config``):
    its tensor names, shapes and sources, its manifest origin and its config.json."""
    key = key_of({"format": FORMAT, "spec": parts, "versions": versions()})
    path = cache_dir() / "routes" / f"spec-{key}.json"
    return path, key, load(path, key)


def spec_payload(tensors, origin: dict, config_json: bytes) -> dict:
    return {"name": "spec", "tensors": [[t.name, list(t.shape), t.source] for t in tensors], "origin": origin,
            "config": config_json.decode("utf-8")}
