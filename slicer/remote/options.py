"""How a remote teacher is read: requests in flight, coalescing, retries, cache. Pure."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

# Kept byte ranges closer than this are fetched as one request, the gap with them.
# Fetching a gap of g bytes costs g / bandwidth; a separate request costs about one
# request's overhead (CPU on both ends, or a round trip divided by the requests in
# flight). bench/remote.py measures the crossover (docs/remote.md, bench/RESULTS.md): every
# other row kept, one request per row against the gaps bridged; one request costs
# ~0.55 ms there, so bridging pays below ~32 kB at 100 MB/s and below ~200 kB at 1 GB/s.
# A far server (tens of ms per round trip) moves it up; --coalesce-gap 0 fetches the
# fewest bytes.
DEFAULT_GAP_BYTES = 64 << 10


@dataclass(frozen=True)
class RemoteOptions:
    revision: str | None = None  # hf:// only: a branch, tag or commit (resolved to a commit once)
    cache_dir: Path | None = None  # keep fetched ranges here between runs; None: nothing on disk
    requests: int = 16  # requests in flight at once
    gap_bytes: int = DEFAULT_GAP_BYTES  # coalesce kept ranges whose gap is at most this
    max_request_bytes: int = 8 << 20  # longer runs are split, so large copies still fetch in parallel
    overfetch: float = 0.1  # bridged gap bytes at most this share of the kept bytes (fetched <= 1.1x kept)
    ahead_bytes: int | None = None  # fetched but not yet used; None: two chunk budgets (at least 64 MB)
    retries: int = 5  # after the first attempt, for dropped connections, timeouts, 5xx, 429
    backoff_s: float = 0.5  # first retry's delay; doubles per retry (with jitter), at most 30 s
    timeout_s: float = 60.0  # connect and read timeout per request
    # Bridge gaps by the costs measured during the run (adaptive.py); gap_bytes and overfetch
    # are then only the rule until it has measured. Setting either of them turns it off.
    adaptive: bool = True

    @classmethod
    def of(cls, value: "RemoteOptions | dict | None", **overrides) -> "RemoteOptions":
        """Options from a RemoteOptions, a dict of its fields, or None (the defaults);
        ``overrides`` that are not None win."""
        if value is None:
            opts = cls()
        elif isinstance(value, cls):
            opts = value
        elif isinstance(value, dict):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                from ..errors import SlicerError

                raise SlicerError(f"unknown remote option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
            if ("gap_bytes" in value or "overfetch" in value) and "adaptive" not in value:
                value = {**value, "adaptive": False}  # a gap or budget asked for is used as given
            opts = cls(**value)
        else:
            raise TypeError(f"remote options must be a RemoteOptions or a dict, not {type(value).__name__}")
        opts = replace(opts, **{k: v for k, v in overrides.items() if v is not None})
        if opts.cache_dir is not None and not isinstance(opts.cache_dir, Path):
            opts = replace(opts, cache_dir=Path(opts.cache_dir))
        if opts.requests < 1 or opts.gap_bytes < 0 or opts.max_request_bytes < 1 or opts.retries < 0 or not opts.overfetch >= 0:
            from ..errors import SlicerError

            raise SlicerError(f"remote options out of range: requests={opts.requests} (>= 1), gap_bytes={opts.gap_bytes} "
                              f"(>= 0), max_request_bytes={opts.max_request_bytes} (>= 1), retries={opts.retries} (>= 0), "
                              f"overfetch={opts.overfetch} (>= 0)")
        return opts

    def ahead(self, chunk_bytes: int) -> int:
        return self.ahead_bytes if self.ahead_bytes is not None else max(2 * chunk_bytes, 64 << 20)
