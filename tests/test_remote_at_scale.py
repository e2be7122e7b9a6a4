"""Remote teachers at scale: one resolve per file, signed CDN URLs that expire, rate limits, credentials.

Against the loopback Hub stand-in (tests/remote_server.py): ``/resolve/`` answers with
a 302 to a signed CDN URL on the same server (or on another host), counts resolves,
refuses expired URLs with 403 and, when asked, answers 429 with the Hub's RateLimit
headers. Every student must be byte-identical to the local run's.
"""
from __future__ import annotations

import logging
import time

import pytest

pytest.importorskip("huggingface_hub")

import slicer  # noqa: E402
from slicer import cli  # noqa: E402
from slicer.remote import locations, ratelimit  # noqa: E402
from remote_fixtures import tree  # noqa: E402
from remote_server import Fault, RangeServer, Repo  # noqa: E402

SHARDS = "300KB"
# gap_bytes=0: one request per kept row (hundreds per run), so faults land mid-run and resolves are few next to them
FAST = {"backoff_s": 0.01, "retries": 3, "gap_bytes": 0}
RATELIMIT_429 = {"RateLimit": '"api";r=0;t=1', "RateLimit-Policy": '"fixed window";"api";q=5000;w=300'}


def _shrink(url, out, template, remote=FAST):
    return slicer.shrink(url, out, template=template, max_shard_size=SHARDS, remote=remote)


def _shards(remote_root) -> set[str]:
    return {p.name for p in remote_root["teacher"].glob("*.safetensors")}


def _per_file(paths: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in paths:
        name = p.rsplit("/", 1)[-1]
        counts[name] = counts.get(name, 0) + 1
    return counts


# --------------------------------------------------------------------------- one resolve per file

def test_hf_resolves_each_file_once_and_reads_its_ranges_from_the_cdn(remote_root, hub_at, tmp_path):
    with RangeServer(hub={"org/m": Repo(remote_root["teacher"])}) as srv:
        hub_at(srv)
        summary = _shrink("hf://org/m", tmp_path / "out", remote_root["template"])
        assert tree(tmp_path / "out") == remote_root["local_tree"]
        per_file = _per_file(srv.stats.resolved)
        assert all(n == 1 for n in per_file.values()), per_file  # every file resolved once, whatever its requests
        assert _shards(remote_root) <= set(per_file)
        assert srv.stats.cdn_requests > 10 * len(_shards(remote_root))
        net = summary.network
        assert net["resolves"] == srv.stats.resolves == len(per_file)  # the client counts what the server saw
        assert net["requests"] >= srv.stats.ranged_requests - srv.stats.resolves
        assert net["rate_limit_waits"] == 0 and srv.stats.refused == 0


def test_http_redirecting_teacher_is_resolved_once_per_file(remote_root, server, tmp_path):
    server.redirect_weights = True  # a presigning front: every .safetensors URL redirects to a signed one
    summary = _shrink(server.teacher_url, tmp_path / "out", remote_root["template"])
    assert tree(tmp_path / "out") == remote_root["local_tree"]
    per_file = _per_file(server.stats.resolved)
    assert per_file == {name: 1 for name in _shards(remote_root)}  # the HEAD resolves; ranges go to /signed/
    assert summary.network["resolves"] == len(per_file)
    assert server.stats.cdn_requests > 10 * len(per_file)


def test_hf_cdn_ranges_go_through_http11_and_only_the_resolves_through_huggingface_hub(remote_root, hub_at, tmp_path,
                                                                                     monkeypatch):
    from huggingface_hub.utils import get_session

    from slicer.remote import http11

    session, sent = get_session(), []
    real_send = session.send
    monkeypatch.setattr(session, "send", lambda req, **kw: sent.append(str(req.url)) or real_send(req, **kw))
    opened = []
    real_open = http11.Pool._open
    monkeypatch.setattr(http11.Pool, "_open", lambda self, origin: opened.append(origin) or real_open(self, origin))
    with RangeServer(hub={"org/m": Repo(remote_root["teacher"])}) as srv:
        hub_at(srv)
        summary = _shrink("hf://org/m", tmp_path / "out", remote_root["template"])
        assert tree(tmp_path / "out") == remote_root["local_tree"]
        assert sent and not [u for u in sent if "/cdn/" in u]  # the Hub's calls only: model info, resolves
        assert sum("/resolve/" in u for u in sent) == srv.stats.resolves == summary.network["resolves"]
        assert srv.stats.cdn_requests > 10 * len(_shards(remote_root)) and not srv.stats.proxied
        assert 1 <= len(opened) <= FAST.get("requests", 16)  # kept alive: a connection per thread at most


def test_hf_cdn_ranges_through_a_proxy_stay_on_huggingface_hubs_session(remote_root, hub_at, tmp_path, monkeypatch):
    from huggingface_hub.utils import close_session

    from slicer.remote.hub_source import proxied

    with RangeServer(hub={"org/m": Repo(remote_root["teacher"])}) as srv:
        hub_at(srv)
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", srv.url)  # the stand-in takes absolute-form requests: it is its own proxy
        close_session()  # huggingface_hub's httpx client reads the environment when it is made
        try:
            assert proxied(srv.url + "/cdn/x") and not proxied("https://cdn-lfs.hf.co/x")
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            assert not proxied(srv.url + "/cdn/x")
            monkeypatch.delenv("NO_PROXY")
            _shrink("hf://org/m", tmp_path / "out", remote_root["template"])
            assert tree(tmp_path / "out") == remote_root["local_tree"]
            through_proxy = [p for p in srv.stats.proxied if "/cdn/" in p]
            assert srv.stats.cdn_requests > 0 and len(through_proxy) == srv.stats.cdn_requests  # every CDN range
        finally:
            close_session()


# --------------------------------------------------------------------------- expiry

@pytest.mark.parametrize("in_url", [False, True], ids=["opaque-token", "Expires-in-url"])
def test_a_cdn_url_that_expires_mid_run_is_resolved_again_once(remote_root, hub_at, tmp_path, in_url):
    with RangeServer(hub={"org/m": Repo(remote_root["teacher"])}, cdn_expiry_in_url=in_url) as srv:
        hub_at(srv)
        # the 20th data request makes every URL issued so far expire (as if its hour were over)
        srv.faults.append(Fault("hook", match=".safetensors", skip=20, times=1, hook=srv.expire_issued))
        summary = _shrink("hf://org/m", tmp_path / "out", remote_root["template"], remote={**FAST, "retries": 0})
        assert tree(tmp_path / "out") == remote_root["local_tree"]
        assert srv.stats.refused >= 1  # requests in flight with the old URL were refused...
        per_file = _per_file(srv.stats.resolved)
        assert max(per_file.values()) == 2 and sum(per_file.values()) > len(per_file), per_file  # ...and resolved again
        assert summary.network["retries"] == 0  # a refused, expired URL is not a failed attempt


def test_signed_url_expiry_is_read_from_cloudfront_and_s3_urls():
    assert locations.expires_at("https://cdn-lfs.hf.co/x?Expires=1700000000&Signature=a&Key-Pair-Id=b") == 1700000000
    s3 = "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=A&X-Amz-Date=20240102T030405Z&X-Amz-Expires=3600&X-Amz-Signature=s"
    import calendar

    assert locations.expires_at(s3) == calendar.timegm((2024, 1, 2, 3, 4, 5)) + 3600
    assert locations.expires_at("https://mirror.example/x.safetensors") is None
    loc = locations.Location("u", True, got_at=1000.0, expires=1000.0 + 3600)
    assert loc.fresh(1000.0 + 3600 - 61) and not loc.fresh(1000.0 + 3600 - 59)  # renewed a minute early
    short = locations.Location("u", True, got_at=0.0, expires=10.0)
    assert short.fresh(8.9) and not short.fresh(9.1)  # or with a tenth of its life left


# --------------------------------------------------------------------------- credentials

def test_a_redirect_to_another_host_gets_no_token(remote_root, hub_at, tmp_path, monkeypatch):
    repos = {"org/private": Repo(remote_root["teacher"], token="sekrit")}
    with RangeServer(hub=repos) as cdn:
        # the CDN is another host (localhost, not 127.0.0.1) on another port
        with RangeServer(hub=repos, cdn_url=f"http://localhost:{cdn.port}") as srv:
            hub_at(srv)
            monkeypatch.setenv("HF_TOKEN", "sekrit")
            _shrink("hf://org/private", tmp_path / "out", remote_root["template"])
            assert tree(tmp_path / "out") == remote_root["local_tree"]
            assert cdn.stats.ranged_requests > 0 and cdn.stats.authorized == []
            assert srv.stats.resolves > 0 and any("/resolve/" in p for p in srv.stats.authorized)


def test_http_basic_auth_stays_with_its_host_across_a_redirect(remote_root, server, tmp_path):
    with RangeServer(server.teacher_dir.parent) as cdn:
        server.redirect_weights = True
        server.cdn_url = f"http://localhost:{cdn.port}"
        url = server.teacher_url.replace("http://", "http://user:pw@")
        _shrink(url, tmp_path / "out", remote_root["template"])
        assert tree(tmp_path / "out") == remote_root["local_tree"]
        assert cdn.stats.ranged_requests > 0 and cdn.stats.authorized == []
        assert server.stats.authorized  # the origin got them


def test_origins_compare_scheme_host_and_port():
    assert locations.same_origin("https://huggingface.co/a", "https://huggingface.co:443/b")
    assert not locations.same_origin("https://huggingface.co/a", "https://cdn-lfs.hf.co/a")
    assert not locations.same_origin("http://127.0.0.1:80/a", "http://127.0.0.1:8080/a")
    assert not locations.same_origin("http://h/a", "https://h/a")
    assert locations.redirect_target("https://h/org/m/resolve/c/f", "/api/x") == "https://h/api/x"


# --------------------------------------------------------------------------- rate limits

@pytest.mark.parametrize("status, headers, said", [
    (429, RATELIMIT_429, 'RateLimit "api";r=0;t=1 (policy: 5000 requests per 300 s)'),
    (503, {"Retry-After": "1"}, "Retry-After 1"),
], ids=["429-RateLimit", "503-Retry-After"])
def test_a_rate_limit_mid_run_is_waited_out_as_stated_logged_once_and_counted(remote_root, hub_at, tmp_path, caplog,
                                                                               status, headers, said):
    with RangeServer(hub={"org/m": Repo(remote_root["teacher"])}) as srv:
        hub_at(srv)
        srv.faults.append(Fault("status", match=".safetensors", skip=15, times=3, status=status, headers=headers))
        caplog.set_level(logging.DEBUG, logger="slicer")
        t0 = time.monotonic()
        # retries=0: a stated wait is not a failed attempt, so the run must still get through
        summary = _shrink("hf://org/m", tmp_path / "out", remote_root["template"], remote={**FAST, "retries": 0})
        assert time.monotonic() - t0 >= 1.0  # the stated second was waited
        assert tree(tmp_path / "out") == remote_root["local_tree"]
        assert summary.network["rate_limit_waits"] == 3 and summary.network["rate_limit_wait_s"] >= 0.9
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "rate limited" in r.getMessage()]
        assert len(warned) == 1 and said in warned[0] and "waiting 1 s" in warned[0], warned


def test_the_summary_and_json_report_requests_resolves_and_waits(remote_root, hub_at, tmp_path, capfd):
    import json

    with RangeServer(hub={"org/m": Repo(remote_root["teacher"])}) as srv:
        hub_at(srv)
        srv.faults.append(Fault("status", match=".safetensors", skip=15, times=1, status=429, headers=RATELIMIT_429))
        args = ["shrink", "hf://org/m", str(tmp_path / "out"), "--template", str(remote_root["template"]),
                "--max-shard-size", SHARDS, "--coalesce-gap", "0"]
        assert cli.main(args) == 0
        text = capfd.readouterr().out
        assert f"requests, {srv.stats.resolves} resolves, rate limited 1 time: waited 1 s)" in text, text
        srv.stats.reset()
        assert cli.main(args + ["--overwrite", "--json"]) == 0
        out = capfd.readouterr().out.strip().splitlines()[-1]
        net = json.loads(out, parse_constant=lambda name: pytest.fail(f"--json wrote {name}: not JSON"))["network"]
        assert net["resolves"] == srv.stats.resolves and net["requests"] > net["resolves"]
        assert net["rate_limit_waits"] == 0  # the fault fired once, in the first run


def test_the_resolver_window_is_never_exceeded_by_a_default_run(remote_root, hub_at, tmp_path):
    # 12 resolves per window are enough for every file of the teacher; a run resolving per request would need hundreds
    with RangeServer(hub={"org/m": Repo(remote_root["teacher"])}, resolve_window=(12, 300)) as srv:
        hub_at(srv)
        _shrink("hf://org/m", tmp_path / "out", remote_root["template"])
        assert tree(tmp_path / "out") == remote_root["local_tree"]
        assert srv.stats.rate_limited == 0 and srv.stats.resolves <= 12


def test_resolves_over_the_hub_window_wait_for_the_next_window(remote_root, hub_at, tmp_path):
    # 3 resolves per 2 s: the index and 3 shards need 4, so one waits for the window the 429 names
    with RangeServer(hub={"org/m": Repo(remote_root["teacher"])}, resolve_window=(3, 2)) as srv:
        hub_at(srv)
        summary = _shrink("hf://org/m", tmp_path / "out", remote_root["template"], remote={**FAST, "retries": 0})
        assert tree(tmp_path / "out") == remote_root["local_tree"]
        assert srv.stats.rate_limited >= 1 and summary.network["rate_limit_waits"] == srv.stats.rate_limited
        assert summary.network["resolves"] == srv.stats.resolves


@pytest.mark.parametrize("headers, expect", [
    ({"RateLimit": '"api";r=0;t=55'}, 55.0),
    ({"ratelimit": '"resolvers";r=0;t=7', "ratelimit-policy": '"fixed window";"resolvers";q=5000;w=300'}, 7.0),
    ({"RateLimit": '"api";r=3;t=55'}, None),  # requests remain: not a stated wait
    ({"Retry-After": "12"}, 12.0),
    ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past: go now
    ({}, None),
])
def test_stated_waits_are_read_from_ratelimit_and_retry_after(headers, expect):
    got = ratelimit.stated_wait(429, headers)
    assert (got.seconds if got is not None else None) == expect
    assert ratelimit.stated_wait(500, {"Retry-After": "3"}) is None  # only 429 and 503 state waits
    assert ratelimit.stated_wait(503, {"Retry-After": "3"}).seconds == 3.0


# --------------------------------------------------------------------------- adaptive coalescing

def test_the_meter_probes_the_bandwidth_then_measures_what_a_request_costs():
    from slicer.remote import adaptive
    from slicer.remote.adaptive import Meter

    now = [0.0]
    meter = Meter(clock=lambda: now[0])

    def requests(n: int, nbytes: int, seconds_each: float) -> None:
        for _ in range(n):
            meter.delivered(nbytes)
            now[0] += seconds_each
            meter.record(nbytes)

    # the probe: 8 requests of 512 kB, the first byte at t=1 ms (the wait before it is no bandwidth),
    # the last request done 8 x 5.24 ms later: 100 MB/s
    now[0] = 0.001
    requests(adaptive.PROBE_REQUESTS, 512 << 10, (512 << 10) / 100e6)
    assert meter.bytes_per_s == pytest.approx(100e6)
    assert meter.request_s is None and not meter.probing()  # no cost measured yet (the assumed one stands in)
    # small requests, one every 0.5 ms: 0.5 ms each, of which 41 us are their 4 kB at 100 MB/s
    requests(1 + 300, 4096, 0.0005)
    assert meter.request_s == pytest.approx(0.0005 - 4096 / 100e6, rel=0.02)
    assert meter.gap_worth_a_request() == pytest.approx(100e6 * (0.0005 - 4096 / 100e6), rel=0.02)  # ~46 kB
    # large requests on a saturated link: their windows say nothing of a request's cost (after the
    # window that mixes them with the small ones)
    requests(20, 8 << 20, (8 << 20) / 100e6)
    cost = meter.request_s
    assert cost == pytest.approx(0.0005 - 4096 / 100e6, rel=0.05)
    requests(60, 8 << 20, (8 << 20) / 100e6)
    assert meter.bytes_per_s == pytest.approx(100e6, rel=0.01) and meter.request_s == cost
    # requests that go as fast as their bytes: the link limits, no request cost is left
    requests(2000, 64 << 10, (64 << 10) / 100e6)
    assert meter.request_s < cost / 100


def _brute_force_choice(kept, runs, gaps, file_bytes, max_bytes, bw, c):
    """The rule of adaptive.py's docstring over every k (no sampling), written from its words."""
    ways = []
    for g in [0, *sorted(set(gaps))]:  # no gap bridged, or every gap up to each size there is
        bridged = [x for x in gaps if x <= g] if g else []
        nbytes = kept + sum(bridged)
        requests = max(runs - len(bridged), -(-nbytes // max_bytes))
        ways.append((nbytes, nbytes / bw + requests * c))
    fastest = min(t for _, t in ways)
    bound = fastest + 0.5 * max(0.0, file_bytes / bw - fastest)
    return min(nbytes for nbytes, t in ways if t <= bound * (1 + 1e-9))


def test_the_profile_counts_the_plans_runs_and_gaps_and_the_rule_takes_the_fewest_bytes_near_the_fastest():
    import math

    from slicer.remote.adaptive import Profile
    from slicer.remote.ranges import Span

    # every other 4 kB row of a 4 MB tensor at 1 MB in a 16 MB file, then 2 runs with a 12 kB gap in another file
    rows = Span("a", 1 << 20, 4 << 20, [(i * 8192, 4096) for i in range(512)])
    other = Span("b", 0, 64 << 10, [(0, 4096), (16384, 8192)])
    profile = Profile.of([rows, other], {"a": 16 << 20, "b": 64 << 10}.__getitem__, 8 << 20)
    assert (profile.kept, profile.runs, profile.file_bytes) == (512 * 4096 + 12288, 514, (16 << 20) + (64 << 10))
    assert sorted(profile.gaps.tolist()) == [4096] * 511 + [12288]  # nothing between the files
    gaps = profile.gaps.tolist()
    for bw, c in [(100e6, 1e-6), (100e6, 300e-6), (1e9, 300e-6), (1e9, 20e-6), (50e6, 2e-3)]:
        gap, overfetch, _, said = profile.choose(bw, c)
        want = _brute_force_choice(profile.kept, profile.runs, gaps, profile.file_bytes, 8 << 20, bw, c)
        got = profile.kept + (sum(x for x in gaps if x <= gap) if overfetch == math.inf else 0)
        assert overfetch in (0.0, math.inf) and got == want, (bw, c, said)
        assert said["predicted_bytes_ratio"] == pytest.approx(want / profile.kept, abs=1e-4)
    assert profile.choose(100e6, 1e-6)[:2] == (0, 0.0)  # requests free: one per run, the kept bytes only
    # a request costs what 30 kB take and the file is all the gaps and rows (a download is the fastest way):
    # every gap bridged
    tight = Profile.of([rows], {"a": (4 << 20) - 4096}.__getitem__, 8 << 20)
    gap, overfetch, _, said = tight.choose(100e6, 300e-6)
    assert (gap, overfetch) == (4096, math.inf) and said["predicted_s"] == said["predicted_fastest_s"]
    import json

    json.dumps(said, allow_nan=False)  # what --json's network shows: strict JSON (no Infinity)
    # the same, but the file is 4x what is read: a download would be slow, so half its saving buys fewer bytes:
    # the 4 kB gaps bridged, not the 12 kB one, though bridging it too would be (a little) faster
    gap, overfetch, way, said = profile.choose(100e6, 300e-6)
    assert (gap, overfetch) == (4096, math.inf)
    assert said["predicted_fastest_s"] <= said["predicted_s"] < said["predicted_download_all_s"]
    # a measurement that moves a little keeps the way (a run flipping between ways pays for both); a large move does not
    # (files no larger than what is read: the fastest way is chosen, the 12 kB gap bridged too, by a hair)
    snug = Profile.of([rows, other], {"a": (4 << 20) - 4096, "b": 24576}.__getitem__, 8 << 20)
    assert snug.choose(100e6, 300e-6)[:2] == (12288, math.inf)
    assert snug.choose(100e6, 300e-6, current=way)[:3] == (4096, math.inf, way)
    assert snug.choose(100e6, 1e-6, current=way)[:3] == snug.choose(100e6, 1e-6)[:3] == (0, 0.0, 0)


def test_the_policy_probes_then_follows_the_fixed_rule_until_measured_then_chooses_as_measurements_move():
    import math

    from slicer.remote import adaptive
    from slicer.remote.adaptive import AdaptivePolicy, Profile
    from slicer.remote.ranges import Span

    class Fixed:  # a meter: probing, or measured this much
        def __init__(self, measured, probing=False):
            self.m, self.probe, self.chosen = measured, probing, {}

        def probing(self):
            return self.probe

        def measured(self):
            return self.m

    profile = Profile.of([Span("a", 0, 4 << 20, [(i * 8192, 4096) for i in range(512)])], lambda f: 4 << 20, 8 << 20)
    policy = AdaptivePolicy(Fixed(None, probing=True), gap=64 << 10, overfetch=0.1, profile=profile)
    # the probe first: every gap under 1 MB bridged, in requests of at most 512 kB
    assert all(policy.limits(4096) == (adaptive.PROBE_GAP_BYTES, math.inf) for _ in range(10))
    assert policy.max_bytes == adaptive.PROBE_REQUEST_BYTES
    policy.meter = Fixed(None)  # the probe's answers not all in: the fixed rule
    assert policy.limits(4096) == (64 << 10, 0.1) and policy.max_bytes is None
    policy.meter = Fixed((100e6, 1e-6))  # requests cost nothing: one per kept run
    assert policy.limits(4096) == (0, 0.0) and policy.meter.chosen["predicted_bytes_ratio"] == 1.0
    policy.meter = Fixed((100e6, 300e-6))  # a request costs what 30 kB take: chosen again, every gap bridged
    assert policy.limits(4096) == policy.limits(4096) == policy.limits(4096) == (4096, math.inf)
    assert policy.decisions == {"probe": 10, "unmeasured": 1, "chosen": 4, "choices": 2}


def test_the_meter_assumes_a_request_cost_until_it_has_measured_one():
    from slicer.remote import adaptive
    from slicer.remote.adaptive import Meter

    now = [0.0]
    meter = Meter(clock=lambda: now[0])
    assert meter.probing() and meter.gap_worth_a_request() is None
    for _ in range(adaptive.PROBE_REQUESTS):
        meter.delivered(1 << 20)
        now[0] += 0.01
        meter.record(1 << 20)
    assert not meter.probing() and meter.bytes_per_s == pytest.approx(100 * 2 ** 20)
    assert meter.request_s is None
    assert meter.gap_worth_a_request() == int(100 * 2 ** 20 * adaptive.ASSUMED_REQUEST_S)


def test_coalesce_follows_the_policy_as_it_changes():
    from slicer.remote.ranges import Span, coalesce

    class Switch:  # one request per run for the first 3 runs, then every gap bridged
        calls = 0
        max_bytes = None
        issued = staticmethod(lambda nbytes: None)

        def limits(self, run_bytes):
            self.calls += 1
            return (0, 0.0) if self.calls <= 3 else (1 << 20, float("inf"))

    span = Span("f", 0, 20 * 8192, [(i * 8192, 4096) for i in range(20)])  # every other 4 kB row
    reqs = list(coalesce([span], 64 << 10, 8 << 20, 0.1, policy=Switch()))
    # the 4th run finds the gap worth bridging: it joins the 3rd run's request, and so do the rest
    assert [(r.start, r.end) for r in reqs] == [(0, 4096), (8192, 12288), (16384, 20 * 8192 - 4096)]


def test_a_fixed_gap_or_budget_turns_the_measurement_off():
    from slicer.remote import RemoteOptions

    assert RemoteOptions.of(None).adaptive
    assert not RemoteOptions.of({"gap_bytes": 0}).adaptive and not RemoteOptions.of({"overfetch": 1.0}).adaptive
    assert RemoteOptions.of({"gap_bytes": 0, "adaptive": True}).adaptive
