"""Which bytes a remote run fetches: spans from the plan, coalesced requests, the cache's intervals.

The pure parts are checked against brute force (hypothesis); the span list against the
engine itself, through ``file://`` teachers (fsspec's local file system: the whole remote
path, no network).
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import slicer
from remote_fixtures import tree
from slicer.remote.cache import _Entry
from slicer.remote.source import Pieces
from slicer.remote.ranges import Span, coalesce, row_runs
from slicer.remote.source import Transient


# --------------------------------------------------------------------------- coalescing

@st.composite
def span_lists(draw):
    spans, pos = [], 0
    for _ in range(draw(st.integers(1, 6))):
        file = draw(st.sampled_from(["a", "b"]))
        pos = draw(st.integers(0, 50)) + (pos if draw(st.booleans()) else 0)  # sometimes going back
        nbytes = draw(st.integers(1, 60))
        cuts = sorted(draw(st.sets(st.integers(0, nbytes), min_size=2, max_size=8)))
        runs = [(a, b - a) for a, b in zip(cuts[::2], cuts[1::2]) if b > a] or [(0, nbytes)]
        spans.append(Span(file, pos, nbytes, runs))
        pos += nbytes
    return spans


@settings(max_examples=150, deadline=None)
@given(spans=span_lists(), gap=st.integers(0, 20), max_bytes=st.integers(1, 40),
       overfetch=st.sampled_from([0.0, 0.1, 0.5, 10.0]))
def test_coalesced_requests_deliver_every_kept_byte_once_and_bridge_only_small_gaps(spans, gap, max_bytes, overfetch):
    delivered = {id(s): [0] * s.nbytes for s in spans}
    sealed = []
    last_request_of = {}
    requests = list(coalesce(spans, gap, max_bytes, overfetch))
    kept_total = sum(s.kept_bytes for s in spans)
    assert sum(r.nbytes for r in requests) <= (1 + overfetch) * kept_total  # the over-fetch budget holds
    for r, req in enumerate(requests):
        assert 0 < req.nbytes <= max_bytes and sum(n for _, _, n in req.pieces) == req.nbytes
        pos = req.start
        for span, off, n in req.pieces:
            if span is None:
                assert 0 < n <= gap  # only a small gap is fetched and dropped
            else:
                assert span.file == req.file and span.offset + off == pos and off + n <= span.nbytes
                for i in range(off, off + n):
                    delivered[id(span)][i] += 1
                last_request_of[id(span)] = r
            pos += n
        for span in req.seals:
            sealed.append(span)
            assert last_request_of[id(span)] == r  # sealed by the last request that fills it
    assert [id(s) for s in sealed] == [id(s) for s in spans]
    for s in spans:
        kept = {i for a, n in s.runs for i in range(a, a + n)}
        got = delivered[id(s)]
        assert all(got[i] == 1 for i in kept)  # every kept byte exactly once
        assert all(c <= 1 for c in got)  # bridged bytes inside a span land once too


def test_row_runs_merge_consecutive_rows():
    assert row_runs(range(0, 4), 10) == [(0, 40)]
    assert row_runs(range(0, 8, 2), 10) == [(0, 10), (20, 10), (40, 10), (60, 10)]
    assert row_runs((0, 1, 2, 5, 6, 9), 3) == [(0, 9), (15, 6), (27, 3)]


def test_pieces_scatter_a_stream_over_buffers_and_drop_the_gaps():
    a, b = bytearray(3), bytearray(4)
    p = Pieces([(memoryview(a), 3), (None, 2), (memoryview(b), 4)])
    for chunk in (b"ab", b"cXY", b"defg"):
        p.write(chunk)
    assert (bytes(a), bytes(b), p.filled) == (b"abc", b"defg", 9)
    with pytest.raises(Transient, match="more than the 9 bytes"):
        p.write(b"!")
    p.reset()
    p.write(b"zzz")
    assert bytes(a) == b"zzz"  # a retry writes from the first byte again


def test_cache_intervals_merge_and_cover(tmp_path):
    from slicer.remote.source import RemoteFile

    e = _Entry(tmp_path / "e", RemoteFile("f", "u", 1000, None))
    for a, b in [(10, 20), (30, 40), (20, 30), (100, 110), (5, 12), (200, 300), (250, 260)]:
        e._add(a, b)
    assert list(zip(e.starts, e.ends)) == [(5, 40), (100, 110), (200, 300)]
    assert e.covers(5, 40) and e.covers(12, 33) and not e.covers(39, 41) and not e.covers(0, 6) and e.covers(200, 300)


# --------------------------------------------------------------------------- against the engine

@pytest.mark.parametrize("method, chunk_bytes", [("uniform", 32 << 20), ("uniform", 2000), ("random", 3000),
                                                 ("consecutive", 5000)])
def test_file_urls_go_through_the_remote_reader_and_write_the_local_bytes(remote_root, tmp_path, method, chunk_bytes):
    kw = dict(template=remote_root["template"], method=method, seed=3, chunk_bytes=chunk_bytes, max_shard_size="300KB")
    local = slicer.shrink(remote_root["teacher"], tmp_path / "local", **kw)
    remote = slicer.shrink("file://" + str(remote_root["teacher"]) + "/", tmp_path / "remote",
                           remote={"max_request_bytes": 2000, "ahead_bytes": 10000, "gap_bytes": 100}, **kw)
    assert tree(tmp_path / "remote") == tree(tmp_path / "local")
    assert remote.bytes_read == local.bytes_read and remote.bytes_fetched is not None and local.bytes_fetched is None


@pytest.mark.parametrize("depth_only", [False, True], ids=["half-width", "depth-only (copies)"])
def test_stream_from_a_remote_teacher_yields_the_local_tensors(remote_root, tmp_path, depth_only):
    import torch
    from safetensors.torch import save_file

    template = remote_root["template"]
    if depth_only:  # same width: every tensor kept whole
        ckpt = slicer.plan(remote_root["teacher"], template=template).teacher
        save_file({n: torch.zeros(i.shape, dtype=torch.bfloat16) for n, i in ckpt.tensors.items() if ".layers.3." not in n},
                  str(tmp_path / "model.safetensors"))
        template = tmp_path / "model.safetensors"
    url = "file://" + str(remote_root["teacher"])
    got = dict(slicer.stream(url, template=template, chunk_bytes=4000))
    want = dict(slicer.stream(remote_root["teacher"], template=template, chunk_bytes=4000))
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[n].view(torch.int16), want[n].view(torch.int16)) for n in want)
