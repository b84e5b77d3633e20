"""Trail matchers: the fast structures against the plain-Python references, and their semantics.

What this file establishes:
1. differential: for random trail sets compiled by trailsdb into a real artifact, the fast
   matchers (`TrailMatchers.load`: C hash tables, roaring bitmaps read in place, Aho-Corasick
   prefilters) give exactly the answers of the references (`TrailMatchers.reference`), for
   queries biased to hit (members, parents, subdomains, range edges, ports +-1);
2. Maltrail's match semantics, pinned by examples (exact IP beats a range, most specific range,
   parent domains at label boundaries, the ip-adress.com / .onion / regex special cases, the
   name-server and dynamic-DNS exclusions, how a hit is rendered);
3. Maltrail's URL candidate list and what path, host/path and host/ trails match;
4. the C readers never crash and never answer outside the trail table on damaged input;
5. loading the real trail set maps the artifact without reading it (slow; needs ../shared).
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import os
import random
import re
import struct
import subprocess
import sys
import tempfile

import pyroaring
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matchers import Artifact, TrailMatchers, _native
from matchers.artifact import (
    KIND_CIDR4, KIND_CIDR6, KIND_DOMAIN, KIND_IPPORT4, KIND_IPPORT6, KIND_IPV4, KIND_IPV6,
    KIND_PATH, KIND_REGEX, KIND_UA, KIND_URL, S_DOMAINS, S_STRINGS, S_TRAILS, TRAIL_RECORD,
    write_artifact,
)
from matchers.domains import DomainHit, render_span
from matchers.ips import parse_ipport
from matchers.regextrails import ReferenceRegexTrails, RegexTrails, required_literals
from matchers.urls import UrlHit, url_checks
from tests.conftest import SHARED_TRAILS, need_shared
from trailsdb.compile import build, layout
from trailsdb.normalize import normalize_trail
from trailsdb.sources import EMPTY_WHITELIST

# Building an artifact per example touches the disk (write, fsync, rename): no deadline.
DIFF_SETTINGS = settings(max_examples=150, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---- helpers ----------------------------------------------------------------------------------

def write_trails_csv(path, rows) -> None:
    """rows of (trail, info, reference) in Maltrail's trails.csv dialect (csv module quoting)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        for row in rows:
            writer.writerow(row)


def build_rows(directory, rows, name="trails.mtdb"):
    """A real artifact from rows, via trailsdb.compile.build; returns the opened Artifact."""
    source = os.path.join(directory, "trails.csv")
    write_trails_csv(source, rows)
    output = os.path.join(directory, name)
    build([source], output)
    return Artifact.open(output)


def write_entries(path, entries, meta):
    """An artifact laid out directly from (kind, key, meta index) entries; trail id = position.
    Lets a test place two trails with the same key, which the build itself would merge."""
    sections = layout(entries, meta, EMPTY_WHITELIST, {})
    write_artifact(str(path), 1, 0, sections)
    return Artifact.open(str(path))


def ids_by_key(artifact) -> dict:
    return {artifact.key(i): i for i in range(artifact.trail_count)}


def v4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def v6(text: str) -> int:
    return int(ipaddress.IPv6Address(text))


# ---- 1. differential: random trail sets, fast vs reference -----------------------------------

# Small address neighbourhoods so that exact addresses, ranges and ip:port trails collide.
V4_BLOCKS = [v4("10.0.0.0"), v4("10.1.0.0"), v4("172.16.0.0")]
V6_BASE = v6("2001:db8::")
LABELS = ["evil", "a", "b", "cdn", "mail", "ns1", "mx2", "www", "x-1", "login", "dga7", "dyn"]
TLDS = ["com", "net", "example"]
WORDS = ["evil", "bad", "zeta"]
# Regex trail templates in the shapes Maltrail's wildcard trails take; {w} is a word above.
REGEX_TEMPLATES = [
    r"dga[0-9]+\.{w}\.com",
    r"{w}[a-z]{{4,8}}\.net",
    r"(alpha|beta)-{w}[0-9]*\.example",
    r"x[0-9a-f]+\.{w}\.(com|net)",
    r"[a-z]+-{w}\.top",
    r"(?:cdn|img)[0-9]+\.{w}[.-]srv\.com",
]
SEGMENTS = ["bad", "gate.php", "panel", "login.php", "admin", "x", "api"]
UA_TOKENS = ["BadBot", "zgrab", "Mozilla/4.0 (compatible; evil)", "curl/7.", "python-requests",
             "bot"]
# User-agent regular expressions in the shapes Maltrail's misc/ua.txt uses: anchors, optional
# versions, word boundaries, one-character classes.
UA_REGEXES = [r"\Azgrab\Z", r"\Acurl( [\d.]+)?\Z", r"\bbot\b", r"bad.ot", r"python-requests/\d",
              r"\A\w{1,2}\Z", r"Mozilla/4\.0 \(compatible"]
INFOS = ["malware", "botnet c2 (malware)", "suspicious domain (suspicious)", "sinkhole x (malware)",
         "dynamic domain (suspicious)", "free web hosting (suspicious)", "reputation",
         "parking site (suspicious)"]
REFERENCES = ["(static)", "feed.example", "(custom)"]
PORTS = [53, 80, 443, 8080, 8443]

v4_addrs = st.builds(lambda block, off: block + off, st.sampled_from(V4_BLOCKS),
                     st.one_of(st.integers(0, 600), st.integers(0, 0xFFFF)))
v6_addrs = st.builds(lambda hi, lo: V6_BASE + (hi << 64) + lo, st.integers(0, 3),
                     st.one_of(st.integers(0, 600), st.integers(0, 2 ** 64 - 1)))
ports = st.one_of(st.sampled_from(PORTS), st.integers(0, 65535))
# Domains grow from a few bases so that trails are often parents/children of each other.
DOMAIN_BASES = ["evil.com", "a.net", "cdn.example", "dyn.com", "x-1.net", "com"]
domain_names = st.builds(lambda labels, base: ".".join(labels + [base]),
                         st.lists(st.sampled_from(LABELS), max_size=3), st.sampled_from(DOMAIN_BASES))
paths = st.builds(lambda segs, tail: "/" + "/".join(segs) + tail,
                  st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3),
                  st.sampled_from(["", "/", "?id=", "?id=1&cmd=run", "?q"]))


def _ip4_text(a: int) -> str:
    return str(ipaddress.IPv4Address(a))


def _ip6_text(a: int) -> str:
    return str(ipaddress.IPv6Address(a))


def _texts(strategy, max_size):
    return st.lists(strategy, max_size=max_size)


@st.composite
def trail_rows(draw):
    """A trail set with several trails of every kind (so ranges nest, domains have parents,
    ports collide), in random order (trail ids follow it), each with a random label."""
    hosts = st.one_of(domain_names, v4_addrs.map(_ip4_text))
    groups = [
        _texts(v4_addrs.map(_ip4_text), 6),
        _texts(st.builds(lambda a, p: "%s/%d" % (_ip4_text(a), p), v4_addrs, st.integers(8, 32)), 8),
        _texts(st.builds(lambda a, p: "%s:%d" % (_ip4_text(a), p), v4_addrs, ports), 5),
        _texts(v6_addrs.map(_ip6_text), 4),
        _texts(st.builds(lambda a, p: "%s/%d" % (_ip6_text(a), p), v6_addrs, st.integers(16, 128)), 5),
        _texts(st.builds(lambda a, p: "[%s]:%d" % (_ip6_text(a), p), v6_addrs, ports), 3),
        _texts(domain_names, 10),
        _texts(st.builds(lambda t, w: t.format(w=w), st.sampled_from(REGEX_TEMPLATES),
                         st.sampled_from(WORDS)), 3),
        _texts(st.builds(lambda host, path: host + path, hosts, paths), 5),
        _texts(paths, 4),
        _texts(hosts.map(lambda h: h + "/"), 2),
        _texts(st.sampled_from(UA_TOKENS).map(lambda t: "ua:" + t), 3),
        _texts(st.sampled_from(UA_REGEXES).map(lambda t: "ua-re:" + t), 3),
    ]
    texts = [t for group in groups for t in draw(group)]
    texts = draw(st.permutations(texts))
    labels = st.tuples(st.sampled_from(INFOS), st.sampled_from(REFERENCES))
    rows = [(t,) + draw(labels) for t in texts]
    return rows or [("evil.com", "malware", "(static)")]


def _regex_instances(w: str, rng: random.Random) -> list[str]:
    """Names around each regex template for word w: matching, near misses, with prefix/suffix."""
    digits = str(rng.randint(0, 99999))
    letters = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 10)))
    hexes = "%x" % rng.randint(0, 2 ** 32)
    core = [
        "dga%s.%s.com" % (digits, w), "dga.%s.com" % w,
        "%s%s.net" % (w, letters),
        "%s-%s%s.example" % (rng.choice(["alpha", "beta", "gamma"]), w, rng.choice(["", digits])),
        "x%s.%s.%s" % (hexes, w, rng.choice(["com", "net", "org"])),
        "%s-%s.top" % (letters, w),
        "%s%s.%s%ssrv.com" % (rng.choice(["cdn", "img", "js"]), digits, w, rng.choice([".", "-", "_"])),
    ]
    out = []
    for name in core:
        out.append(name)
        out.append(rng.choice(LABELS) + "." + name)
        out.append(name + "." + rng.choice(TLDS))
    return out


def _ip_queries(artifact, draw_v4, draw_v6):
    q4, q6 = set(draw_v4), set(draw_v6)
    for i in range(artifact.trail_count):
        kind, key = artifact.kind(i), artifact.key(i)
        if kind in (KIND_IPV4, KIND_IPV6):
            a = int(ipaddress.ip_address(key))
            (q4 if kind == KIND_IPV4 else q6).update((a - 1, a, a + 1))
        elif kind in (KIND_CIDR4, KIND_CIDR6):
            net = ipaddress.ip_network(key)
            first, last = int(net.network_address), int(net.broadcast_address)
            (q4 if kind == KIND_CIDR4 else q6).update((first - 1, first, (first + last) // 2, last, last + 1))
    top4, top6 = 2 ** 32 - 1, 2 ** 128 - 1
    return sorted(a for a in q4 if 0 <= a <= top4), sorted(a for a in q6 if 0 <= a <= top6)


def _port_queries(artifact, draw_v4, draw_v6):
    out = [(4, a, p) for a in draw_v4 for p in PORTS[:2]] + [(6, a, 443) for a in draw_v6]
    for i in range(artifact.trail_count):
        kind = artifact.kind(i)
        if kind in (KIND_IPPORT4, KIND_IPPORT6):
            host, port = parse_ipport(artifact.key(i))
            a = int(ipaddress.ip_address(host))
            version = 4 if kind == KIND_IPPORT4 else 6
            out += [(version, a, port - 1), (version, a, port), (version, a, port + 1),
                    (version, a + 1, port)]
    return out


def _domain_queries(artifact, drawn, rng):
    names = set(drawn)
    for w in WORDS + ["other"]:
        names.update(_regex_instances(w, rng))
    for i in range(artifact.trail_count):
        if artifact.kind(i) != KIND_DOMAIN:
            continue
        key = artifact.key(i)
        names.update((key, "www." + key, "ns1." + key, "mx2." + key, "cust." + key, "www.cust." + key,
                      "not" + key, key + ".cn", key + ".ip-adress.com", key + ".onion.to"))
        if "." in key:
            names.add(key.split(".", 1)[1])
    return sorted(names)


def _url_queries(artifact, drawn_hosts, drawn_paths, posts):
    out = [(h, p, posts[n % len(posts)]) for n, (h, p) in enumerate(zip(drawn_hosts, drawn_paths))]
    for i in range(artifact.trail_count):
        kind, key = artifact.kind(i), artifact.key(i)
        if kind == KIND_URL:
            host, _, rest = key.partition("/")
            path = "/" + rest
            out += [(host, path, None), (host, path + "/", None), (host, path + "?id=7&x=y", None),
                    (host, path + "/more.php", "a=1"), ("other.example", path, None),
                    (host, "/" + drawn_paths[i % len(drawn_paths)].lstrip("/"), None)]
        elif kind == KIND_PATH:
            out += [("h.example", key, None), ("h.example", key + "1", None),
                    ("h.example", "/up" + key, "id=1"), ("h.example", key.split("?")[0], "id=1")]
    return out


@DIFF_SETTINGS
@given(rows=trail_rows(), data=st.data())
def test_fast_matchers_agree_with_reference(rows, data):
    with tempfile.TemporaryDirectory() as directory:
        artifact = build_rows(directory, rows)
        fast, ref = TrailMatchers.load(artifact), TrailMatchers.reference(artifact)
        rng = random.Random(data.draw(st.integers(0, 2 ** 32), label="seed"))

        extra4 = data.draw(st.lists(v4_addrs, max_size=20), label="v4 queries")
        extra6 = data.draw(st.lists(v6_addrs, max_size=10), label="v6 queries")
        q4, q6 = _ip_queries(artifact, extra4, extra6)
        for version, addrs in ((4, q4), (6, q6)):
            for a in addrs:
                assert fast.ips.lookup_ip(version, a) == ref.ips.lookup_ip(version, a), (version, a)
        for version, a, port in _port_queries(artifact, extra4, extra6):
            if 0 <= port <= 65535:
                assert (fast.ips.lookup_ip_port(version, a, port)
                        == ref.ips.lookup_ip_port(version, a, port)), (version, a, port)

        names = _domain_queries(artifact, data.draw(st.lists(domain_names, max_size=20), label="names"), rng)
        for name in names:
            assert fast.domains.table.suffixes(name) == ref.domains.table.suffixes(name), name
            assert fast.domains.match(name) == ref.domains.match(name), name

        hosts = data.draw(st.lists(st.one_of(domain_names, v4_addrs.map(_ip4_text)), min_size=1,
                                   max_size=10), label="hosts")
        qpaths = data.draw(st.lists(paths, min_size=len(hosts), max_size=len(hosts)), label="paths")
        posts = data.draw(st.lists(st.one_of(st.none(), st.sampled_from(["id=1", "cmd=run&x=2", "a"])),
                                   min_size=1, max_size=4), label="posts")
        for host, path, post in _url_queries(artifact, hosts, qpaths, posts):
            assert fast.urls.match(host, path, post) == ref.urls.match(host, path, post), (host, path, post)

        agents = data.draw(st.lists(st.lists(st.sampled_from(UA_TOKENS + ["Mozilla/5.0", " ", "x"]),
                                             max_size=4).map("".join), max_size=10), label="agents")
        for ua in agents + [t.upper() for t in UA_TOKENS] + ["", "nothing here", "x", "zgrab", "curl 7.1",
                                                             "a bot b", "python-requests/2"]:
            assert fast.user_agents.match_span(ua) == ref.user_agents.match_span(ua), ua


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(starts=st.lists(v4_addrs, min_size=1, max_size=30), prefixes=st.data())
def test_nested_ipv4_ranges_agree_with_reference(starts, prefixes):
    """Many overlapping and nested IPv4 ranges in one small neighbourhood, plus exact addresses:
    every address around every range edge gets the same (most specific) answer."""
    rows = []
    for a in starts:
        prefix = prefixes.draw(st.integers(12, 32), label="prefix")
        rows.append(("%s/%d" % (_ip4_text(a), prefix), "range", "(static)"))
        if prefix % 3 == 0:
            rows.append((_ip4_text(a + 1), "exact", "(static)"))
    with tempfile.TemporaryDirectory() as directory:
        artifact = build_rows(directory, rows)
        fast, ref = TrailMatchers.load(artifact), TrailMatchers.reference(artifact)
        q4, _ = _ip_queries(artifact, starts, [])
        for a in q4:
            assert fast.ips.lookup_ip(4, a) == ref.ips.lookup_ip(4, a), _ip4_text(a)


regex_sets = st.lists(st.builds(lambda t, w: t.format(w=w), st.sampled_from(REGEX_TEMPLATES),
                                st.sampled_from(WORDS)), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(patterns=regex_sets, seed=st.integers(0, 2 ** 32), junk=st.lists(domain_names, max_size=5))
def test_regex_trails_agree_with_maltrail_alternation(patterns, seed, junk):
    listed = list(enumerate(patterns, 10))
    fast, ref = RegexTrails(listed), ReferenceRegexTrails(listed)
    rng = random.Random(seed)
    for w in WORDS + ["other"]:
        for name in _regex_instances(w, rng) + junk:
            assert fast.search(name) == ref.search(name), (patterns, name)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2 ** 32))
def test_required_literals_occur_in_every_match(seed):
    """The prefilter's premise: whenever a template matches a name, the matched text contains one
    of the literals read off the pattern."""
    rng = random.Random(seed)
    for template in REGEX_TEMPLATES:
        for w in WORDS:
            pattern = template.format(w=w)
            literals = required_literals(pattern)
            regex = re.compile(pattern, re.IGNORECASE)
            for name in _regex_instances(w, rng):
                m = regex.search(name)
                if m is not None and literals:
                    assert any(lit in m.group(0).lower() for lit in literals), (pattern, name, literals)


def test_required_literals_examples():
    assert required_literals(r"dga[0-9]+\.wildcard-test\.com") == [".wildcard-test.com"]
    assert required_literals(r"(alpha|beta)[0-9]+\.x") == ["alpha", "beta"]
    assert required_literals(r"abc|defgh") == []          # top-level alternation: nothing required
    assert required_literals(r"(abcd)?[0-9]+\.x") == []    # an optional group requires nothing
    assert required_literals(r"ab[0-9]cd+e") == []         # no run of 3 required characters
    assert required_literals(r"abcd*e") == ["abc"]         # 'd' may be absent


@pytest.mark.parametrize("pattern, name", [
    (r"dga[0-9]+\x2eevil\x2ecom", "dga12.evil.com"),
    (r"[a-z]+\u002eabcd\.com", "x.abcd.com"),
    (r"x[0-9]+\101bcd\.com", "x1abcd.com"),
])
def test_regex_trails_with_hex_escapes(pattern, name):
    assert ReferenceRegexTrails([(0, pattern)]).search(name) == (0, 0, len(name))
    assert RegexTrails([(0, pattern)]).search(name) == (0, 0, len(name))


def test_regex_trails_case_insensitive_like_reference():
    pattern = r"dga[0-9]+\.wildcard-test\.com"
    name = "dga12.WILDCARD-test.com"
    assert ReferenceRegexTrails([(0, pattern)]).search(name) == (0, 0, len(name))
    assert RegexTrails([(0, pattern)]).search(name) == ReferenceRegexTrails([(0, pattern)]).search(name)


@pytest.mark.parametrize("pattern", [r"(?i)dga[0-9]+\.evil\.com", r"([a-z])\1+[0-9]*\.evil\.com"])
def test_every_accepted_regex_trail_loads_in_both_matchers(tmp_path, pattern):
    if normalize_trail(pattern, "(static)")[0] is None:
        return      # refusing such a trail up front is as good a fix as handling it
    artifact = build_rows(str(tmp_path), [(pattern, "malware", "(static)")])
    fast = TrailMatchers.load(artifact)
    ref = TrailMatchers.reference(artifact)
    for name in ("dga12.evil.com", "aa1.evil.com", "clean.example"):
        assert fast.domains.match(name) == ref.domains.match(name)


# ---- 2. semantics pinned by examples ----------------------------------------------------------

SEMANTIC_ROWS = [
    ("66.66.66.66", "exact (malware)", "(static)"),
    ("66.66.0.0/16", "range16 (malware)", "(static)"),
    ("66.66.66.0/24", "range24 (malware)", "(static)"),
    ("66.0.0.0/8", "range8 (malware)", "(static)"),
    ("6.6.6.6:8443", "ipport (malware)", "(static)"),
    ("2001:db8::/32", "v6 range32", "(static)"),
    ("2001:db8:1::/48", "v6 range48", "(static)"),
    ("2001:db8:1::5", "v6 exact", "(static)"),
    ("[2001:db8::1]:443", "v6 ipport", "(static)"),
    ("evil.com", "malware", "(static)"),
    ("sub.evil-parent.com", "malware (child)", "(static)"),
    ("evil-parent.com", "malware (parent)", "(static)"),
    ("badsite.onion", "tor (malware)", "(static)"),
    ("evilname", "malware", "(static)"),
    (r"dga[0-9]+\.wildcard-test\.com", "dga (malware)", "(static)"),
    ("sinkholed.example", "sinkhole microsoft (malware)", "(static)"),
    ("parked.example", "parking site (suspicious)", "(static)"),
    ("a.mixed.example", "parking site (suspicious)", "(static)"),
    ("mixed.example", "botnet (malware)", "(static)"),
    ("dyn-provider.example", "dynamic domain (suspicious)", "(static)"),
    ("freehost.example", "free web hosting (suspicious)", "(static)"),
    ("/malicious-login.php", "path (malware)", "(static)"),
    ("evil-url.example/bad/path", "url (malware)", "(static)"),
    ("whole-host.example/", "host (malware)", "(static)"),
    ("query-dropped.example/line/?fields=x", "url (malware)", "(static)"),
    ("/gate.php?uploadsms=1", "post form (malware)", "(static)"),
    ("ua:BadBot/1.0", "ua (malware)", "(static)"),
    ("ua:zgrab", "ua scanner", "(static)"),
]


@pytest.fixture(scope="module")
def semantic(tmp_path_factory):
    artifact = build_rows(str(tmp_path_factory.mktemp("semantic")), SEMANTIC_ROWS)
    return artifact, ids_by_key(artifact)


@pytest.fixture(params=["fast", "reference"])
def sem(request, semantic):
    """(matchers, ids): every semantic example runs against both implementations."""
    artifact, ids = semantic
    load = TrailMatchers.load if request.param == "fast" else TrailMatchers.reference
    return load(artifact), ids


def test_exact_ip_beats_range_and_most_specific_range_wins(sem):
    m, ids = sem
    assert m.ips.lookup_ip(4, v4("66.66.66.66")) == ids["66.66.66.66"]
    assert m.ips.lookup_ip(4, v4("66.66.66.67")) == ids["66.66.66.0/24"]
    assert m.ips.lookup_ip(4, v4("66.66.66.0")) == ids["66.66.66.0/24"]
    assert m.ips.lookup_ip(4, v4("66.66.66.255")) == ids["66.66.66.0/24"]
    assert m.ips.lookup_ip(4, v4("66.66.67.0")) == ids["66.66.0.0/16"]
    assert m.ips.lookup_ip(4, v4("66.66.0.0")) == ids["66.66.0.0/16"]
    assert m.ips.lookup_ip(4, v4("66.1.2.3")) == ids["66.0.0.0/8"]
    assert m.ips.lookup_ip(4, v4("65.255.255.255")) is None
    assert m.ips.lookup_ip(4, v4("67.0.0.0")) is None
    assert m.ips.lookup_ip(6, v6("2001:db8:1::5")) == ids["2001:db8:1::5"]
    assert m.ips.lookup_ip(6, v6("2001:db8:1::6")) == ids["2001:db8:1::/48"]
    assert m.ips.lookup_ip(6, v6("2001:db8:2::6")) == ids["2001:db8::/32"]
    assert m.ips.lookup_ip(6, v6("2001:db9::")) is None


def test_ip_port_only_matches_that_port(sem):
    m, ids = sem
    a = v4("6.6.6.6")
    assert m.ips.lookup_ip_port(4, a, 8443) == ids["6.6.6.6:8443"]
    assert m.ips.lookup_ip_port(4, a, 8442) is None
    assert m.ips.lookup_ip_port(4, a, 8444) is None
    assert m.ips.lookup_ip_port(4, a + 1, 8443) is None
    assert m.ips.lookup_ip(4, a) is None          # an ip:port trail is not an address trail
    b = v6("2001:db8::1")
    assert m.ips.lookup_ip_port(6, b, 443) == ids["[2001:db8::1]:443"]
    assert m.ips.lookup_ip_port(6, b, 444) is None
    assert m.ips.lookup_ip_port(6, b + 1, 443) is None


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_equal_prefixes_go_to_the_lower_trail_id(tmp_path, impl):
    # The build merges identical keys, so lay the artifact out directly with duplicates.
    entries = [(KIND_CIDR4, "10.0.0.0/8", 0), (KIND_CIDR4, "10.0.0.0/16", 1),
               (KIND_CIDR4, "10.0.0.0/16", 2), (KIND_IPV4, "10.0.0.5", 0),
               (KIND_CIDR6, "2001:db8::/32", 0), (KIND_CIDR6, "2001:db8::/32", 1)]
    artifact = write_entries(tmp_path / "dup.mtdb", entries, [("a", "x"), ("b", "x"), ("c", "x")])
    m = (TrailMatchers.load if impl == "fast" else TrailMatchers.reference)(artifact)
    assert m.ips.lookup_ip(4, v4("10.0.0.5")) == 3
    assert m.ips.lookup_ip(4, v4("10.0.0.6")) == 1
    assert m.ips.lookup_ip(4, v4("10.0.255.255")) == 1
    assert m.ips.lookup_ip(4, v4("10.1.0.0")) == 0
    assert m.ips.lookup_ip(6, v6("2001:db8::77")) == 4


def test_domain_parents_match_at_label_boundaries_only(sem):
    m, ids = sem
    evil = ids["evil.com"]
    assert m.domains.match("evil.com") == DomainHit(evil, 0, 8)
    assert m.domains.match("www.evil.com") == DomainHit(evil, 4, 12)
    assert m.domains.match("a.b.evil.com") == DomainHit(evil, 4, 12)
    for name in ("notevil.com", "xevil.com", "evil.com.cn", "evil.co", "com", "vil.com"):
        assert m.domains.match(name) is None, name
    assert m.domains.table.suffixes("notevil.com") == []


def test_most_specific_suffix_first(sem):
    m, ids = sem
    child, parent = ids["sub.evil-parent.com"], ids["evil-parent.com"]
    name = "www.sub.evil-parent.com"
    assert m.domains.table.suffixes(name) == [(child, 4), (parent, 8)]
    assert m.domains.match(name) == DomainHit(child, 4, len(name))
    assert m.domains.match("other.evil-parent.com") == DomainHit(parent, 6, 21)


def test_maltrail_special_cases(sem):
    m, ids = sem
    name = "evilname.ip-adress.com"
    assert m.domains.match(name) == DomainHit(ids["evilname"], 0, 8)
    assert m.domains.match("othername.ip-adress.com") is None
    assert m.domains.match("badsite.onion.to") == DomainHit(ids["badsite.onion"], 0, 13)
    assert m.domains.match("badsite.onion.ly") == DomainHit(ids["badsite.onion"], 0, 13)
    assert m.domains.match("www.badsite.onion") == DomainHit(ids["badsite.onion"], 4, 17)
    assert m.domains.match("goodsite.onion.to") is None
    regex = ids[r"dga[0-9]+\.wildcard-test\.com"]
    assert m.domains.match("dga1234.wildcard-test.com") == DomainHit(regex, 0, 25)
    assert m.domains.match("x.dga1234.wildcard-test.com") == DomainHit(regex, 2, 27)
    assert m.domains.match("dga.wildcard-test.com") is None


def test_name_server_exclusion_under_suspicious_and_sinkhole(sem):
    m, ids = sem
    for prefix in ("ns1.", "ns.", "rns2.", "dns.", "mx.", "mx10.", "nf3.", "nic."):
        assert m.domains.match(prefix + "sinkholed.example") is None, prefix
        assert m.domains.match(prefix + "parked.example") is None, prefix
    assert m.domains.match("www.sinkholed.example") == DomainHit(ids["sinkholed.example"], 4, 21)
    assert m.domains.match("sinkholed.example") == DomainHit(ids["sinkholed.example"], 0, 17)
    assert m.domains.match("ns1.evil.com") == DomainHit(ids["evil.com"], 4, 12)   # malware: kept
    assert m.domains.match("nsx.parked.example") == DomainHit(ids["parked.example"], 4, 18)
    # The excluded (suspicious) trail is skipped, the next parent (malware) still matches.
    assert m.domains.match("ns1.a.mixed.example") == DomainHit(ids["mixed.example"], 6, 19)


def test_dynamic_and_free_web_parents_match_customers_only(sem):
    m, ids = sem
    for trail in ("dyn-provider.example", "freehost.example"):
        assert m.domains.match(trail) is None
        assert m.domains.match("www." + trail) is None
        assert m.domains.match("www.customer1." + trail) is None
        hit = m.domains.match("customer1." + trail)
        assert hit == DomainHit(ids[trail], 10, 10 + len(trail))
        assert render_span("customer1." + trail, hit.start, hit.end) == "(customer1).%s" % trail


def test_render_span_the_maltrail_way(sem):
    m, _ = sem
    cases = {
        "www.evil-parent.com": "(www).evil-parent.com",
        "a.b.sub.evil-parent.com": "(a.b).sub.evil-parent.com",
        "badsite.onion.to": "badsite.onion(.to)",
        "evilname.ip-adress.com": "evilname(.ip-adress.com)",
        "x.dga12.wildcard-test.com": "(x).dga12.wildcard-test.com",
        "dga12.wildcard-test.com.cn": "dga12.wildcard-test.com(.cn)",
        "y.dga12.wildcard-test.com.cn": "(y).dga12.wildcard-test.com(.cn)",
        "evil.com": "evil.com",
    }
    for name, rendered in cases.items():
        hit = m.domains.match(name)
        assert hit is not None, name
        assert render_span(name, hit.start, hit.end) == rendered


def test_user_agent_substring_lowest_id_wins(sem):
    m, ids = sem
    assert m.user_agents.match("Mozilla/5.0 badbot/1.0 (x)") == ids["badbot/1.0"]
    assert m.user_agents.match("ZGRAB/0.x") == ids["zgrab"]
    assert m.user_agents.match("zgrab badbot/1.0") == min(ids["zgrab"], ids["badbot/1.0"])
    assert m.user_agents.match("Mozilla/5.0") is None
    assert m.user_agents.match("") is None


# ---- 3. URL candidates ------------------------------------------------------------------------

@pytest.mark.parametrize("path, post, expected", [
    ("/a/b/c.php", None, ["/a/b/c.php", "/a/b", "/c.php"]),
    ("/gate.php", None, ["/gate.php"]),
    ("/dir/", None, ["/dir"]),
    ("/", None, []),
    ("/a/b?x", None, ["/a/b?x", "/a/b", "/a", "/b"]),
    ("/a/b/c.php?x=1&y=2", None,
     ["/a/b/c.php?x=1&y=2", "/a/b/c.php", "/a/b/c.php?x=", "/a/b/c.php?x=&y=", "/c.php?x=&y="]),
    ("/c.php?id=5", None, ["/c.php?id=5", "/c.php", "/c.php?id="]),
    ("/p?x=", None, ["/p?x=", "/p", "/p?x="]),
    ("/gate.php", "id=1&cmd=x", ["/gate.php", "/gate.php?id=1&cmd=x"]),
    ("/x/gate.php", "a=b", ["/x/gate.php", "/x/gate.php?a=b", "/x", "/gate.php"]),
    ("/x/gate.php?q=1", "a=b", ["/x/gate.php?q=1", "/x/gate.php", "/x/gate.php?q=", "/x", "/gate.php"]),
])
def test_url_checks_is_maltrails_list(path, post, expected):
    checks = url_checks(path, post)
    assert [c for c, _ in checks] == expected
    # only the form built from the POST body is flagged as such
    assert [c for c, is_post in checks if is_post] == (["%s?%s" % (path, post)] if post and "?" not in path else [])


def test_url_trails_match_requests(sem):
    m, ids = sem
    login = ids["/malicious-login.php"]
    assert m.urls.match("somehost.test", "/malicious-login.php") == UrlHit(login, "/malicious-login.php", False)
    assert m.urls.match("somehost.test", "/malicious-login.php?u=1").trail_id == login
    assert m.urls.match("somehost.test", "/dir/malicious-login.php").trail_id == login
    assert m.urls.match("somehost.test", "/malicious-login.phpx") is None
    bad = ids["evil-url.example/bad/path"]
    assert m.urls.match("evil-url.example", "/bad/path") == UrlHit(bad, "evil-url.example/bad/path", False)
    assert m.urls.match("evil-url.example", "/bad/path/").trail_id == bad
    assert m.urls.match("evil-url.example", "/bad/path?x=1").trail_id == bad
    assert m.urls.match("evil-url.example", "/bad/path/deeper.php").trail_id == bad
    assert m.urls.match("other.example", "/bad/path") is None
    assert m.urls.match("evil-url.example", "/bad") is None
    whole = ids["whole-host.example/"]
    for path in ("/", "/anything", "/a/b/c.php?x=1"):
        assert m.urls.match("whole-host.example", path) == UrlHit(whole, "whole-host.example/", False, True)
    assert m.urls.match("sub.whole-host.example", "/") is None
    # built as "query-dropped.example/line": the query and the trailing '/' it left are gone
    dropped = ids["query-dropped.example/line"]
    for path in ("/line/?fields=x", "/line/", "/line", "/line/?fields=y&z=1"):
        assert m.urls.match("query-dropped.example", path).trail_id == dropped, path
    assert m.urls.match("query-dropped.example", "/lines") is None
    assert m.urls.match("query-dropped.example", "/") is None
    post = ids["/gate.php?uploadsms=1"]
    assert m.urls.match("h.example", "/gate.php", "uploadsms=1") == UrlHit(post, "/gate.php?uploadsms=1", True)
    assert m.urls.match("h.example", "/gate.php", "uploadsms=2") is None
    assert m.urls.match("h.example", "/gate.php?uploadsms=1") == UrlHit(post, "/gate.php?uploadsms=1", False)


# ---- 4. C-level safety ------------------------------------------------------------------------

@st.composite
def roaring_bitmaps(draw):
    """Bitmaps with array, bitset, run and full containers, run-optimised or not."""
    count = draw(st.integers(0, 7))
    highs = draw(st.lists(st.one_of(st.sampled_from([0, 1, 2, 0xFFFF]), st.integers(0, 0xFFFF)),
                          min_size=count, max_size=count, unique=True))
    bm = pyroaring.BitMap()
    for hi in highs:
        base = hi << 16
        shape = draw(st.sampled_from(["array", "bitset", "runs", "full"]))
        if shape == "array":
            bm.update(base + lo for lo in draw(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=60)))
        elif shape == "bitset":
            rng = random.Random(draw(st.integers(0, 2 ** 32)))
            bm.update(base + lo for lo in rng.sample(range(0x10000), rng.randint(4097, 30000)))
        elif shape == "runs":
            for start, length in draw(st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(1, 5000)),
                                               min_size=1, max_size=8)):
                bm.add_range(base + start, base + min(start + length, 0x10000))
        else:
            bm.add_range(base, base + 0x10000)
    if draw(st.booleans()):
        bm.run_optimize()
    return bm


def _membership_queries(bm, rng, n=400):
    values = list(bm)
    picks = rng.sample(values, min(n, len(values))) if values else []
    out = set(picks)
    for v in picks[:100]:
        out.update((v - 1, v + 1))
    out.update(rng.randrange(2 ** 32) for _ in range(100))
    out.update((0, 1, 0xFFFF, 0x10000, 2 ** 32 - 1))
    if values:
        out.update((values[0] - 1, values[-1] + 1))
    return [v for v in out if 0 <= v < 2 ** 32]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bm=roaring_bitmaps(), seed=st.integers(0, 2 ** 32))
def test_roaring_view_agrees_with_pyroaring(bm, seed):
    view = _native.RoaringView(bm.serialize())
    for v in _membership_queries(bm, random.Random(seed)):
        assert (v in view) == (v in bm), v
        assert view.contains(v) == (v in bm), v


def _cookie(buf: bytes) -> tuple[bool, int]:
    """(has run containers, container count) from a portable roaring header."""
    cookie = struct.unpack_from("<I", buf)[0]
    if cookie & 0xFFFF == 12347:
        return True, (cookie >> 16) + 1
    return False, struct.unpack_from("<I", buf, 4)[0]


def _layout_cases():
    """One bitmap per header layout the reader handles differently."""
    empty = pyroaring.BitMap()
    arrays = pyroaring.BitMap([1, 5, 70000, 2 ** 32 - 1])
    bitset = pyroaring.BitMap(range(0, 20000, 2))
    few_runs = pyroaring.BitMap()
    few_runs.add_range(100, 5000)
    few_runs.add_range(3 << 16, (3 << 16) + 10)
    few_runs.update([(5 << 16) + 7])
    few_runs.run_optimize()
    many_runs = pyroaring.BitMap()
    for hi in range(6):
        many_runs.add_range((hi << 16) + 10 * hi, (hi << 16) + 1000 + 10 * hi)
    many_runs.update([(9 << 16) + 3, (9 << 16) + 99])
    many_runs.update(range(12 << 16, (12 << 16) + 16000, 3))
    many_runs.run_optimize()
    return {"empty": empty, "arrays": arrays, "bitset": bitset, "runs<4": few_runs, "runs>=4": many_runs}


def test_roaring_layout_cases_cover_every_header_form():
    cases = {name: bm.serialize() for name, bm in _layout_cases().items()}
    assert _cookie(cases["arrays"]) == (False, 3)
    assert _cookie(cases["empty"]) == (False, 0)
    runs, count = _cookie(cases["runs<4"])
    assert runs and count < 4          # the form without an offsets header
    runs, count = _cookie(cases["runs>=4"])
    assert runs and count >= 4
    rng = random.Random(3)
    for name, bm in _layout_cases().items():
        view = _native.RoaringView(bm.serialize())
        for v in _membership_queries(bm, rng):
            assert (v in view) == (v in bm), (name, v)


@pytest.mark.parametrize("name", ["arrays", "bitset", "runs<4", "runs>=4"])
def test_roaring_view_refuses_every_truncation(name):
    buf = _layout_cases()[name].serialize()
    for cut in range(len(buf)):
        with pytest.raises(ValueError):
            _native.RoaringView(buf[:cut])


@pytest.mark.parametrize("buf", [b"", b"\x3a\x30", b"\x00" * 16, b"garbage garbage!",
                                 struct.pack("<II", 12346, 70000), struct.pack("<HH", 12347, 9)])
def test_roaring_view_refuses_garbage(buf):
    with pytest.raises(ValueError):
        _native.RoaringView(buf)


def test_roaring_view_odd_queries_do_not_raise():
    view = _native.RoaringView(pyroaring.BitMap([1, 2, 3]).serialize())
    assert (2 ** 40) not in view
    assert -1 not in view
    assert "x" not in view
    assert view.contains(2 ** 40) is False
    with pytest.raises(TypeError):
        _native.RoaringView(12)


_header_prefixes = st.sampled_from([b"", struct.pack("<I", 12346), struct.pack("<II", 12346, 1),
                                    struct.pack("<II", 12346, 3), struct.pack("<HH", 12347, 0),
                                    struct.pack("<HH", 12347, 2), struct.pack("<HH", 12347, 5)])


@settings(max_examples=400, deadline=None)
@given(prefix=_header_prefixes, tail=st.binary(max_size=120), queries=st.lists(st.integers(0, 2 ** 32 - 1), max_size=30))
def test_roaring_view_on_random_bytes_never_crashes(prefix, tail, queries):
    try:
        view = _native.RoaringView(prefix + tail)
    except ValueError:
        return
    for q in queries + [0, 1, 0x10000, 0x20001]:
        assert view.contains(q) in (True, False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bm=roaring_bitmaps(), edits=st.lists(st.tuples(st.integers(0, 2 ** 16), st.integers(0, 255)),
                                            min_size=1, max_size=6),
       queries=st.lists(st.integers(0, 2 ** 32 - 1), max_size=30))
def test_roaring_view_on_damaged_bitmaps_never_crashes(bm, edits, queries):
    buf = bytearray(bm.serialize())
    for pos, value in edits:
        buf[pos % len(buf)] = value
    try:
        view = _native.RoaringView(bytes(buf))
    except ValueError:
        return
    for q in queries + list(bm)[:50]:
        assert view.contains(q) in (True, False)


@pytest.fixture(scope="module")
def small_table(tmp_path_factory):
    """(domains section, trails section, strings section, domain keys) of a small real artifact."""
    rows = [("d%d.example" % i, "malware", "(static)") for i in range(40)]
    rows += [("sub.d1.example", "malware", "(static)"), ("1.2.3.4", "x", "(static)")]
    artifact = build_rows(str(tmp_path_factory.mktemp("table")), rows)
    keys = [artifact.key(i) for i in range(artifact.trail_count) if artifact.kind(i) == KIND_DOMAIN]
    return (bytes(artifact.section(S_DOMAINS)), bytes(artifact.section(S_TRAILS)),
            bytes(artifact.section(S_STRINGS)), keys)


def test_table_finds_what_the_builder_put_in(small_table):
    section, trails, strings, keys = small_table
    table = _native.Table(section, trails, strings)
    assert table.count() == len(keys)
    for key in keys:
        tid = table.find(key.encode())
        assert tid >= 0
        off, length = struct.unpack_from("<IH", trails, tid * TRAIL_RECORD.size)
        assert strings[off:off + length] == key.encode()
    assert table.find(b"absent.example") == -1
    assert table.suffixes(b"www.sub.d1.example") == [(table.find(b"sub.d1.example"), 4),
                                                    (table.find(b"d1.example"), 8)]


def _table_section(cap: int, count: int, area: bytes) -> bytes:
    return struct.pack("<II", cap, count) + area


@pytest.mark.parametrize("section, trails_len", [
    (b"", 12), (b"\x10\x00\x00\x00", 12),
    (_table_section(0, 0, b""), 12),                       # capacity 0
    (_table_section(3, 1, b"\x00" * 24), 12),              # not a power of two
    (_table_section(16, 16, b"\x00" * 128), 12),           # count must be below capacity
    (_table_section(16, 1, b"\x00" * 120), 12),            # shorter than capacity says
    (_table_section(16, 1, b"\x00" * 136), 12),            # longer than capacity says
    (_table_section(16, 1, b"\x00" * 128), 13),            # trail table not a multiple of 12
])
def test_table_refuses_inconsistent_headers(section, trails_len):
    with pytest.raises(ValueError):
        _native.Table(section, b"\x00" * trails_len, b"abc")


@st.composite
def damaged_tables(draw, real_section, real_trails, real_strings):
    cap = draw(st.sampled_from([1, 2, 8, 64]))
    mode = draw(st.sampled_from(["random area", "real tags, random ids", "real table, random trails"]))
    if mode == "random area":
        count = draw(st.integers(0, cap - 1))
        section = _table_section(cap, count, draw(st.binary(min_size=8 * cap, max_size=8 * cap)))
    else:
        real_cap = struct.unpack_from("<I", real_section)[0]
        cap = real_cap
        if mode == "real tags, random ids":
            ntr = len(real_trails) // TRAIL_RECORD.size
            ids = draw(st.lists(st.one_of(st.integers(0, ntr + 3), st.integers(0, 2 ** 32 - 1)),
                                min_size=cap, max_size=cap))
            section = real_section[:8 + 4 * cap] + struct.pack("<%dI" % cap, *ids)
        else:
            section = real_section
    if mode == "real table, random trails":
        n = draw(st.integers(0, 60))
        trails = draw(st.binary(min_size=12 * n, max_size=12 * n))
        strings = draw(st.sampled_from([real_strings, real_strings[:10], b""]))
    else:
        trails, strings = real_trails, real_strings
    return section, trails, strings


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), noise=st.lists(st.binary(max_size=30), max_size=10))
def test_table_over_damaged_sections_stays_inside_the_trail_table(small_table, data, noise):
    real_section, real_trails, real_strings, keys = small_table
    section, trails, strings = data.draw(damaged_tables(real_section, real_trails, real_strings))
    table = _native.Table(section, trails, strings)
    ntrails = len(trails) // TRAIL_RECORD.size
    for key in [k.encode() for k in keys] + noise + [b"", b"www.sub.d1.example"]:
        tid = table.find(key)
        assert tid == -1 or 0 <= tid < ntrails
        for tid, start in table.suffixes(key):
            assert 0 <= tid < ntrails and 0 <= start < len(key)


def _py_hash64(data: bytes) -> int:
    """The hash artifact.h documents: FNV-1a 64 over the bytes, then MurmurHash3's fmix64."""
    mask = 2 ** 64 - 1
    h = 0xcbf29ce484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001b3) & mask
    h ^= h >> 33
    h = (h * 0xff51afd7ed558ccd) & mask
    h ^= h >> 33
    h = (h * 0xc4ceb9fe1a85ec53) & mask
    h ^= h >> 33
    return h


@given(data=st.binary(max_size=200))
def test_hash64_is_the_documented_function(data):
    assert _native.hash64(data) == _py_hash64(data)
    assert _native.hash64(bytearray(data)) == _native.hash64(memoryview(data)) == _native.hash64(data)


def test_hash64_is_deterministic_across_processes():
    samples = [b"", b"evil.com", b"/malicious-login.php", bytes(range(256))]
    script = ("import json, sys; from matchers import _native; "
              "print(json.dumps([_native.hash64(bytes.fromhex(h)) for h in sys.argv[1:]]))")
    out = subprocess.run([sys.executable, "-c", script] + [s.hex() for s in samples],
                         capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONHASHSEED="12345"))
    assert json.loads(out.stdout) == [_native.hash64(s) for s in samples]


# ---- 5. the real trail set: load cost and a sample of trails (slow) ---------------------------

@pytest.fixture(scope="module")
def real_artifact(tmp_path_factory):
    source = need_shared(SHARED_TRAILS)
    output = tmp_path_factory.mktemp("real") / "maltrail.mtdb"
    report = build([str(source)], str(output))
    return output, report


_RSS_SCRIPT = r"""
import json, os, sys
from matchers import Artifact, TrailMatchers
path = os.path.realpath(sys.argv[1])
artifact = Artifact.open(path)
matchers = TrailMatchers.load(artifact)
mappings, current = [], None
with open("/proc/self/smaps") as f:
    for line in f:
        fields = line.split()
        if fields and not fields[0].endswith(":") and "-" in fields[0]:
            current = {"range": fields[0], "rss_kb": 0} if len(fields) > 5 and fields[5] == path else None
            if current is not None:
                mappings.append(current)
        elif current is not None and fields[0] == "Rss:":
            current["rss_kb"] = int(fields[1])
print(json.dumps({"size": os.path.getsize(path), "mappings": mappings,
                  "trails": artifact.trail_count}))
"""


@pytest.mark.slow
def test_loading_the_real_artifact_does_not_read_it(real_artifact):
    output, report = real_artifact
    # A fresh process: the build's own verify() mapping would otherwise share the file's pages.
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(output)], capture_output=True,
                         text=True, check=True)
    result = json.loads(out.stdout)
    assert result["trails"] == report.trails > 1_000_000
    assert len(result["mappings"]) == 1, result
    rss = result["mappings"][0]["rss_kb"] * 1024
    assert rss < 0.5 * result["size"], "load made %.1f MB of the %.1f MB artifact resident" % (
        rss / 1e6, result["size"] / 1e6)


def _sample_rows(path, n, seed):
    """n rows of the compressed trails.csv, uniformly (reservoir sampling), with their line number."""
    rng = random.Random(seed)
    sample = []
    with open(path, "rb") as raw:
        text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8",
                                newline="")
        for i, row in enumerate(csv.reader(text)):
            if len(row) != 3:
                continue
            if len(sample) < n:
                sample.append(row)
            else:
                j = rng.randrange(i + 1)
                if j < n:
                    sample[j] = row
    return sample


def _pairs_for_key(path, key):
    """Every (info, reference) the source lists for a normalised key (for merged duplicates)."""
    pairs = set()
    with open(path, "rb") as raw:
        text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8",
                                newline="")
        for row in csv.reader(text):
            if len(row) == 3 and normalize_trail(row[0], row[2])[1] == key:
                pairs.add((row[1], row[2]))
    return pairs


_NS_PREFIX = re.compile(r"\A([rd]?ns|nf|mx|nic)\d*\.")


@pytest.mark.slow
def test_a_sample_of_real_trails_matches_through_the_fast_matchers(real_artifact):
    output, _ = real_artifact
    artifact = Artifact.open(str(output))
    m = TrailMatchers.load(artifact)
    checked = {}
    wrong_info = []
    for trail, info, reference in _sample_rows(str(SHARED_TRAILS), 2000, seed=20240601):
        kind, key = normalize_trail(trail, reference)
        if kind in (None, KIND_REGEX, KIND_UA):
            continue
        if kind in (KIND_IPV4, KIND_IPV6):
            a = ipaddress.ip_address(key)
            tid = m.ips.lookup_ip(a.version, int(a))
            assert tid is not None and artifact.key(tid) == key, trail
        elif kind in (KIND_CIDR4, KIND_CIDR6):
            net = ipaddress.ip_network(key)
            for a in (net.network_address, net.broadcast_address):
                tid = m.ips.lookup_ip(net.version, int(a))
                assert tid is not None, trail
                hit = artifact.key(tid)
                covering = ipaddress.ip_network(hit)       # an exact address is a /32 or /128
                assert a in covering and covering.prefixlen >= net.prefixlen, (trail, hit)
            tid = tid if artifact.key(tid) == key else None
        elif kind in (KIND_IPPORT4, KIND_IPPORT6):
            host, port = parse_ipport(key)
            a = ipaddress.ip_address(host)
            tid = m.ips.lookup_ip_port(a.version, int(a), port)
            assert tid is not None and artifact.key(tid) == key, trail
        elif kind == KIND_DOMAIN:
            tid = m.domains.table.find(key)
            assert tid is not None and artifact.key(tid) == key, trail
            label = artifact.meta_of(tid)[0]
            excluded = ("dynamic" in label or "free web" in label) or (
                ("suspicious" in label or "sinkhole" in label) and _NS_PREFIX.search(key))
            if not excluded and not key.endswith(".ip-adress.com"):
                assert m.domains.match(key) == DomainHit(tid, 0, len(key)), trail
            if "dynamic" in label or "free web" in label:
                assert m.domains.match("customer-q7." + key) == DomainHit(tid, 12, 12 + len(key)), trail
        else:  # URL or path
            tid = m.urls.table.find(key)
            assert tid is not None and artifact.key(tid) == key, trail
            if kind == KIND_PATH:
                host, path = "unlisted-host.test", key
            else:
                host, _, rest = key.partition("/")
                path = "/" + rest
            hit = m.urls.match(host, path)
            # Maltrail never matches 'host/dir/' trails: every candidate drops the trailing '/'.
            if not (path.endswith("/") and path.count("/") > 1):
                assert hit is not None, trail
                # A bare path trail is tried before host+path (Maltrail's order): either is right.
                assert hit.trail_id == tid or artifact.kind(hit.trail_id) == KIND_PATH, (trail, hit)
        checked[kind] = checked.get(kind, 0) + 1
        if tid is not None and artifact.meta_of(tid) != (info, reference):
            wrong_info.append((key, tid, info, reference))
    for key, tid, info, reference in wrong_info:
        # Only a key listed more than once may carry another row's label (Maltrail's merge).
        assert artifact.meta_of(tid) in _pairs_for_key(str(SHARED_TRAILS), key), (key, info, reference)
    assert sum(checked.values()) > 1900
    assert checked.get(KIND_DOMAIN, 0) > 1000 and checked.get(KIND_IPPORT4, 0) > 100


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 80, 443, 8443, 65535]), st.integers(0, 2**32 - 1)), max_size=400),
       st.booleans(), st.lists(st.integers(0, 2**64 - 1), max_size=50))
def test_roaring64_view_agrees_with_pyroaring(pairs, optimize, probes):
    import pyroaring
    values = [(port << 32) | low for port, low in pairs]
    bitmap = pyroaring.BitMap64(values)
    if optimize:
        bitmap.run_optimize()
    view = _native.RoaringView64(bitmap.serialize())
    for x in values + probes + [v + 1 for v in values] + [v ^ (1 << 32) for v in values]:
        if 0 <= x < 2**64:
            assert (x in view) == (x in bitmap)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_roaring64_view_refuses_garbage_without_crashing(data):
    try:
        view = _native.RoaringView64(data)
    except ValueError:
        return
    assert (12345 in view) in (True, False)
