"""The merge of feeds, files and custom trails, and every trail's provenance.

What this file establishes, on constructed inputs through the real build (real artifacts, real
spill files, the real CLI where it says so):
1. Maltrail's rules with exact expected rows: an address only feeds list needs
   `ip_minimum_feeds` distinct references, what a file or the custom directory lists is always
   kept, bogon and CDN addresses from feeds go unless labelled sinkhole/parking, labels are
   cleaned up, duplicates get the label priority and the reference form `first (+second,third)`;
2. the external merge: a build spilling sorted runs of a few rows gives the same artifact as one
   holding everything, trail ids in the builder's order, and no file is left behind;
3. provenance: which sources list a trail and since when, carried across builds through the
   previous artifact (first and last seen, a source that stopped listing it), not carried from a
   format-2 or damaged predecessor; `trails check` and `trails stats` show it.
"""

from __future__ import annotations

import csv
import ipaddress
import os
import struct
import subprocess
import sys
import time
import zlib

import pytest

import trailsdb.merge
from matchers import Artifact, TrailMatchers
from matchers.artifact import (
    _HEADER, _SECTION, KIND_CIDR4, KIND_DOMAIN, KIND_IPPORT4, KIND_IPV4, KIND_IPV6, KIND_PATH,
    KIND_REGEX, KIND_UA, KIND_URL, S_PROV_IDS, write_artifact,
)
from trailsdb.check import explain
from trailsdb.compile import build, layout
from trailsdb.merge import DROP_BOGON, DROP_CDN, DROP_MIN_FEEDS
from trailsdb.provenance import Provenance, SourceSeen, source_lines
from trailsdb.ranges import BOGONS_V4, BOGONS_V6, CDN_RANGE_LISTS, RangeError, RangeSet, bogon_ranges, parse_ranges
from trailsdb.sources import EMPTY_WHITELIST, RawTrail
from tests.test_corpus import console_script

T1 = 1_700_000_000          # 2023-11-14 22:13:20 UTC
T2 = T1 + 86400
T3 = T2 + 86400
MIN_FEEDS = DROP_MIN_FEEDS % 3


def feed(name, reference, trails, info="attacker"):
    """A feed as the feeds package hands it to the build: its name and its rows."""
    return name, [RawTrail(t, info, reference, name) for t in trails]


def rows_feed(name, reference, rows):
    """A feed whose rows carry their own labels: [(trail, info)]."""
    return name, [RawTrail(t, i, reference, name) for t, i in rows]


def write_csv(path, rows) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return str(path)


def custom_dir(root, files) -> str:
    root.mkdir()
    for name, lines in files.items():
        (root / name).write_text("".join(line + "\n" for line in lines))
    return str(root)


def records(artifact) -> dict:
    out = {}
    for i in range(artifact.trail_count):
        r = artifact.record(i)
        out[r.key] = (r.kind, r.info, r.reference)
    return out


def by_key(artifact) -> dict:
    return {artifact.key(i): i for i in range(artifact.trail_count)}


# ---- 1. the rules -----------------------------------------------------------------------------

def test_feed_addresses_need_three_distinct_feeds_and_curated_sources_always_count(tmp_path):
    feeds = [
        rows_feed("alpha", "alpha.example", [("45.9.148.1", "attacker"), ("45.9.148.2", "attacker"),
                                             ("45.9.148.3", "attacker"), ("45.9.148.4", "attacker"),
                                             ("2a03:b0c0::1", "attacker"), ("45.9.148.5:4444", "attacker"),
                                             ("alpha-only.example", "attacker"), ("45.9.148.0/25", "attacker")]),
        rows_feed("beta", "beta.example", [("45.9.148.1", "botnet (malware)"), ("45.9.148.2", "botnet (malware)"),
                                           ("2a03:b0c0::1", "botnet (malware)")]),
        rows_feed("gamma", "gamma.example", [("45.9.148.1", "spammer"), ("2a03:b0c0::1", "spammer")]),
        # one publisher's second list: the same reference, so the same voice
        rows_feed("beta-extra", "beta.example", [("45.9.148.2", "c2 (malware)")]),
    ]
    static = write_csv(tmp_path / "static.csv", [("45.9.148.4", "known c2 (malware)", "(static)")])
    custom = custom_dir(tmp_path / "custom", {"my_list.txt": ["45.9.148.6"]})
    report = build([static], str(tmp_path / "out.mtdb"), custom_dir=custom, feeds=feeds)
    assert records(Artifact.open(str(tmp_path / "out.mtdb"))) == {
        # three feeds: kept; the later label wins unless it is low priority ("spammer")
        "45.9.148.1": (KIND_IPV4, "botnet (malware)", "beta.example (+alpha.example,gamma.example)"),
        "2a03:b0c0::1": (KIND_IPV6, "botnet (malware)", "beta.example (+alpha.example,gamma.example)"),
        # one feed and a static file: the static label and reference win, the feed is named
        "45.9.148.4": (KIND_IPV4, "known c2 (malware)", "(static) (+alpha.example)"),
        # the rule is about addresses: a feed's ip:port, range or domain stands on its own
        "45.9.148.5:4444": (KIND_IPPORT4, "attacker", "alpha.example"),
        "45.9.148.0/25": (KIND_CIDR4, "attacker", "alpha.example"),
        "alpha-only.example": (KIND_DOMAIN, "attacker", "alpha.example"),
        "45.9.148.6": (KIND_IPV4, "my list", "(custom)"),
    }
    # 45.9.148.2: four rows from three feeds but two references; 45.9.148.3: one feed
    assert report.dropped == {MIN_FEEDS: 2}
    assert report.duplicates == 7
    lines = report.lines()
    assert "dropped 2: address listed by fewer than 3 feeds ([all] ip_minimum_feeds)" in lines

    loose = build([static], str(tmp_path / "loose.mtdb"), custom_dir=custom, feeds=feeds, ip_minimum_feeds=2)
    got = records(Artifact.open(str(tmp_path / "loose.mtdb")))
    assert got["45.9.148.2"] == (KIND_IPV4, "c2 (malware)", "beta.example (+alpha.example)")
    assert "45.9.148.3" not in got and loose.dropped == {DROP_MIN_FEEDS % 2: 1}
    every = build([static], str(tmp_path / "every.mtdb"), custom_dir=custom, feeds=feeds, ip_minimum_feeds=1)
    assert {"45.9.148.2", "45.9.148.3"} <= set(records(Artifact.open(str(tmp_path / "every.mtdb"))))
    assert every.dropped == {}


def _three(name_rows):
    """The same rows from three feeds with distinct references (the agreement rule is met)."""
    return [rows_feed(name, name + ".example", name_rows) for name in ("one", "two", "three")]


def test_bogon_and_cdn_addresses_from_feeds_go_unless_sinkhole_or_parking(tmp_path):
    feeds = _three([
        ("10.1.2.3", "attacker"), ("100.64.0.9", "attacker"), ("224.1.2.3", "attacker"),
        ("104.16.1.1", "attacker"),
        ("104.16.1.2", "sinkhole microsoft"), ("192.168.7.7", "parking site (suspicious)"),
        ("fe80::1", "attacker"),
        ("192.168.1.1/bins/x.arm", "iot malware"), ("127.0.0.1:8080", "c2"), ("10.20.0.0/16", "botnet range"),
        ("[fc00::5]:443", "c2"), ("104.16.5.5/gate.php", "panel"),
        ("10.53.154.104.bc.googleusercontent.com", "phishing"),   # a name, not an address
        ("cdn-name.example", "phishing"), ("185.141.25.68", "c2"),
    ])
    static = write_csv(tmp_path / "static.csv", [("104.16.2.2", "cdn-hosted c2 (malware)", "(static)")])
    custom = custom_dir(tmp_path / "custom", {"internal.txt": ["10.9.8.7"]})
    report = build([static], str(tmp_path / "out.mtdb"), custom_dir=custom, feeds=feeds,
                   cdn_ranges=[("104.16.0.0/13", "cloudflare-v4")])
    ref = "three.example (+one.example,two.example)"
    assert records(Artifact.open(str(tmp_path / "out.mtdb"))) == {
        "104.16.1.2": (KIND_IPV4, "sinkhole microsoft", ref),
        "192.168.7.7": (KIND_IPV4, "parking site (suspicious)", ref),
        "10.53.154.104.bc.googleusercontent.com": (KIND_DOMAIN, "phishing", ref),
        "cdn-name.example": (KIND_DOMAIN, "phishing", ref),
        "185.141.25.68": (KIND_IPV4, "c2", ref),
        "104.16.2.2": (KIND_IPV4, "cdn-hosted c2 (malware)", "(static)"),      # a file: always kept
        "10.9.8.7": (KIND_IPV4, "internal", "(custom)"),                      # custom: always kept
    }
    assert report.dropped == {
        DROP_BOGON % "private use (RFC 1918)": 3,          # 10.1.2.3, 192.168.1.1/bins/x.arm, 10.20.0.0/16
        DROP_BOGON % "shared address space (RFC 6598)": 1,
        DROP_BOGON % "multicast (RFC 5771)": 1,
        DROP_BOGON % "loopback (RFC 1122)": 1,             # 127.0.0.1:8080
        DROP_BOGON % "link-local unicast (RFC 4291)": 1,   # fe80::1
        DROP_BOGON % "unique local (RFC 4193)": 1,         # [fc00::5]:443
        DROP_CDN % "cloudflare-v4": 2,                     # 104.16.1.1, 104.16.5.5/gate.php
    }
    # without CDN ranges (none fetched yet) only the bogons go
    plain = build([static], str(tmp_path / "plain.mtdb"), custom_dir=custom, feeds=feeds)
    assert {"104.16.1.1", "104.16.5.5/gate.php"} <= set(records(Artifact.open(str(tmp_path / "plain.mtdb"))))
    assert not any("CDN" in reason for reason in plain.dropped)


def test_cdn_range_lists_in_each_published_format():
    cdn = {entry.name: entry for entry in CDN_RANGE_LISTS}
    assert [str(n) for n in parse_ranges(b"# Cloudflare\n173.245.48.0/20\n\n103.21.244.0/22\n", "lines")] == [
        "173.245.48.0/20", "103.21.244.0/22"]
    fastly = cdn["fastly"]
    body = b'{"addresses": ["23.235.32.0/20", "43.249.72.0/22"], "ipv6_addresses": ["2a04:4e40::/32"]}'
    assert [str(n) for n in parse_ranges(body, fastly.format, fastly.fields)] == [
        "23.235.32.0/20", "43.249.72.0/22", "2a04:4e40::/32"]
    cloudfront = cdn["cloudfront"]
    body = (b'{"prefixes": [{"ip_prefix": "13.32.0.0/15", "service": "CLOUDFRONT"},'
            b' {"ip_prefix": "3.5.140.0/22", "service": "AMAZON"}],'
            b' "ipv6_prefixes": [{"ipv6_prefix": "2600:9000::/28", "service": "CLOUDFRONT"}]}')
    assert [str(n) for n in parse_ranges(body, cloudfront.format, cloudfront.fields)] == [
        "13.32.0.0/15", "2600:9000::/28"]
    # a list that changed its format is refused, not half read
    with pytest.raises(RangeError, match=r"cloudflare-v4:2: '<html>' is not an address range"):
        parse_ranges(b"173.245.48.0/20\n<html>\n", "lines", name="cloudflare-v4")
    with pytest.raises(RangeError, match="fastly: not JSON"):
        parse_ranges(b"<html>error</html>", fastly.format, fastly.fields, name="fastly")
    with pytest.raises(RangeError, match="no list 'addresses'"):
        parse_ranges(b'{"error": "rate limited"}', fastly.format, fastly.fields, name="fastly")


def test_range_set_lookups_and_the_bogon_list():
    ranges = RangeSet([("10.0.0.0/8", "a"), ("10.1.0.0/16", "inner"), ("10.0.0.0/7", "wider"),
                       (ipaddress.ip_network("2001:db8::/32"), "doc")])
    assert ranges.label(4, int(ipaddress.ip_address("9.255.255.255"))) is None
    assert ranges.label(4, int(ipaddress.ip_address("10.0.0.0"))) == "wider"      # merged: the first range's label
    assert ranges.label(4, int(ipaddress.ip_address("11.255.255.255"))) == "wider"
    assert ranges.label(4, int(ipaddress.ip_address("12.0.0.0"))) is None
    assert ranges.label(6, int(ipaddress.ip_address("2001:db8::1"))) == "doc"
    assert ranges.label(6, int(ipaddress.ip_address("2001:db9::"))) is None
    for net, label in BOGONS_V4 + BOGONS_V6:
        network = ipaddress.ip_network(net)               # every entry is a network as written
        assert str(network) == net and "RFC" in label
    bogons = bogon_ranges()
    for address in ("0.1.2.3", "127.0.0.53", "169.254.1.1", "192.0.2.1", "198.19.255.255", "239.1.1.1",
                    "255.255.255.255", "::1", "fd00::1", "ff02::1", "2001:db8::5"):
        a = ipaddress.ip_address(address)
        assert bogons.label(a.version, int(a)) is not None, address
    for address in ("1.1.1.1", "8.8.8.8", "100.128.0.1", "172.32.0.1", "192.169.0.1", "2a00:1450::1"):
        a = ipaddress.ip_address(address)
        assert bogons.label(a.version, int(a)) is None, address


def test_labels_are_cleaned_up_as_maltrail_does(tmp_path):
    feeds = _three([("185.141.25.69", "malware"), ("ransom-pay.example", "ransomware"),
                    ("evil-host.example/malware", "malware")])
    build([], str(tmp_path / "out.mtdb"), feeds=feeds)
    ref = "three.example (+one.example,two.example)"
    assert records(Artifact.open(str(tmp_path / "out.mtdb"))) == {
        "185.141.25.69": (KIND_IPV4, "potential malware site", ref),     # a bare "malware" on an address
        "ransom-pay.example": (KIND_DOMAIN, "ransomware (malware)", ref),
        "evil-host.example/malware": (KIND_URL, "malware", ref),          # only addresses get the longer form
    }


def test_config_key_and_maltrail_import():
    from config import SCHEMA
    from config.maltrail_conf import MALTRAIL_ONLY
    spec = SCHEMA["all"]["ip_minimum_feeds"]
    assert spec.default == 3 and spec.maltrail == "IP_MINIMUM_FEEDS" and spec.min == 1
    assert "IP_MINIMUM_FEEDS" not in MALTRAIL_ONLY


# ---- 2. the external merge and the trail order ------------------------------------------------

def _mixed_rows(n):
    rows = []
    for i in range(n):
        rows.append(("evil-%03d.example" % (n - i), "phishing", "feed-%d.example" % (i % 3)))
        if i % 4 == 0:
            rows.append(("91.215.85.%d" % (i % 250), "c2 (malware)", "(static)"))
        if i % 5 == 0:
            rows.append(("evil-%03d.example" % (i + 1), "dup label %d" % i, "feed-x.example"))
        if i % 7 == 0:
            rows.append(("91.215.85.%d:%d" % (i % 250, 1000 + i), "c2 port", "(static)"))
            rows.append(("/gate-%d.php" % i, "panel", "(static)"))
    rows += [(r"dga[0-9]+\.zeta\.example", "dga (malware)", "(static)"),
             ("ua:ZBot/1.0", "bad bot", "(static)"),
             (r"dga[a-f]+\.alpha\.example", "dga (malware)", "(static)"),
             ("ua:AlphaBot", "bad bot", "(static)"),
             ("ua:ZBot/1.0", "bad bot again", "(static)")]
    return rows


def test_spilled_runs_give_the_same_artifact_and_leave_nothing(tmp_path, monkeypatch):
    source = write_csv(tmp_path / "rows.csv", _mixed_rows(400))
    out_dir = tmp_path / "out"
    whole = build([source], str(out_dir / "whole.mtdb"))
    assert whole.spilled_runs == 0
    monkeypatch.setattr(trailsdb.merge, "RUN_ROWS", 7)
    spilled = build([source], str(out_dir / "spilled.mtdb"))
    assert spilled.spilled_runs > 50
    a, b = Artifact.open(str(out_dir / "whole.mtdb")), Artifact.open(str(out_dir / "spilled.mtdb"))
    assert [a.record(i) for i in range(a.trail_count)] == [b.record(i) for i in range(b.trail_count)]
    assert (whole.trails, whole.duplicates, whole.rows) == (spilled.trails, spilled.duplicates, spilled.rows)
    assert sorted(os.listdir(out_dir)) == ["spilled.mtdb", "whole.mtdb"]     # spill files were unlinked


def test_trail_ids_follow_the_builders_order(tmp_path):
    source = write_csv(tmp_path / "rows.csv", _mixed_rows(60))
    build([source], str(tmp_path / "out.mtdb"))
    artifact = Artifact.open(str(tmp_path / "out.mtdb"))
    kinds = [artifact.kind(i) for i in range(artifact.trail_count)]
    keys = [artifact.key(i) for i in range(artifact.trail_count)]
    # regex and user-agent trails first, in the order they were listed (a tie in matching goes to
    # the lower id, the first listed), then every other trail by its key's bytes
    assert keys[:4] == [r"dga[0-9]+\.zeta\.example", "zbot/1.0", r"dga[a-f]+\.alpha\.example", "alphabot"]
    assert kinds[:4] == [KIND_REGEX, KIND_UA, KIND_REGEX, KIND_UA]
    rest = [k.encode() for k in keys[4:]]
    assert rest == sorted(rest) and len(set(rest)) == len(rest)
    assert {KIND_DOMAIN, KIND_IPV4, KIND_IPPORT4, KIND_PATH} == set(kinds[4:])
    m = TrailMatchers.load(artifact)
    assert artifact.key(m.user_agents.match("Mozilla ZBot/1.0 AlphaBot")) == "zbot/1.0"   # listed first


# ---- 3. provenance ----------------------------------------------------------------------------

def _seen(artifact, key):
    provenance = Provenance.load(artifact)
    return sorted(provenance.of(by_key(artifact)[key]))


def _update(tmp_path, output, now_s, feeds, static_rows):
    static = write_csv(tmp_path / "static.csv", static_rows)
    report = build([static], output, feeds=feeds, ip_minimum_feeds=1, now_s=now_s, force=True)
    return report, Artifact.open(output)


def test_provenance_is_carried_across_updates(tmp_path):
    output = str(tmp_path / "trails.mtdb")
    static = os.path.abspath(str(tmp_path / "static.csv"))
    report, _ = _update(tmp_path, output, T1,
                        [feed("f1", "r1.example", ["evil-one.example", "evil-two.example"])],
                        [("evil-two.example", "zeus (malware)", "(static)")])
    assert report.provenance == "no previous artifact" and report.carried == 0
    report, _ = _update(tmp_path, output, T2,
                        [feed("f1", "r1.example", ["evil-one.example"]),
                         feed("f2", "r2.example", ["evil-one.example", "evil-three.example"])],
                        [("evil-two.example", "zeus (malware)", "(static)")])
    assert report.carried == 2 and report.provenance.startswith("carried over for 2 of 3 trails")
    report, artifact = _update(tmp_path, output, T3,
                               [feed("f2", "r2.example", ["evil-one.example"])],
                               [("evil-two.example", "zeus (malware)", "(static)"),
                                ("evil-three.example", "zeus (malware)", "(static)")])
    assert report.generation == 3 and report.carried == 3
    assert _seen(artifact, "evil-one.example") == [SourceSeen("f1", "feed", T1, T2),      # stopped listing it
                                                   SourceSeen("f2", "feed", T2, T3)]
    assert _seen(artifact, "evil-two.example") == [SourceSeen(static, "file", T1, T3),
                                                   SourceSeen("f1", "feed", T1, T1)]
    assert _seen(artifact, "evil-three.example") == [SourceSeen(static, "file", T3, T3),
                                                     SourceSeen("f2", "feed", T2, T2)]
    # and what a trail's sources are is still the merge's business: f1 no longer counts
    assert records(artifact)["evil-one.example"][1:] == ("attacker", "r2.example")

    env = dict(os.environ, TZ="UTC")
    check = subprocess.run([console_script(), "trails", "check", "--trails", output, "www.evil-one.example"],
                           capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stderr
    lines = check.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  MATCH as"))
    assert lines[at + 1:at + 3] == [
        "    listed by feed f2 since 2023-11-15 22:13:20",
        "    no longer listed by feed f1 (listed from 2023-11-14 22:13:20 to 2023-11-15 22:13:20)"]
    stats = subprocess.run([console_script(), "trails", "stats", output], capture_output=True, text=True, env=env)
    assert stats.returncode == 0, stats.stderr
    assert "  feed   f2: 1 rows read, listed in 1 trails" in stats.stdout
    assert "  file   %s: 2 rows read, listed in 2 trails" % static in stats.stdout
    assert ("provenance: recorded for every trail; first seen between 2023-11-14 22:13:20 and "
            "2023-11-16 22:13:20") in stats.stdout


def test_carry_over_of_a_large_set_walks_the_previous_artifact_in_step(tmp_path, monkeypatch):
    """Thousands of trails (past the reader's window and record chunks), some going, some coming."""
    monkeypatch.setattr("trailsdb.provenance._WINDOW_BYTES", 4096)
    monkeypatch.setattr("trailsdb.provenance._READ_RECORDS", 100)
    output = str(tmp_path / "trails.mtdb")
    address = "45.%d.%d.1"
    first = ["host-%05d.example" % i for i in range(0, 6000)] + [address % (i // 250, i % 250) for i in range(900)]
    second = ["host-%05d.example" % i for i in range(3000, 9000)] + [address % (i // 250, i % 250)
                                                                     for i in range(450, 1200)]
    _update(tmp_path, output, T1, [feed("bulk", "bulk.example", first)], [("ua:Scanner", "x", "(static)")])
    custom = custom_dir(tmp_path / "c", {"mine.txt": ["45.0.0.1"]})
    report = build([], output, custom_dir=custom, feeds=[feed("bulk", "bulk.example", second)],
                   ip_minimum_feeds=1, now_s=T2, force=True)
    artifact = Artifact.open(output)
    assert report.trails == 6000 + 750 + 1
    assert report.carried == 3000 + 450 + 1       # hosts 3000-5999, addresses 450-899, and 45.0.0.1
    assert _seen(artifact, "host-03000.example") == [SourceSeen("bulk", "feed", T1, T2)]
    assert _seen(artifact, "host-05999.example") == [SourceSeen("bulk", "feed", T1, T2)]
    assert _seen(artifact, "host-08999.example") == [SourceSeen("bulk", "feed", T2, T2)]
    assert _seen(artifact, "45.1.200.1") == [SourceSeen("bulk", "feed", T1, T2)]
    assert _seen(artifact, "45.4.199.1") == [SourceSeen("bulk", "feed", T2, T2)]
    assert _seen(artifact, "45.0.0.1") == [SourceSeen(os.path.abspath(custom), "custom", T2, T2),
                                          SourceSeen("bulk", "feed", T1, T1)]


def test_a_clock_that_went_back_does_not_make_a_source_current(tmp_path):
    output = str(tmp_path / "trails.mtdb")
    _update(tmp_path, output, T2, [feed("f1", "r1.example", ["evil-one.example"])], [])
    _, artifact = _update(tmp_path, output, T1, [feed("f2", "r2.example", ["evil-one.example"])], [])
    assert _seen(artifact, "evil-one.example") == [SourceSeen("f1", "feed", T1 - 1, T1 - 1),
                                                   SourceSeen("f2", "feed", T1, T1)]
    lines = explain(TrailMatchers.load(artifact), "evil-one.example", with_provenance=True)[1]
    assert [line.split(" (")[0].split(" since")[0] for line in lines[-2:]] == [
        "    listed by feed f2", "    no longer listed by feed f1"]


def _format_2(path, rows, tmp_path):
    """A format-2 artifact (what the previous release wrote): no provenance sections."""
    source = write_csv(tmp_path / "v2.csv", rows)
    from trailsdb.compile import collect
    entries, meta = collect([source])
    write_artifact(str(path), 7, T1, layout(entries, meta, EMPTY_WHITELIST, {}))
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 8, 2)
    count, = struct.unpack_from("<I", data, 32)
    at = _HEADER.size - 8
    data[at:at + 4] = bytes(4)
    struct.pack_into("<I", data, at, zlib.crc32(bytes(data[:_HEADER.size + _SECTION.size * count])))
    path.write_bytes(bytes(data))


def test_a_format_2_artifact_loads_and_its_successor_starts_provenance(tmp_path):
    output = tmp_path / "trails.mtdb"
    _format_2(output, [("evil-one.example", "x", "(static)")], tmp_path)
    old = Artifact.open(str(output))                 # the sensor keeps running on it after an upgrade
    assert old.format_version == 2 and Provenance.load(old) is None
    matched, lines = explain(TrailMatchers.load(old), "evil-one.example", with_provenance=True)
    assert matched and lines[-1] == ("    provenance: not recorded (an artifact built before format 3; "
                                     "the next build records it)")
    report, artifact = _update(tmp_path, str(output), T2, [], [("evil-one.example", "x", "(static)")])
    assert report.generation == 8
    assert report.provenance == "previous artifact's provenance not used: no provenance in it (format 2)"
    assert artifact.format_version == 3
    assert _seen(artifact, "evil-one.example") == [SourceSeen(str(tmp_path / "static.csv"), "file", T2, T2)]


def test_a_damaged_predecessor_lends_no_provenance(tmp_path):
    output = str(tmp_path / "trails.mtdb")
    _update(tmp_path, output, T1, [feed("f1", "r1.example", ["evil-one.example"])], [])
    artifact = Artifact.open(output)
    offset = artifact._sections[S_PROV_IDS][0]
    artifact.close()
    with open(output, "r+b") as f:
        f.seek(offset + 3)
        byte = f.read(1)
        f.seek(offset + 3)
        f.write(bytes([byte[0] ^ 0xFF]))
    report, artifact = _update(tmp_path, output, T2, [feed("f1", "r1.example", ["evil-one.example"])], [])
    assert report.provenance.startswith("previous artifact's provenance not used: damaged: section "
                                        "'prov_ids' does not match its checksum")
    assert _seen(artifact, "evil-one.example") == [SourceSeen("f1", "feed", T2, T2)]


def test_stats_show_each_feeds_status_when_the_feeds_left_one(tmp_path):
    output = str(tmp_path / "trails.mtdb")
    _, artifact = _update(tmp_path, output, T1, [feed("f1", "r1.example", ["evil-one.example"])], [])
    feeds_dir = tmp_path / "feeds"
    feeds_dir.mkdir()
    assert source_lines(artifact, str(feeds_dir))[1].endswith("f1: 1 rows read, listed in 1 trails")
    (feeds_dir / "status.json").write_text(
        '{"format": 1, "feeds": {'
        '"f1": {"state": "kept", "reason": "HTTP 500 Internal Server Error", "last_success": %d, '
        '"last_failure": %d, "last_failure_reason": "HTTP 500 Internal Server Error", "rows": 1}, '
        '"f9": {"state": "missing", "reason": "no marker", "last_success": null, "last_failure": %d, '
        '"last_failure_reason": "the page lacks the feed\'s marker", "rows": 0}}}' % (T1 - 60, T1, T1))
    os.environ["TZ"] = "UTC"
    try:
        time.tzset()
        lines = source_lines(artifact, str(feeds_dir))
    finally:
        del os.environ["TZ"]
        time.tzset()
    assert lines[1] == ("  feed   f1: 1 rows read, listed in 1 trails; kept (HTTP 500 Internal Server Error); "
                        "last success 2023-11-14 22:12:20; last failure 2023-11-14 22:13:20 "
                        "(HTTP 500 Internal Server Error)")
    assert ("  feed   f9: not in this artifact; missing (no marker); last success never; last failure "
            "2023-11-14 22:13:20 (the page lacks the feed's marker)") in lines
    (feeds_dir / "status.json").write_text("not json")
    assert not any("f9" in line for line in source_lines(artifact, str(feeds_dir)))


def test_the_build_benchmark_runs_and_reports_memory(tmp_path):
    """`python -m bench.trails --build-only` over a small set: the three runs, their peak RSS
    against the target, the spilled runs and the carried provenance (figures are not asserted)."""
    from tests.conftest import REPO
    source = write_csv(tmp_path / "rows.csv", _mixed_rows(300))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)])))
    done = subprocess.run([sys.executable, "-m", "bench.trails", "--trails", source, "--build-only", "--runs", "1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "target: peak RSS <= 250 MB" in out
    for label in ("baseline: read + normalise only", "first build (nothing to replace)",
                  "rebuild over it (an update: provenance carried)"):
        assert label in out
    trails = build([source], str(tmp_path / "check.mtdb")).trails
    assert "rebuild: carried over for %d of %d trails" % (trails, trails) in out


def test_the_sensor_never_reads_provenance(tmp_path):
    """Provenance that does not decode (but whose checksum holds, as a broken builder would write
    it) fails `trails check`, and the sensor replays with the artifact all the same: its load
    never touches the provenance sections."""
    from engine.sources import synthetic as g
    output = tmp_path / "trails.mtdb"
    _update(tmp_path, str(output), T1, [], [("evil-dns.com", "c2 (malware)", "(static)")])
    data = bytearray(output.read_bytes())
    count, = struct.unpack_from("<I", data, 32)
    for i in range(count):
        at = _HEADER.size + i * _SECTION.size
        name, offset, length, _, _ = _SECTION.unpack_from(data, at)
        if name.rstrip(b"\0") == S_PROV_IDS.encode():
            data[offset:offset + length] = b"\x55" * length
            _SECTION.pack_into(data, at, name, offset, length, zlib.crc32(b"\x55" * length), 0)
    at = _HEADER.size - 8
    data[at:at + 4] = bytes(4)
    struct.pack_into("<I", data, at, zlib.crc32(bytes(data[:_HEADER.size + _SECTION.size * count])))
    output.write_bytes(bytes(data))

    check = subprocess.run([console_script(), "trails", "check", "--trails", str(output), "evil-dns.com"],
                           capture_output=True, text=True)
    assert check.returncode == 1 and "provenance unreadable" in check.stderr, check.stderr
    pcap = tmp_path / "dns.pcap"
    with g.PcapWriter(str(pcap)) as w:
        w.write(1_772_323_200_000_000_000, g.udp_frame("10.0.0.5", "8.8.8.8", 40000, 53,
                                                        g.dns_query("evil-dns.com")))
    replay = subprocess.run([console_script(), "replay", "--trails", str(output), "--log-dir", str(tmp_path / "log"),
                             "--workers", "1", str(pcap)], capture_output=True, text=True, timeout=120)
    assert replay.returncode == 0, replay.stderr
    assert "events: 1" in replay.stderr, replay.stderr
