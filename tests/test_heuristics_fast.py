"""The C scan's heuristics (workers/csrc/fastpath.c) against the Python reference (workers/heuristics).

On the fast path the C scan keeps the stateful heuristics (scan windows, DNS exhaustion) for every
frame and flags the frames a stateless heuristic could judge; these tests hold it to the reference:
the same events, counters and saturation on generated traffic aimed at the thresholds, windows and
caps; prefilters that never hide what a pattern judges (each property run against both the C
prefilter and its Python twin, as one suite over two backends); bounded state under floods; batches
longer than the scan's 16-bit frame index.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.sources import synthetic as g
from tests.corpus.generate import reset_answer
from tests.test_heuristics import (_ALPHABET, ATTACK_SAMPLES, _dns_flood, _infection_flood, _nx_name_flood,
                                   _scan_flood, _udp_flood, _web_flood, matchers, run)  # noqa: F401 (fixture)
from workers import _fastpath
from workers.heuristics import HeuristicSettings, verdicts
from workers.heuristics import http as hhttp
from workers.http import decoded_form, decoded_target
from workers.pipeline import fast_heuristics, fast_tables


@pytest.fixture(scope="module")
def c_heuristics():
    """The C scan's heuristics with the default settings, built once for the module: deriving the
    request patterns' literal formulas is the costly part of a worker's start, and the prefilters
    hold no state between checks."""
    return fast_heuristics(HeuristicSettings())


def python_prefilter(kind: str, text: str) -> bool:
    """The Python twins of the C prefilters (workers/heuristics/http.py needs_*)."""
    if kind == "request":
        return hhttp.needs_request_check(text, None)
    if kind == "body":
        return hhttp.needs_request_check("/", text)
    if kind == "response":
        return hhttp.needs_response_check(text.encode("latin-1"))
    raise ValueError(kind)


@pytest.fixture(scope="module", params=["python", "c"])
def prefilter(request):
    """One prefilter suite, two backends: check(kind, text) -> may the judgement find something."""
    if request.param == "python":
        return python_prefilter
    c = request.getfixturevalue("c_heuristics")
    return lambda kind, text: c.check(kind, text.encode("latin-1"))


def both(matchers, frames, settings=None, batch=256):
    fast_events, fast = run(matchers, frames, settings, fast=True, batch=batch)
    ref_events, ref = run(matchers, frames, settings, fast=False, batch=batch)
    return (fast_events, fast.stats()), (ref_events, ref.stats())


# --- generated traffic at the thresholds, windows and caps ---------------------------------------------

SOURCES = ("10.0.0.1", "10.0.0.2", "203.0.113.9", "198.51.100.4")
TARGETS = ("198.18.0.7", "198.18.0.8", "10.0.0.3", "192.168.1.1")
PATHS = [s for samples in ATTACK_SAMPLES.values() for s in samples] + [
    "/", "/a/b", "/b/c", "/c", "/d/e.exe", "/bin/x.exe", "/f.apk?x=1", "/defaultwebpage.cgi", "/x/mips", "/bins/sora.arm7",
    "/e/proxy.txt", "/%2e%2e/%2e%2e/etc/passwd", "/q?x=%3Cscript%3E", "/scripts/a.exe", "/o/t.hta"]
USER_AGENTS = (None, "Mozilla/5.0", "sqlmap/1.7", "curl/8", "Nikto", "python-requests/2", "Sophos x", "masscan/1.3",
               "Mozilla/5.0 (compatible; ZmEu)", "%73qlmap")
NAMES = ("a.fd1.org", "b.fd1.org", "c.fd1.org", "d.fd2.org", "x.y.fd2.org", "fd3.org",
         "qwrtzpsdfghjklmnbvcx.example.com", "a" * 30 + ".long.net", "kjhgfdsazxcvbnmlpoiu.xyz")


@st.composite
def frames_and_settings(draw):
    small = dict(
        scan_window_s=draw(st.sampled_from((2, 5, 10))),
        port_scan_threshold=draw(st.integers(1, 4)), udp_scan_threshold=draw(st.integers(1, 4)),
        infection_scan_threshold=draw(st.integers(1, 4)), web_scan_threshold=draw(st.integers(1, 4)),
        nxdomain_threshold=draw(st.integers(1, 4)), dns_exhaustion_threshold=draw(st.integers(1, 5)),
        dns_exhaustion_window_s=draw(st.sampled_from((2, 5, 10))), udp_probe_max_bytes=draw(st.sampled_from((4, 100))),
        max_scan_keys=draw(st.integers(1, 6)), max_dns_domains=draw(st.integers(1, 4)),
        max_dns_subdomains=draw(st.integers(1, 12)), max_nxdomain_names=draw(st.integers(1, 6)),
        missing_host=draw(st.booleans()), long_domain_length=draw(st.sampled_from((16, 24))))
    heuristics = HeuristicSettings(**small)
    frames, t = [], 0.0
    for i in range(draw(st.integers(1, 60))):
        t += draw(st.sampled_from((0, 0, 0.25, 1, 1, 2, 3, 5, 10, 31)))   # often exactly a window apart
        src, dst = draw(st.sampled_from(SOURCES)), draw(st.sampled_from(TARGETS))
        sport = draw(st.sampled_from((40000, 40001, 53, 80)))
        kind = draw(st.sampled_from(("syn", "tcp", "udp", "reset", "http", "http", "dnsq", "nx", "response")))
        if kind == "syn":
            port = draw(st.sampled_from((22, 23, 80, 445, 1000, 1001, 1002, 1003, 33434, 3389)))
            frame = g.tcp_frame(src, dst, sport, port, g.TCP_SYN)
        elif kind == "tcp":
            flags = draw(st.sampled_from((0, g.TCP_ACK, g.TCP_SYN | g.TCP_ACK, g.TCP_RST, 0x01, 0x29)))
            frame = g.tcp_frame(src, dst, sport, draw(st.integers(1000, 1006)), flags)
        elif kind == "udp":
            payload = draw(st.sampled_from((b"", b"pr", b"prob", b"probe-probe", b"x" * 100, b"x" * 120)))
            dport = draw(st.sampled_from((1000, 1001, 1002, 33435, 137, 1900, 45000, 45001)))
            if draw(st.integers(0, 3)) == 0:
                src, dst = dst, src          # the other direction, as a server's answer would go
            frame = g.udp_frame(src, dst, sport, dport, payload)
        elif kind == "reset":                # a closed port answering a probe (sequence 0)
            frame = reset_answer(dst, src, draw(st.integers(1000, 1006)), sport, 2)
        elif kind == "http":
            host = draw(st.sampled_from((None, "site.example", "198.18.0.7", "site.example:8080", "")))
            method = draw(st.sampled_from(("GET", "POST", "HEAD")))
            path = draw(st.sampled_from(PATHS))
            if draw(st.integers(0, 5)) == 0:
                path = "http://%s%s" % (host or dst, path)
            body = draw(st.sampled_from((b"", b"a=1", b"q=1 union select 1", b"%3Cscript%3E"))) if method == "POST" else b""
            headers = (("X-Forwarded-For", "203.0.113.77"),) if draw(st.integers(0, 7)) == 0 else ()
            frame = g.tcp_frame(src, dst, sport, draw(st.sampled_from((80, 80, 8080))), g.TCP_PSH | g.TCP_ACK,
                                g.http_request(method, path, host, draw(st.sampled_from(USER_AGENTS)), headers, body))
        elif kind == "dnsq":
            name = draw(st.sampled_from(("s%d.fd1.org" % draw(st.integers(0, 20)), "t%d.fd2.org" % draw(st.integers(0, 20)))
                                        + NAMES))
            frame = g.udp_frame(src, "10.0.0.53", sport, 53, g.dns_query(name, ident=i))
        elif kind == "nx":
            frame = g.udp_frame("10.0.0.53", src, 53, sport, g.dns_response(draw(st.sampled_from(NAMES)), rcode=3))
        else:
            body = draw(st.sampled_from((b"HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\nhi",
                                         b"HTTP/1.1 200 OK\r\nX-Sinkhole: yes\r\n\r\n",
                                         b"HTTP/1.1 200 OK\r\nContent-Type: application/hta\r\n\r\n",
                                         b"HTTP/1.0 200 OK\r\n\r\n<title>This domain has been seized</title>")))
            frame = g.tcp_frame(dst, src, 80, sport, g.TCP_PSH | g.TCP_ACK, body)
        frames.append((t, frame))
    return frames, heuristics


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                   HealthCheck.function_scoped_fixture])
@given(frames_and_settings(), st.sampled_from((1, 3, 16, 256)))
def test_c_heuristics_equal_the_reference_on_generated_traffic(matchers, case, batch):
    frames, heuristics = case
    (fast_events, fast_stats), (ref_events, ref_stats) = both(matchers, frames, heuristics, batch)
    assert fast_events == ref_events
    assert fast_stats == ref_stats


def test_the_generated_traffic_reaches_every_heuristic(matchers):
    # the differential test above is only as good as what its traffic sets off: one fixed draw of
    # each kind, every heuristic family fires on both paths
    frames = [(i * 0.1, g.tcp_frame("203.0.113.9", "198.18.0.7", 40000, 1000 + i, g.TCP_SYN)) for i in range(3)]
    # UDP probes count for their sender, a port above its own source port included
    frames += [(1 + i * 0.1, g.udp_frame("203.0.113.9", "198.18.0.8", 40000, port, b"pr"))
               for i, port in enumerate((1000, 45001, 1002))]
    frames += [(2 + i * 0.1, g.tcp_frame("10.0.0.1", "198.18.0.%d" % (10 + i), 40000, 445, g.TCP_SYN)) for i in range(3)]
    frames += [(3 + i * 0.1, g.tcp_frame("10.0.0.2", "198.18.0.7", 40000, 80, g.TCP_PSH | g.TCP_ACK,
                                         g.http_request("GET", "/p%d/x" % i, "site.example"))) for i in range(3)]
    frames += [(4 + i * 0.1, g.udp_frame("10.0.0.53", "10.0.0.1", 53, 40000, g.dns_response("n%d.fd1.org" % i, rcode=3)))
               for i in range(3)]
    frames += [(5 + i * 0.1, g.udp_frame("10.0.0.1", "10.0.0.53", 40000 + i, 53, g.dns_query("s%d.fd2.org" % i)))
               for i in range(4)]
    frames += [(6, g.tcp_frame("10.0.0.1", "198.18.1.1", 46000, 80, g.TCP_PSH | g.TCP_ACK,
                               g.http_request("GET", "/d?f=../../../../etc/passwd", "site.example", "sqlmap/1.7"))),
               (6.5, g.tcp_frame("10.0.0.1", "198.18.1.2", 46001, 80, g.TCP_PSH | g.TCP_ACK,
                                 g.http_request("GET", "/d/e.exe", "dl.example"))),
               (7, g.tcp_frame("198.18.1.1", "10.0.0.1", 80, 46000, g.TCP_PSH | g.TCP_ACK,
                               b"HTTP/1.1 200 OK\r\nX-Sinkhole: yes\r\n\r\n"))]
    heuristics = HeuristicSettings(port_scan_threshold=2, udp_scan_threshold=2, infection_scan_threshold=2,
                                   web_scan_threshold=2, nxdomain_threshold=2, dns_exhaustion_threshold=3)
    (fast_events, _), (ref_events, _) = both(matchers, frames, heuristics)
    assert fast_events == ref_events
    fired = {e.info for e in fast_events}
    for info in ("potential port scanning", "potential udp scanning", "potential infection", "potential web scanning",
                 "excessive no such domain (suspicious)", "potential dns exhaustion (suspicious)",
                 "potential directory traversal (suspicious)", "user agent (suspicious)",
                 "direct .exe download (suspicious)", "sinkhole response (malware)"):
        assert any(f.startswith(info) for f in fired), (info, sorted(fired))


# --- prefilters never hide a verdict --------------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(ATTACK_SAMPLES))
def test_every_pattern_family_passes_the_request_prefilter(prefilter, family):
    for sample in ATTACK_SAMPLES[family]:
        assert prefilter("request", sample), sample


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(_ALPHABET, st.sampled_from(["%25", "%252e", "%2E", "%5c", "%2b", "+"])),
                max_size=30).map("".join))
@example("/i?id=1+union+select+1,2")
@example("/n?id=7+and+1%3D1%23")
@example("/a+b?q=a+or+1=1")
def test_the_request_prefilter_is_a_superset_of_the_patterns(prefilter, text):
    # `text` as sent; the pipeline judges each reading of it decoded once (a double-encoded "%252e"
    # is "%2e" then): as a path (the query form-decoded too) and as a body (form-decoded throughout)
    if any(p.search(t) for t in decoded_target(text) for _, p in hhttp._REQUEST):
        assert prefilter("request", text)
    if any(p.search(t) for t in decoded_form(text) for _, p in hhttp._REQUEST):
        assert prefilter("body", text)


def test_the_request_prefilter_reads_plus_as_a_space_in_the_query_only(prefilter):
    assert prefilter("request", "/i?id=1+union+select+1,2")
    assert prefilter("body", "id=1+union+select+1,2")


def test_the_c_request_prefilter_needs_the_patterns_literals(c_heuristics):
    # no literal of a pattern in either reading: '+' is literal in the path, and "%2b" is a '+'
    # wherever it is (C only: the Python twin stops at the needles, and " " is one of them)
    assert not c_heuristics.check("request", b"/union+select+x/")
    assert not c_heuristics.check("request", b"/i?id=1%2bunion%2bselect%2b1")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["Server: ", "sinkhole", "X-Sinkhole:", "\r\n", "<title>", "</title>", "seized",
                                 "Content-Type: ", "text/x-sh", "application/hta", "snkz=", " by ", "a", " ", "SEIZ"]),
                max_size=20).map("".join))
def test_the_response_prefilter_is_a_superset_of_the_verdicts(prefilter, text):
    payload = "HTTP/1.1 200 OK\r\n" + text
    if hhttp.response_verdicts(payload.encode("latin-1")):
        assert prefilter("response", payload)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["sqlmap", "nikto", "Mozilla/5.0", "%20", "%73", "qlmap", "curl", " ", "(", ")",
                                 "compatible;", "zmeu", "sophos", "masscan", "a", "/1.0", "python", "go-http"]),
                max_size=8).map("".join))
def test_the_c_user_agent_prefilter_is_a_superset_of_the_verdicts(c_heuristics, text):
    # C only: the reference path judges every user agent (user_agent_pattern); it has no prefilter
    if hhttp.user_agent_pattern(text):
        assert c_heuristics.check("user_agent", text.encode())


def test_the_prefilters_say_how_they_work(c_heuristics):
    p = c_heuristics.prefilters()
    # every request pattern is covered by literals (none needs the regexes on every request)
    assert p["request"] == "formula" and p["untriggered"] == 0 and p["request literals"]
    assert not c_heuristics.check("request", b"/index.html?page=2")


def test_the_verdict_bits_are_the_c_scans():
    for name in ("PORT_SCAN", "UDP_SCAN", "INFECTION_SCAN", "WEB_SCAN", "DNS_EXHAUSTION"):
        assert getattr(verdicts, name) == getattr(_fastpath, name), name
    assert verdicts.SCANS == verdicts.PORT_SCAN | verdicts.UDP_SCAN | verdicts.INFECTION_SCAN


# --- bounded state --------------------------------------------------------------------------------------

@pytest.mark.parametrize("flood, held, counter, caps", [
    (_scan_flood, "port", "port scan keys evicted", {"max_scan_keys": 256}),
    (_udp_flood, "udp", "udp scan keys evicted", {"max_scan_keys": 256}),
    (_infection_flood, "infection", "infection scan keys evicted", {"max_scan_keys": 256}),
    (_web_flood, "web", "web scan keys evicted", {"max_scan_keys": 256}),
    (_dns_flood, "dns domains", "dns exhaustion domains evicted", {"max_dns_domains": 256}),
    (_dns_flood, "dns subdomains", "dns exhaustion domains evicted", {"max_dns_subdomains": 256}),
])
def test_a_flood_fills_the_c_state_to_its_cap_and_no_further(matchers, flood, held, counter, caps):
    settings_ = HeuristicSettings(**caps)
    _, worker = run(matchers, flood(8000), settings_, fast=True, batch=1024)
    state = worker.fast_heuristics
    assert 0 < state.held()[held] <= max(caps.values())
    assert worker.stats()["saturation"][counter] > 0
    # and the same verdicts and counters as the reference under the same flood
    (fast_events, fast_stats), (ref_events, ref_stats) = both(matchers, flood(3000), settings_, batch=1024)
    assert fast_events == ref_events and fast_stats == ref_stats


def test_nxdomain_counting_stays_bounded_on_the_fast_path(matchers):
    _, worker = run(matchers, _nx_name_flood(4000), HeuristicSettings(max_nxdomain_names=256), fast=True, batch=1024)
    assert worker.stats()["saturation"]["nxdomain counters evicted"] > 0


# --- batches longer than the scan's frame index ------------------------------------------------------

def test_a_batch_longer_than_the_frame_index_is_scanned_in_parts(matchers):
    n = _fastpath.MAX_BATCH_FRAMES + 600
    # quiet traffic, with a port scan whose probes straddle the part boundary
    frames = [(i * 0.00001, g.udp_frame("10.0.0.1", "10.0.0.2", 40000, 5000, b"x" * 200)) for i in range(n)]
    at = _fastpath.MAX_BATCH_FRAMES - 6
    for k in range(12):
        frames[at + k] = (frames[at + k][0], g.tcp_frame("203.0.113.9", "198.18.0.7", 40000, 1000 + k, g.TCP_SYN))
    (fast_events, fast_stats), (ref_events, ref_stats) = both(matchers, frames, batch=n)
    assert {e.info for e in fast_events if e.reference == "(heuristic)"} == {"potential port scanning"}
    assert fast_events == ref_events and fast_stats == ref_stats
    tables, state = fast_tables(matchers.artifact), fast_heuristics(HeuristicSettings())
    with pytest.raises(ValueError):
        big = memoryview(bytes(8 * n))
        _fastpath.scan(tables, b"", big.cast("Q"), memoryview(bytes(4 * n)).cast("I"),
                       memoryview(bytes(2 * n)).cast("H"), memoryview(bytes(8 * n)).cast("q"), state)


def test_switching_a_heuristic_off_switches_it_off_in_c(matchers):
    frames = [(i * 0.1, g.tcp_frame("203.0.113.9", "198.18.0.7", 40000, 1000 + i, g.TCP_SYN)) for i in range(20)]
    on, _ = run(matchers, frames, fast=True)
    assert "potential port scanning" in {e.info for e in on}
    off, _ = run(matchers, frames, dataclasses.replace(HeuristicSettings(), port_scan=False), fast=True)
    assert not off
