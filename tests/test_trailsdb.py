"""The trail database: normalising trails, reading sources, building and publishing artifacts.

What this file establishes:
1. `normalize_trail` gives every trail shape Maltrail uses its normal form (or a reason to reject
   it), including the malformed rows of the real trail set;
2. the source readers: trails.csv (quoting, short rows, .zst/.gz), a Maltrail static tree, a
   custom directory, a whitelist;
3. the build: Maltrail's merge priority, the whitelist, the report, generations, an atomic
   publish that a concurrent reader never sees half-done, failed builds that leave the previous
   artifact alone, and refusal of damaged or foreign artifacts;
4. `trails check` (trailsdb.check.explain) verdicts and lines;
5. the shared fixture trails.csv builds, and every one of its trails is found.
"""

from __future__ import annotations

import csv
import gzip
import ipaddress
import json
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from matchers import Artifact, ArtifactError, TrailMatchers
from matchers.artifact import (
    _HEADER, _SECTION, KIND_CIDR4, KIND_CIDR6, KIND_DOMAIN, KIND_IPPORT4, KIND_IPPORT6, KIND_IPV4, KIND_IPV6,
    KIND_PATH, KIND_REGEX, KIND_UA, KIND_URL,
)
from tests.conftest import MALTRAIL_CORPUS, need_shared
from trailsdb.check import explain
from trailsdb.compile import build
from matchers.domains import is_dns_name
from trailsdb.normalize import _not_a_dns_name, normalize_trail
from trailsdb.sources import (
    SourceError, read_custom_dir, read_source, read_static_tree, read_trails_csv, read_whitelist,
)


def write_csv(path, rows) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return str(path)


def records(artifact) -> dict:
    """{key: (kind, info, reference)} of every trail in an artifact."""
    out = {}
    for i in range(artifact.trail_count):
        r = artifact.record(i)
        out[r.key] = (r.kind, r.info, r.reference)
    return out


def build_and_load(tmp_path, rows, **kwargs):
    source = write_csv(tmp_path / "feed.csv", rows)
    report = build([source], str(tmp_path / "out.mtdb"), **kwargs)
    artifact = Artifact.open(str(tmp_path / "out.mtdb"))
    return report, artifact


# ---- 1. normalize_trail -----------------------------------------------------------------------

@pytest.mark.parametrize("trail, expected", [
    # IPv4: dotted quads, leading zeros read as decimal, no octet above 255
    ("185.141.25.68", (KIND_IPV4, "185.141.25.68")),
    (" 185.141.25.68 ", (KIND_IPV4, "185.141.25.68")),
    ("010.001.002.003", (KIND_IPV4, "10.1.2.3")),
    ("185.141.25.256", (None, "octet above 255")),
    ("999.1.1.1", (None, "octet above 255")),
    # CIDR: host bits cleared, /32 is an address
    ("193.37.252.0/24", (KIND_CIDR4, "193.37.252.0/24")),
    ("193.37.252.77/24", (KIND_CIDR4, "193.37.252.0/24")),
    ("10.11.12.13/8", (KIND_CIDR4, "10.0.0.0/8")),
    ("45.9.148.3/32", (KIND_IPV4, "45.9.148.3")),
    ("45.9.148.0/33", (None, "prefix above 32")),
    ("45.9.300.0/24", (None, "octet above 255")),
    # ip:port
    ("91.215.85.209:4444", (KIND_IPPORT4, "91.215.85.209:4444")),
    ("91.215.85.209:0443", (KIND_IPPORT4, "91.215.85.209:443")),
    ("91.215.85.209:65535", (KIND_IPPORT4, "91.215.85.209:65535")),
    ("91.215.85.209:65536", (None, "port out of range")),
    ("178.236.246.50:80800", (None, "port out of range")),
    ("91.215.85.300:80", (None, "octet above 255")),
    # the malformed rows of the real set: a three-octet address, a doubled port
    ("182.86.133:8880", (None, "malformed address")),
    ("161.35.41.9:53:53", (None, "malformed address")),
    ("91.109.190.5:660666", (None, "malformed address")),
    # [v6]:port and IPv6
    ("[2a03:b0c0:3:d0::1b4:e001]:8443", (KIND_IPPORT6, "[2a03:b0c0:3:d0::1b4:e001]:8443")),
    ("[2A03:B0C0:0003:00D0:0000:0000:01B4:E001]:80", (KIND_IPPORT6, "[2a03:b0c0:3:d0::1b4:e001]:80")),
    ("[dead::beef]:70000", (None, "port out of range")),
    ("[dead::zz]:80", (None, "malformed")),
    ("2001:0db8:0000:0000:0000:0000:0000:0001", (KIND_IPV6, "2001:db8::1")),
    ("DEAD::BEEF", (KIND_IPV6, "dead::beef")),
    ("2001:db8:::1", (None, "malformed")),
    # IPv6 ranges
    ("2001:db8::1/64", (KIND_CIDR6, "2001:db8::/64")),
    ("2a0d:5600:0:0::/48", (KIND_CIDR6, "2a0d:5600::/48")),
    ("2001:db8::1/128", (KIND_IPV6, "2001:db8::1")),
    ("2001:db8::/129", (None, "malformed IPv6 range")),
    # domains: lower case, no www., no trailing dots, no wildcard, allowed characters only
    ("Sub.EVIL-Domain.com", (KIND_DOMAIN, "sub.evil-domain.com")),
    ("www.evil-domain.com", (KIND_DOMAIN, "evil-domain.com")),
    ("evil-domain.com.", (KIND_DOMAIN, "evil-domain.com")),
    ("evil-domain.com..", (KIND_DOMAIN, "evil-domain.com")),
    ("*.evil-domain.com", (KIND_DOMAIN, "evil-domain.com")),
    ("under_score.evil-domain.com", (KIND_DOMAIN, "under_score.evil-domain.com")),
    ("evil-domain.com?id=1", (KIND_DOMAIN, "evil-domain.com")),
    # every name DNS carries is a domain trail, not only hostnames: DNS tunnels, service labels
    ("AAAA.=auth.Tunnel.com", (KIND_DOMAIN, "aaaa.=auth.tunnel.com")),
    ("_ldap._tcp.evil-domain.com", (KIND_DOMAIN, "_ldap._tcp.evil-domain.com")),
    ("ev!l+x~y.evil-domain.com", (KIND_DOMAIN, "ev!l+x~y.evil-domain.com")),
    ("a" * 63 + ".evil-domain.com", (KIND_DOMAIN, "a" * 63 + ".evil-domain.com")),
    (".".join(["a" * 63] * 3 + ["b" * 61]), (KIND_DOMAIN, ".".join(["a" * 63] * 3 + ["b" * 61]))),   # 253
    # ... but not what cannot be a name: over-long labels and names, empty labels, whitespace,
    # control characters, a zone-file escape
    ("a" * 64 + ".evil-domain.com", (None, "a label longer than 63")),
    (".".join(["a" * 63] * 3 + ["b" * 62]), (None, "longer than 253")),
    ("evil..domain.com", (None, "an empty label")),
    ("evil domain.com", (None, "whitespace or control")),
    ("evil\tdomain.com", (None, "whitespace or control")),
    ("evil\x01domain.com", (None, "whitespace or control")),
    ("evil\x7fdomain.com", (None, "whitespace or control")),
    ("evil\\.domain.com", (None, "backslash")),
    ("", (None, "empty")),
    ("   ", (None, "empty")),
    # regex (wildcard) trails: kept as written (case too), must compile, reserved names refused
    (r"dga[0-9]+\.Wildcard-Test\.com", (KIND_REGEX, r"dga[0-9]+\.Wildcard-Test\.com")),
    (r"[a-z]{8,12}\.(top|xyz)", (KIND_REGEX, r"[a-z]{8,12}\.(top|xyz)")),
    (r"evil[0-9]+(\.com", (None, "does not compile")),
    (r"(?P<g1>evil)[0-9]+\.com", (None, "reserved group name")),
    # URLs: host/path keeps the path, loses the query; /path trails keep the query; // collapses
    ("Evil-Host.com/Panel/Gate.php?id=1", (KIND_URL, "evil-host.com/panel/gate.php")),
    ("evil-host.com//panel//gate.php", (KIND_URL, "evil-host.com/panel/gate.php")),
    ("www.evil-host.com/gate.php", (KIND_URL, "www.evil-host.com/gate.php")),
    ("193.238.153.10/", (KIND_URL, "193.238.153.10/")),
    # a trailing '/' goes from a URL with more than one '/' (Maltrail's candidates never end in
    # one), also when dropping the query leaves it; a whole-host "host/" keeps its '/'
    ("host.example/line/?fields=x", (KIND_URL, "host.example/line")),
    ("namchoncc.co.kr/include/", (KIND_URL, "namchoncc.co.kr/include")),
    ("host.example/a/b//", (KIND_URL, "host.example/a/b")),
    ("host.example/?x=1", (KIND_URL, "host.example/")),
    ("/include/", (KIND_PATH, "/include")),
    ("/panel/?gate", (KIND_PATH, "/panel/?gate")),
    ("evil-host.com:8080/x.php", (KIND_URL, "evil-host.com:8080/x.php")),
    ("/Bot.php?Action=cmd&hwid=", (KIND_PATH, "/bot.php?action=cmd&hwid=")),
    ("/cdn-vs//22per.php", (KIND_PATH, "/cdn-vs/22per.php")),
    ("/malicious-login.php", (KIND_PATH, "/malicious-login.php")),
    # user agents
    ("ua:Mozilla/4.0 (compatible; BadBot)", (KIND_UA, "mozilla/4.0 (compatible; badbot)")),
    ("UA: zgrab ", (KIND_UA, "zgrab")),
    ("ua:", (None, "empty user agent")),
])
def test_normalize_trail_shapes(trail, expected):
    kind, key = normalize_trail(trail, "feed.example")
    if expected[0] is None:
        assert kind is None and expected[1] in key, (trail, key)
    else:
        assert (kind, key) == expected


def test_normalize_idna_for_non_ascii_look_alikes():
    for trail in ("раураl.com", "аpple-id.com", "Bücher.example"):   # Cyrillic / Latin-1 letters
        kind, key = normalize_trail(trail, "feed")
        assert kind == KIND_DOMAIN
        assert key.isascii() and key.startswith("xn--")
        assert key.encode("ascii").decode("idna") == trail.lower()
    kind, key = normalize_trail("раураl.com/Login.php", "feed")
    assert kind == KIND_URL and key.startswith("xn--") and key.endswith("/login.php")
    assert normalize_trail("bad\u00a0name.com", "feed")[0] is None     # NBSP: not a valid name


def test_normalize_bare_words_only_from_curated_lists():
    for word in ("com", "evilname", ".onion"):
        assert normalize_trail(word, "feed.example")[0] is None
        assert "bare word" in normalize_trail(word, "feed.example")[1]
        assert normalize_trail(word, "(static)") == (KIND_DOMAIN, word.strip("."))
        assert normalize_trail(word, "(custom)") == (KIND_DOMAIN, word.strip("."))
    assert normalize_trail("evil-name", "feed.example") == (KIND_DOMAIN, "evil-name")   # not alpha only
    assert normalize_trail("x1", "feed.example") == (KIND_DOMAIN, "x1")


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab-_.=\\ \t\x00\x7f\u00e9\u3000\u200bZ9"), max_size=70)
       | st.builds(lambda a, b: a + "." + b, st.text("ab", min_size=60, max_size=66), st.text("c", max_size=200)))
def test_domain_rule_is_the_matchers_rule(name):
    """normalize's whole-string checks accept exactly what matchers/domains.py is_dns_name calls a
    name (less a backslash, which a zone file uses for escapes)."""
    assert (_not_a_dns_name(name) is None) == (is_dns_name(name) and "\\" not in name), repr(name)


def test_normalize_refuses_overlong_keys():
    kind, reason = normalize_trail("/" + "a" * 70000, "feed")
    assert kind is None and "longer than" in reason


def test_ranges_that_would_match_everything_are_rejected_with_the_reason(tmp_path):
    wide = ["0.0.0.0/0", "::/0", "224.0.0.0/3", "64.0.0.0/7", "2000::/3", "2400::/11"]
    kept = ["1.116.0.0/14", "107.170.192.0/18", "10.0.0.0/8", "2400::/12", "2001:db8::/32"]
    report, artifact = build_and_load(tmp_path, [(t, "bad range (malware)", "feed") for t in wide + kept])
    assert report.rejected == {
        "range wider than /8, would match (nearly) every address ([all] min_trail_prefix_v4)": 3,
        "range wider than /12, would match (nearly) every address ([all] min_trail_prefix_v6)": 3}
    text = "\n".join(report.lines())
    assert ("rejected 3: range wider than /8, would match (nearly) every address ([all] min_trail_prefix_v4) "
            "(e.g. feed.csv:1 '0.0.0.0/0', feed.csv:3 '224.0.0.0/3', feed.csv:4 '64.0.0.0/7')") in text
    assert "feed.csv:2 '::/0'" in text and "feed.csv:6 '2400::/11'" in text
    assert set(records(artifact)) == {"1.116.0.0/14", "107.170.192.0/18", "10.0.0.0/8", "2400::/12", "2001:db8::/32"}
    ips = TrailMatchers.load(artifact).ips
    for address in ("8.8.8.8", "230.1.2.3", "65.1.2.3", "2a00::1"):   # inside the rejected ranges only
        a = ipaddress.ip_address(address)
        assert ips.lookup_ip(a.version, int(a)) is None, address
    a = ipaddress.ip_address("1.117.0.1")
    assert artifact.key(ips.lookup_ip(4, int(a))) == "1.116.0.0/14"


def test_the_minimum_prefix_is_configurable_and_never_admits_slash_zero(tmp_path):
    rows = [("10.0.0.0/8", "x", "feed"), ("1.116.0.0/14", "x", "feed"), ("5.8.37.0/24", "x", "feed"),
            ("2001:db8::/32", "x", "feed"), ("2001:db8:bad::/48", "x", "feed")]
    report, artifact = build_and_load(tmp_path, rows, min_prefix=(16, 40))
    assert set(records(artifact)) == {"5.8.37.0/24", "2001:db8:bad::/48"}
    assert report.rejected == {
        "range wider than /16, would match (nearly) every address ([all] min_trail_prefix_v4)": 2,
        "range wider than /40, would match (nearly) every address ([all] min_trail_prefix_v6)": 1}
    for trail in ("0.0.0.0/0", "::/0"):
        kind, reason = normalize_trail(trail, "feed", min_prefix=(0, 0))
        assert kind is None and "wider than /1," in reason
    assert normalize_trail("128.0.0.0/1", "feed", min_prefix=(1, 1)) == (KIND_CIDR4, "128.0.0.0/1")


def test_regex_trail_round_trips_through_compile():
    kind, key = normalize_trail(r"dga[0-9]+\.wildcard-test\.com", "(static)")
    assert kind == KIND_REGEX
    assert re.compile(key, re.IGNORECASE).fullmatch("DGA1234.wildcard-test.com")


# ---- 2. sources -------------------------------------------------------------------------------

CSV_TEXT = (
    'evil.com,malware,(static)\n'
    '"dga[0-9]{3,8}\\.evil\\.com","dga, generic (malware)",(static)\n'
    'only,two\n'
    'a,b,c,d\n'
    '\n'
    '1.2.3.4,"known attacker",feed.example\n'
)


def test_trails_csv_quoting_and_short_rows(tmp_path):
    path = tmp_path / "trails.csv"
    path.write_text(CSV_TEXT)
    stats = Counter()
    rows = list(read_trails_csv(str(path), stats))
    assert [(r.trail, r.info, r.reference) for r in rows] == [
        ("evil.com", "malware", "(static)"),
        (r"dga[0-9]{3,8}\.evil\.com", "dga, generic (malware)", "(static)"),
        ("1.2.3.4", "known attacker", "feed.example"),
    ]
    assert rows[2].origin == "trails.csv:6"
    assert stats["rows read"] == 3
    assert stats["csv rows without 3 fields"] == 2      # the blank line is not counted
    assert normalize_trail(rows[1].trail, "(static)") == (KIND_REGEX, r"dga[0-9]{3,8}\.evil\.com")


@pytest.mark.parametrize("suffix, compress", [
    (".csv.zst", lambda data: zstandard.ZstdCompressor().compress(data)),
    (".csv.gz", gzip.compress),
    (".csv", lambda data: data),
])
def test_trails_csv_compressed(tmp_path, suffix, compress):
    path = tmp_path / ("trails" + suffix)
    path.write_bytes(compress(CSV_TEXT.encode()))
    stats = Counter()
    assert [r.trail for r in read_source(str(path), stats)] == [
        "evil.com", r"dga[0-9]{3,8}\.evil\.com", "1.2.3.4"]


def test_trails_csv_corrupt_compression_is_a_source_error(tmp_path):
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(b"\x1f\x8b" + b"\x00garbage" * 10)
    with pytest.raises(SourceError, match="bad.csv.gz"):
        list(read_source(str(bad), Counter()))
    data = "".join("evil%d.com,malware,(static)\n" % i for i in range(20000)).encode()
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gzip.compress(data)[:5000])
    with pytest.raises(SourceError, match="cut.csv.gz"):
        list(read_source(str(cut), Counter()))


def test_damaged_gzip_body_is_a_source_error(tmp_path):
    blob = bytearray(gzip.compress(b"evil.com,malware,(static)\n" * 1000))
    blob[20:40] = bytes(b ^ 0xFF for b in blob[20:40])
    bad = tmp_path / "damaged.csv.gz"
    bad.write_bytes(bytes(blob))
    with pytest.raises(SourceError, match="damaged.csv.gz"):
        list(read_source(str(bad), Counter()))


def test_truncated_zst_is_a_source_error(tmp_path):
    data = "".join("evil%d.com,malware,(static)\n" % i for i in range(20000)).encode()
    blob = zstandard.ZstdCompressor().compress(data)
    cut = tmp_path / "cut.csv.zst"
    cut.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(SourceError, match="cut.csv.zst"):
        list(read_source(str(cut), Counter()))


def make_static_tree(root):
    (root / "malware").mkdir(parents=True)
    (root / "suspicious").mkdir()
    (root / "malware" / "zeus_panda.txt").write_text(
        "# Reference: https://example.org/report\n"
        "zeus-panda-c2.com\n"
        "http://panda-drop.net\n"
        "https://panda-gate.org/path/to/gate.php  # the gate\n"
        "hxxp://panda-cdn.org/static/js/\n"
        "\n"
        "185.141.25.68 # c2 address\n"
        ".dotted-panda.com.\n"
        "panda-upload.com/files/\n"
        "panda-host.com/\n")
    (root / "suspicious" / "dynamic_domain.txt").write_text("duckdns-like.example\n")
    (root / "mass_scanner.txt").write_text("#only a comment\n  \n71.6.135.131\n")
    (root / "readme.md").write_text("not-a-trail.com\n")


def test_static_tree_in_maltrails_layout(tmp_path):
    make_static_tree(tmp_path / "trails")
    stats = Counter()
    rows = list(read_static_tree(str(tmp_path / "trails"), stats))
    got = [(r.trail, r.info, r.reference) for r in rows]
    assert got == [
        ("71.6.135.131", "mass scanner", "(static)"),
        ("zeus-panda-c2.com", "zeus panda (malware)", "(static)"),
        ("panda-drop.net/", "zeus panda (malware)", "(static)"),            # whole-host URL
        ("panda-gate.org/path/to/gate.php", "zeus panda (malware)", "(static)"),
        ("panda-cdn.org/static/js", "zeus panda (malware)", "(static)"),     # >1 '/': no trailing '/'
        ("185.141.25.68", "zeus panda (malware)", "(static)"),
        ("dotted-panda.com", "zeus panda (malware)", "(static)"),
        ("panda-upload.com/files", "zeus panda (malware)", "(static)"),
        ("panda-host.com/", "zeus panda (malware)", "(static)"),            # one '/': kept
        ("duckdns-like.example", "dynamic domain (suspicious)", "(static)"),
    ]
    assert rows[1].origin == "zeus_panda.txt:2"
    assert stats["rows read"] == len(rows)
    assert [r.trail for r in read_source(str(tmp_path / "trails"), Counter())] == [r.trail for r in rows]


def test_custom_dir_strips_trailing_slash(tmp_path):
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "my_blocklist.txt").write_text(
        "http://custom-evil.com/\nhttps://custom-evil.net/dir/\ncustomword\n# note\n10.9.8.7\n")
    (custom / "ignored.csv").write_text("x.com\n")
    rows = list(read_custom_dir(str(custom), Counter()))
    assert [(r.trail, r.info, r.reference) for r in rows] == [
        ("custom-evil.com", "my blocklist", "(custom)"),
        ("custom-evil.net/dir", "my blocklist", "(custom)"),
        ("customword", "my blocklist", "(custom)"),
        ("10.9.8.7", "my blocklist", "(custom)"),
    ]
    with pytest.raises(SourceError, match="does not exist"):
        list(read_custom_dir(str(tmp_path / "absent"), Counter()))


def test_whitelist_reader(tmp_path):
    path = tmp_path / "whitelist.txt"
    path.write_text("# trusted\nwww.Google.com\nexample.org.\n8.8.8.8  # resolver\n10.0.0.0/8\n"
                    "2001:db8::/32\n::1\n")
    wl = read_whitelist(str(path))
    assert wl.domains == {"google.com", "example.org"}
    assert wl.domain_listed("mail.google.com") and wl.domain_listed("google.com")
    assert not wl.domain_listed("notgoogle.com") and not wl.domain_listed("google.com.evil")
    assert wl.ip_listed(ipaddress.ip_address("8.8.8.8"))
    assert wl.ip_listed(ipaddress.ip_address("10.200.1.1"))
    assert wl.ip_listed(ipaddress.ip_address("2001:db8::5"))
    assert wl.ip_listed(ipaddress.ip_address("::1"))
    assert not wl.ip_listed(ipaddress.ip_address("11.0.0.1"))


def test_whitelist_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "whitelist.txt"
    path.write_text("good.com\n# comment\nnot a domain!\n")
    with pytest.raises(SourceError) as info:
        read_whitelist(str(path))
    assert "%s:3" % path in str(info.value)
    with pytest.raises(SourceError, match="absent.txt"):
        read_whitelist(str(tmp_path / "absent.txt"))


# ---- 3. build ---------------------------------------------------------------------------------

def test_merge_priority_maltrails_rule(tmp_path):
    rows = [
        ("feed-then-static.com", "generic (feed)", "feed-a.example"),
        ("feed-then-static.com", "zeus (malware)", "(static)"),          # curated beats a feed
        ("static-then-feed.com", "zeus (malware)", "(static)"),
        ("static-then-feed.com", "generic (feed)", "feed-a.example"),     # a feed never replaces it
        ("custom-then-feed.com", "my list", "(custom)"),
        ("custom-then-feed.com", "generic (feed)", "feed-b.example"),
        ("feed-then-feed.com", "old label", "feed-a.example"),
        ("feed-then-feed.com", "new label", "feed-b.example"),            # feeds: the later wins
        ("keep-first.com", "botnet (malware)", "feed-a.example"),
        ("keep-first.com", "reputation (suspicious)", "feed-b.example"),  # low priority keyword
        ("keep-first.com", "known attacker", "feed-c.example"),           # low priority keyword
        ("scanner.com", "botnet (malware)", "(static)"),
        ("scanner.com", "mass scanner", "feed-d.example"),                # high priority keyword
    ]
    report, artifact = build_and_load(tmp_path, rows)
    got = records(artifact)
    # the winner's label; its reference, then the others' (Maltrail's "first (+second,third)")
    assert got["feed-then-static.com"][1:] == ("zeus (malware)", "(static) (+feed-a.example)")
    assert got["static-then-feed.com"][1:] == ("zeus (malware)", "(static) (+feed-a.example)")
    assert got["custom-then-feed.com"][1:] == ("my list", "(custom) (+feed-b.example)")
    assert got["feed-then-feed.com"][1:] == ("new label", "feed-b.example (+feed-a.example)")
    assert got["keep-first.com"][1:] == ("botnet (malware)", "feed-a.example (+feed-b.example,feed-c.example)")
    assert got["scanner.com"][1:] == ("mass scanner", "feed-d.example (+(static))")
    assert report.duplicates == 7
    assert report.trails == artifact.trail_count == 6


def test_whitelist_drops_covered_trails(tmp_path):
    whitelist = tmp_path / "whitelist.txt"
    whitelist.write_text("white.org\n10.1.0.0/16\n192.0.2.7\n")
    rows = [
        ("white.org", "x", "feed"), ("sub.white.org", "x", "feed"), ("deep.sub.white.org", "x", "feed"),
        ("notwhite.org", "x", "feed"), ("white.org.evil.com", "x", "feed"),
        ("10.1.2.3", "x", "feed"), ("10.1.2.0/24", "x", "feed"), ("10.1.2.3:80", "x", "feed"),
        ("10.0.0.0/8", "x", "feed"), ("10.2.0.1", "x", "feed"), ("192.0.2.7", "x", "feed"),
        ("white.org/gate.php", "x", "feed"), ("sub.white.org:8080/x.php", "x", "feed"),
        ("10.1.9.9/panel/", "x", "feed"), ("/gate.php", "x", "feed"), ("evil.com/white.org", "x", "feed"),
    ]
    report, artifact = build_and_load(tmp_path, rows, whitelist_file=str(whitelist))
    assert set(records(artifact)) == {"notwhite.org", "white.org.evil.com", "10.0.0.0/8", "10.2.0.1",
                                      "/gate.php", "evil.com/white.org"}
    assert report.whitelisted == 10
    assert "removed by whitelist: 10" in "\n".join(report.lines())


def test_whitelist_drops_url_trails_on_whitelisted_ipv6(tmp_path):
    whitelist = tmp_path / "whitelist.txt"
    whitelist.write_text("2001:db8::1\n")
    rows = [("[2001:db8::1]/x.php", "x", "feed"), ("2001:db8::1/gate.php", "x", "feed"),
            ("evil.com", "x", "feed")]
    _, artifact = build_and_load(tmp_path, rows, whitelist_file=str(whitelist))
    assert set(records(artifact)) == {"evil.com"}


def test_report_lists_rejections_with_examples(tmp_path):
    rows = [("evil.com", "x", "feed"), ("1.2.3.256", "x", "feed"), ("182.86.133:8880", "x", "feed"),
            ("161.35.41.9:53:53", "x", "feed"), ("com", "x", "feed")]
    path = write_csv(tmp_path / "feed.csv", rows)
    with open(path, "a") as f:
        f.write("two,fields\n")
    report = build([path], str(tmp_path / "out.mtdb"))
    text = "\n".join(report.lines())
    assert report.rejected == {"IPv4 octet above 255": 1, "bare word from a feed": 1,
                               "malformed address (':' but not IPv6 or ip:port)": 2}
    assert "rejected 2: malformed address (':' but not IPv6 or ip:port) (e.g. feed.csv:3 " \
           "'182.86.133:8880', feed.csv:4 '161.35.41.9:53:53')" in text
    assert "rejected 1: IPv4 octet above 255 (e.g. feed.csv:2 '1.2.3.256')" in text
    assert "skipped 1 csv rows without 3 fields" in text
    assert "1 trails" in report.lines()[0] and "generation 1" in report.lines()[0]
    assert Artifact.open(str(tmp_path / "out.mtdb")).info["rejected"] == report.rejected


def test_generation_increments_on_each_rebuild(tmp_path):
    source = write_csv(tmp_path / "feed.csv", [("evil.com", "x", "feed")])
    output = str(tmp_path / "out.mtdb")
    generations = [build([source], output).generation for _ in range(3)]
    assert generations == [1, 2, 3]
    assert Artifact.open(output).generation == 3
    other = str(tmp_path / "other.mtdb")
    assert build([source], other).generation == 1


_READER = r"""
import json, os, sys
from matchers import Artifact, TrailMatchers
path, stop = sys.argv[1], sys.argv[2]
opens, seen, errors = 0, [], []
while not os.path.exists(stop) or opens < 50:
    try:
        artifact = Artifact.open(path)
        matchers = TrailMatchers.load(artifact)
        g = artifact.generation
        marker = matchers.domains.table.find("marker-%d.example" % g)
        if artifact.trail_count != g + 1 or marker is None:
            errors.append("generation %d: %d trails, marker %r" % (g, artifact.trail_count, marker))
        if not seen or seen[-1] != g:
            seen.append(g)
        opens += 1
        if opens == 1:
            open(stop + ".ready", "w").close()
        del matchers
        artifact.close()
    except Exception as exc:
        errors.append(repr(exc))
print(json.dumps({"opens": opens, "seen": seen, "errors": errors[:5]}))
"""


def _generation_rows(g):
    """Build number g: a marker naming g plus g filler trails, so a reader can tell the content
    belongs to the generation in the header (trail count g + 1)."""
    return [("marker-%d.example" % g, "x", "feed")] + [("filler-%d.example" % i, "x", "feed")
                                                        for i in range(g)]


def test_publish_is_atomic_for_a_concurrent_reader(tmp_path):
    source, output, stop = tmp_path / "feed.csv", str(tmp_path / "out.mtdb"), tmp_path / "stop"
    write_csv(source, _generation_rows(1))
    assert build([str(source)], output).generation == 1
    reader = subprocess.Popen([sys.executable, "-c", _READER, output, str(stop)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = tmp_path / "stop.ready"
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and reader.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)                                  # the reader is up and reading
        for g in range(2, 40):
            write_csv(source, _generation_rows(g))
            assert build([str(source)], output).generation == g
            time.sleep(0.005)
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, "reader exited %d: %s" % (reader.returncode, err)
    result = json.loads(out)
    assert result["errors"] == []
    assert result["seen"] == sorted(result["seen"])          # never an older generation again
    assert len(result["seen"]) >= 2, result                  # it did watch the file change
    assert sorted(os.listdir(tmp_path)) == ["feed.csv", "out.mtdb", "stop", "stop.ready"]   # no temp file


def _snapshot(path):
    st = os.stat(path)
    with open(path, "rb") as f:
        return f.read(), st.st_mtime_ns, st.st_ino


def test_failed_build_leaves_previous_artifact_and_no_temp_file(tmp_path):
    out_dir = tmp_path / "out"
    source = write_csv(tmp_path / "feed.csv", [("evil.com", "x", "feed")])
    output = str(out_dir / "trails.mtdb")
    build([source], output)
    before = _snapshot(output)
    with pytest.raises(SourceError, match="missing.csv"):
        build([source, str(tmp_path / "missing.csv")], output)
    bad_whitelist = tmp_path / "wl.txt"
    bad_whitelist.write_text("bad entry!\n")
    with pytest.raises(SourceError, match="wl.txt:1"):
        build([source], output, whitelist_file=str(bad_whitelist))
    corrupt = tmp_path / "corrupt.csv.zst"
    blob = bytearray(zstandard.ZstdCompressor().compress(b"evil.com,x,feed\n" * 100))
    blob[10:20] = bytes(b ^ 0xFF for b in blob[10:20])
    corrupt.write_bytes(bytes(blob))
    with pytest.raises(SourceError, match="corrupt.csv.zst"):
        build([str(corrupt)], output)
    assert _snapshot(output) == before
    assert os.listdir(out_dir) == ["trails.mtdb"]
    assert build([source], output).generation == 2        # and the next build carries on


def test_failure_at_publish_removes_the_temp_file(tmp_path):
    source = write_csv(tmp_path / "feed.csv", [("evil.com", "x", "feed")])
    target = tmp_path / "occupied"
    (target / "inside").mkdir(parents=True)            # rename onto a non-empty directory fails
    with pytest.raises(OSError):
        build([source], str(target))
    assert sorted(os.listdir(tmp_path)) == ["feed.csv", "occupied"]


@pytest.fixture
def good_artifact(tmp_path):
    source = write_csv(tmp_path / "feed.csv", [("evil.com", "x", "feed"), ("1.2.3.4", "y", "feed"),
                                                ("/gate.php", "z", "feed")])
    output = tmp_path / "good.mtdb"
    build([source], str(output))
    return output


def test_open_refuses_truncated_copies(good_artifact, tmp_path):
    data = good_artifact.read_bytes()
    count, = struct.unpack_from("<I", data, 32)
    table_end = _HEADER.size + _SECTION.size * count
    for cut in sorted({0, 10, 11, 12, 39, 40, _HEADER.size - 1, _HEADER.size, table_end - 1, table_end,
                       len(data) // 2, len(data) - 1}):
        copy = tmp_path / ("cut-%d.mtdb" % cut)
        copy.write_bytes(data[:cut])
        with pytest.raises(ArtifactError, match=re.escape(copy.name) + ".*(too short|truncated)"):
            Artifact.open(str(copy))
    longer = tmp_path / "longer.mtdb"
    longer.write_bytes(data + b"\0" * 8)
    with pytest.raises(ArtifactError, match=r"longer.mtdb: %d bytes where %d were written" % (len(data) + 8, len(data))):
        Artifact.open(str(longer))


def _reseal(data: bytearray) -> bytearray:
    """The header checksum recomputed, as a builder that wrote these bytes would have: CRC-32 of
    the header with its checksum field (the last 8 bytes' first 4) zeroed, then the table."""
    count, = struct.unpack_from("<I", data, 32)
    at = _HEADER.size - 8
    data[at:at + 4] = bytes(4)
    struct.pack_into("<I", data, at, zlib.crc32(bytes(data[:_HEADER.size + _SECTION.size * count])))
    return data


def test_open_refuses_wrong_magic_and_foreign_versions(good_artifact, tmp_path):
    data = bytearray(good_artifact.read_bytes())
    wrong = tmp_path / "wrong-magic.mtdb"
    wrong.write_bytes(b"NOTTRAIL" + data[8:])
    with pytest.raises(ArtifactError, match="wrong-magic.mtdb.*bad magic"):
        Artifact.open(str(wrong))
    future = tmp_path / "future.mtdb"
    future.write_bytes(data[:8] + struct.pack("<I", 99) + data[12:])
    with pytest.raises(ArtifactError, match="future.mtdb.*format 99"):
        Artifact.open(str(future))
    swapped = tmp_path / "big-endian.mtdb"
    swapped.write_bytes(_reseal(data[:36] + struct.pack(">I", 0x01020304) + data[40:]))
    with pytest.raises(ArtifactError, match="big-endian.mtdb.*byte order"):
        Artifact.open(str(swapped))
    with pytest.raises(ArtifactError, match="absent.mtdb"):
        Artifact.open(str(tmp_path / "absent.mtdb"))
    Artifact.open(str(good_artifact))         # the original is fine


# ---- 4. explain -------------------------------------------------------------------------------

EXPLAIN_ROWS = [
    ("203.0.113.0/24", "botnet range (malware)", "(static)"),
    ("203.0.113.9", "c2 (malware)", "(static)"),
    ("6.6.6.6:8443", "c2 port (malware)", "(static)"),
    ("evil-parent.com", "phishing (malware)", "(static)"),
    ("/malicious-login.php", "phishing kit (malware)", "(static)"),
    ("ua:BadBot/2.0", "bad bot (malware)", "(static)"),
    ("dead::beef", "v6 host (malware)", "(static)"),
]


@pytest.fixture
def explained(tmp_path):
    _, artifact = build_and_load(tmp_path, EXPLAIN_ROWS)
    return TrailMatchers.load(artifact)


def test_explain_verdicts_and_lines(explained):
    m = explained
    matched, lines = explain(m, "203.0.113.77")
    assert matched
    assert lines[0] == "203.0.113.77: IPv4 address"
    assert lines[1].startswith("  MATCH inside range: cidr4 trail '203.0.113.0/24'")
    assert "'botnet range (malware)' (static)" in lines[1]

    matched, lines = explain(m, "203.0.113.9")
    assert matched and lines[1].startswith("  MATCH exact address: ipv4 trail '203.0.113.9'")

    matched, lines = explain(m, "6.6.6.6:8443")
    assert matched
    assert lines == ["6.6.6.6: IPv4 address with port 8443",
                     "  MATCH address:port ipv4:port trail '6.6.6.6:8443' (id 4): 'c2 port (malware)' (static)",
                     "  no address or range trail"]
    matched, lines = explain(m, "6.6.6.6:8444")
    assert not matched and "  no address:port trail" in lines

    matched, lines = explain(m, "WWW.Evil-Parent.com.")
    assert matched
    assert lines[0] == "www.evil-parent.com: domain name"
    assert lines[1].startswith("  candidate (parent evil-parent.com of www.evil-parent.com): domain trail")
    assert lines[-1].startswith("  MATCH as '(www).evil-parent.com': domain trail 'evil-parent.com'")

    matched, lines = explain(m, "http://somehost.test/malicious-login.php?u=1")
    assert matched
    assert lines[0] == "somehost.test/malicious-login.php?u=1: URL (host somehost.test, path /malicious-login.php?u=1)"
    assert any(line.startswith("  candidate '/malicious-login.php': MATCH path trail") for line in lines)
    assert lines[-1].startswith("  MATCH URL via '/malicious-login.php': path trail '/malicious-login.php'")

    matched, lines = explain(m, "ua:Mozilla/5.0 (X11) badbot/2.0")
    assert matched
    assert lines == ["user agent 'Mozilla/5.0 (X11) badbot/2.0': MATCH user-agent trail 'badbot/2.0' "
                     "(id 0): 'bad bot (malware)' (static)"]

    for clean in ("clean.example", "8.8.8.8", "somehost.test/index.html", "ua:curl/8.0", "[::2]:443"):
        matched, lines = explain(m, clean)
        assert not matched, (clean, lines)
        assert not any("MATCH" in line for line in lines), lines
    assert explain(m, "clean.example")[1] == [
        "clean.example: domain name",
        "  no domain trail matches (exact, parent, regex, .onion gateway, ip-adress.com)"]


def test_explain_unbracketed_ipv6_is_an_address(explained):
    matched, lines = explain(explained, "dead::beef:1")
    assert lines[0] == "dead::beef:1: IPv6 address"
    assert not matched


# ---- 5. the shared fixture trail set ---------------------------------------------------------

def _indicator_for(kind, key):
    """An indicator `explain` should find this trail with."""
    if kind == KIND_REGEX:
        name = key.replace("[0-9]+", "1234").replace("\\.", ".")
        assert re.fullmatch(key, name), key
        return name
    if kind == KIND_PATH:
        return "somehost.test" + key
    return key


def test_shared_fixture_builds_and_explain_finds_every_trail(tmp_path):
    source = need_shared(MALTRAIL_CORPUS / "trails.csv")
    output = str(tmp_path / "fixture.mtdb")
    report = build([str(source)], output)
    assert report.trails == 20 and not report.rejected and report.duplicates == 0
    artifact = Artifact.open(output)
    assert artifact.trail_count == 20
    m = TrailMatchers.load(artifact)
    with open(source, newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 20
    for trail, info, reference in rows:
        kind, key = normalize_trail(trail, reference)
        matched, lines = explain(m, _indicator_for(kind, key))
        assert matched, (trail, lines)
        assert any("MATCH" in line and repr(key) in line and repr(info) in line for line in lines), lines
