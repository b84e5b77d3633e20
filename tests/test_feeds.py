"""The feed list and its parsers (trailsdb/feeds/catalog.py, parsers.py).

What this file establishes:
1. the catalog: every Maltrail feed declared once, with a parser for its format, the five Maltrail
   ships disabled, names usable as disabled_feeds and as file names, and the options each
   format needs;
2. every declared feed parses a body generated here in its format (`fixture`, also served by
   tests/test_feeds_fetch.py) to exactly the rows the generator says it holds, with the feed's
   reference and its name as the origin, and the marker present;
3. the rules of each format on constructed lines (comments, labels, age limits, panels, hex in
   Suricata contents, excluded names and reasons, garbage lines counted by reason);
4. parsers are streamed: a long body is read as rows are taken, an endless line is skipped, not
   held;
5. hypothesis: random and mutated bodies never make a parser raise, and every row it yields is a
   trail trailsdb/normalize.py accepts (or a sha1: fingerprint), with the feed's name as origin.

Fixtures are made by the generator below (seeded), never copied from the real feeds.
"""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import json
import random
import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trailsdb.feeds import FEEDS, NOT_CARRIED, PARSERS, Feed, custom_url_feeds, enabled_feeds, feed_names, parse
from trailsdb.normalize import normalize_trail

# The time the fixtures' dates are relative to (2024-03-01 00:00:00 UTC): never the wall clock.
NOW_S = 1709251200.0
DAY_S = 86400.0
BY_NAME = {feed.name: feed for feed in FEEDS}


# ----------------------------------------------------------------------------------------------
# The fixture generator: a body in a feed's format and the rows it holds
# ----------------------------------------------------------------------------------------------

def _ipv4(rng: random.Random, last: int | None = None) -> str:
    return "%d.%d.%d.%d" % (rng.randrange(11, 223), rng.randrange(256), rng.randrange(256),
                            rng.randrange(1, 255) if last is None else last)


def _name(rng: random.Random, tld: str = "com") -> str:
    return "%s-%d.%s" % (rng.choice(("evil", "bad", "c2", "phish", "miner")), rng.randrange(10 ** 6), tld)


def _date(seconds: float) -> str:
    import datetime
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d")


def fixture(feed: Feed, seed: int = 1, rows: int = 12) -> tuple[bytes, set]:
    """(a body in `feed`'s format, the set of (trail, info) rows it holds), from `seed`."""
    rng = random.Random("%s/%d" % (feed.name, seed))
    fmt, info = feed.format, feed.info
    head = ["# %s" % feed.marker] if feed.marker else []
    lines: list[str] = []
    expected: set = set()
    if fmt in ("ip_lines", "ipset"):
        lines += head + ["# generated list", ""]
        for i in range(rows):
            ip = _ipv4(rng, last=1 if i == 0 else None)
            if fmt == "ip_lines" and i % 3 == 1:
                lines.append("%s\t\t# %s\t\t%d\t\t%d" % (ip, _date(NOW_S), i, i * 7))
            elif fmt == "ip_lines" and i % 3 == 2:
                lines.append("%s # reported" % ip)
            else:
                lines.append(ip)
            expected.add((ip, info))
        net = ipaddress.ip_network("%s/24" % _ipv4(rng), strict=False)
        v6 = ipaddress.ip_address("2001:db8::%x" % rng.randrange(1, 65535))
        lines += [str(net), str(v6).upper()]
        expected |= {(str(net), info), (str(v6), info)}
        if fmt == "ip_lines":
            lines.append("this is not an address")
    elif fmt == "ip_comment":
        for i in range(rows):
            ip = _ipv4(rng)
            lines.append("%s # Malicious Host,CN,Beijing,%d,%d" % (ip, i, i))
            expected.add((ip, info))
        lines.append("%s # Scanning Host,US,,0,0" % _ipv4(rng))
    elif fmt == "pipe":
        lines += head + ["# ASN | ASname | ipaddr | lastseen | category"]
        for i in range(rows):
            ip = _ipv4(rng)
            lines.append("%d | AS-NAME-%d | %s | %s 10:00:00 | %s" % (rng.randrange(1, 65000), i, ip, _date(NOW_S),
                                                                    feed.name.split("_")[-1]))
            expected.add((ip, info))
        lines.append("174 | broken row")
    elif fmt == "csv" and feed.option("port_column") is not None:
        lines += head + ["ip,port,type,first_seen,last_seen"]
        for i in range(rows):
            ip, port = _ipv4(rng), rng.choice((80, 443, 8080, 50050))
            recent = i % 4 != 3
            seen = NOW_S - (10 if recent else 400) * DAY_S
            lines.append("%s,%d,beacon,%s,%s" % (ip, port, _date(seen - 30 * DAY_S), _date(seen)))
            if recent:
                expected.add(("%s:%d" % (ip, port), info))
    elif fmt == "csv" and feed.option("url_trail") == "panel":
        lines += [feed.option("header")]
        for i in range(rows):
            family = rng.choice(("AZORult", "Lokibot", "Pony", "Amadey"))
            host = _name(rng)
            kind = i % 3
            if kind == 0:
                url, trail = "http://%s/panel/admin.php?x=%d" % (host, i), host
            elif kind == 1:
                ip = _ipv4(rng)
                url, trail = "http://%s/%s/gate.php" % (ip, "five"), "%s/five" % ip
            else:
                ip = _ipv4(rng)
                url, trail = "http://%s/login.php" % ip, ip + "/"
            lines.append("%s,%s,%s,%s" % (family, url, _ipv4(rng), _date(NOW_S)))
            expected.add((trail, family.lower()))
    elif fmt == "csv" and feed.option("label_column") is not None:
        lines += [feed.option("header") + "Malware"]
        for _ in range(rows):
            name, family = _name(rng), rng.choice(("Emotet", "Dridex", "QakBot"))
            lines.append("%s,%s" % (name, family))
            expected.add((name, "%s (malware)" % family))
    elif fmt == "csv":
        lines += head + [feed.option("header") + "Tags"]
        for _ in range(rows):
            ip = _ipv4(rng)
            lines.append("%s,ssh;telnet" % ip)
            expected.add((ip, info))
    elif fmt == "urls" and feed.option("line_break"):
        items = []
        for i in range(rows):
            host = _name(rng) if i % 2 else _ipv4(rng)
            url = "%s/%s/cp.php?m=login" % (host, "panel%d" % i)
            items.append(url)
            expected.add((url, info))
            is_ip = host[0].isdigit()
            expected.add((host, feed.option("address_host_info") if is_ip else info))
        items.append("%s/x/cp.php?m=login (SSL)" % _name(rng))
        return (feed.option("line_break").join(items) + feed.option("line_break")).encode(), expected
    elif fmt == "urls":
        lines += head if feed.marker and "/" not in feed.marker else []
        for i in range(rows):
            host = _name(rng)
            if feed.option("strip_slash"):
                if i % 2:
                    lines.append("http://%s/" % host)
                    expected.add((host, info))
                else:
                    lines.append("https://%s/login/verify/" % host)
                    expected.add(("%s/login/verify" % host, info))
            else:
                path = "gate.php" if feed.marker == "/gate.php" else "files/x%d.exe" % i
                lines.append("http://%s/%s" % (host, path))
                expected.add(("%s/%s" % (host, path), info))
        if feed.option("require_scheme"):
            lines.append("not a url line")
    elif fmt == "domains":
        lines += head
        for i in range(rows):
            name = _name(rng, "com")
            lines.append(name.upper() if i == 0 else name)
            expected.add((name, info))
        lines += list(feed.option("exclude", ())) + ["not_a_domain"]
    elif fmt == "html" and feed.name == "maxmind":
        lines += ["<!DOCTYPE html>", "<html><head><title>%s</title></head><body>" % feed.marker, "<ul>"]
        for _ in range(rows):
            ip = _ipv4(rng)
            lines.append('<li><a href="/en/high-risk-ip-sample/%s">%s</a></li>' % (ip, ip))
            expected.add((ip, info))
        lines.append("</ul></body></html>")
    elif fmt == "html":
        lines += ["<html><head><title>%s</title></head><body><table>" % feed.marker]
        for i in range(rows):
            host = _name(rng)
            lines.append('<tr><td>%s</td><td>%s</td><td style="background-color: rgb(11, 11, 11);">'
                         '<a href="ccamdetail.php?hash=%032x">details</a></td></tr>' % (_date(NOW_S), host, i))
            expected.add((host, info))
        lines.append("</table></body></html>")
    elif fmt == "suricata" and feed.option("mode") == "addresses":
        lines += ["# Emerging Threats botcc rules (generated)"]
        for group in range(rows // 4):
            ips = [_ipv4(rng) for _ in range(4)]
            expected |= {(ip, info) for ip in ips}
            lines.append('alert ip $HOME_NET any -> [%s] any (msg:"ET CNC Feodo Tracker Reported %s group %d"; '
                         'reference:url,doc.example; threshold: type limit, track by_src, seconds 3600, count 1; '
                         'classtype:trojan-activity; flowbits:set,ET.Evil; sid:%d; rev:1;)'
                         % (",".join(ips), feed.marker, group + 1, 2404000 + group))
        lines.append("#alert ip $HOME_NET any -> [%s] any (msg:\"disabled\"; sid:1;)" % _ipv4(rng))
    elif fmt == "suricata" and feed.option("mode") == "domains":
        lines += ["# %s open ruleset (generated)" % feed.marker]
        for i in range(rows):
            name = _name(rng, "net")
            if i % 3 == 0:
                lines.append('alert dns $HOME_NET any -> any any (msg:"ET MALWARE Family%d CnC Domain in DNS Lookup '
                             '(%s)"; dns.query; content:"%s"; nocase; bsize:%d; sid:%d; rev:1;)'
                             % (i, name.replace(".", " ."), name, len(name), 2030000 + i))
            elif i % 3 == 1:
                lines.append('alert tls $HOME_NET any -> $EXTERNAL_NET any (msg:"ET MALWARE Observed Family%d C2 '
                             'Domain (%s in TLS SNI)"; flow:established,to_server; tls.sni; content:"%s"; '
                             'sid:%d; rev:1;)' % (i, name, name, 2030000 + i))
            else:
                label, tld = name.split(".")
                hexed = "|%02x|%s|%02x|%s|00|" % (len(label), label, len(tld), tld)
                lines.append('alert udp $HOME_NET any -> any 53 (msg:"ET MALWARE Family%d CnC DNS Query"; '
                             'content:"|01 00 00 01|"; dns.query; content:"%s"; sid:%d; rev:1;)'
                             % (i, hexed, 2030000 + i))
            expected.add((name, info))
        lines.append('alert dns $HOME_NET any -> any any (msg:"ET INFO Observed DNS Query to .cloud TLD"; '
                     'dns.query; content:"%s"; sid:2099999; rev:1;)' % _name(rng, "cloud"))
    elif fmt == "suricata":
        lines += ["# %s Suricata rules (generated)" % feed.marker]
        for i in range(rows):
            ip, port = _ipv4(rng), rng.choice((443, 447, 8443))
            family = rng.choice(("Dridex", "TrickBot", "Malware", "QakBot"))
            lines.append('alert tcp $HOME_NET any -> [%s] %d (msg:"SSLBL: Malicious SSL connection detected '
                         '(likely %s C&C)"; flow:established,to_server; classtype:trojan-activity; sid:%d; rev:1;)'
                         % (ip, port, family, 902200000 + i))
            expected.add(("%s:%d" % (ip, port), "%s (malware)" % ("generic" if family == "Malware" else family.lower())))
    elif fmt == "htaccess":
        lines += ["# %s (generated)" % feed.marker, "order allow,deny"]
        for _ in range(rows):
            ip = _ipv4(rng)
            lines.append("deny from %s" % ip)
            expected.add((ip, info))
        lines.append("allow from all")
    elif fmt == "json_tor":
        relays = []
        for i in range(rows):
            a, b = _ipv4(rng), _ipv4(rng)
            relay = {"nickname": "relay%d" % i, "or_addresses": ["%s:9001" % a]}
            expected.add((a, info))
            if i % 2:
                relay["exit_addresses"] = [b]
                expected.add((b, info))
            if i % 3 == 0:
                v6 = "2001:db8:%x::1" % i
                relay["or_addresses"].append("[%s]:9001" % v6)
                expected.add((str(ipaddress.ip_address(v6)), info))
            relays.append(relay)
        doc = {"version": "8.0", "relays_published": "2024-03-01 00:00:00", "relays": relays, "bridges": []}
        return json.dumps(doc).encode(), expected
    elif fmt == "sslbl_cert":
        lines += ["# abuse.ch %s (SSLBL) (generated)" % feed.marker, "# Listingdate,SHA1,Listingreason"]
        for i in range(rows):
            sha1 = "%040x" % rng.getrandbits(160)
            family = rng.choice(("AsyncRAT", "Dridex", "QuasarRAT"))
            tail = "malware distribution" if i % 4 == 0 else "C&C"
            lines.append("%s 10:00:00,%s,%s %s" % (_date(NOW_S), sha1.upper() if i % 2 else sha1, family, tail))
            expected.add(("sha1:" + sha1, "%s c2 certificate (suspicious)" % family.lower()))
        lines.append("2024-01-01 00:00:00,nothex,Broken C&C")
    elif fmt == "custom":
        lines += ["# my own list"]
        for i in range(rows):
            name = _name(rng)
            if i % 4 == 0:
                lines.append("http://%s/path/x.php/" % name)
                expected.add(("%s/path/x.php" % name, info))
            elif i % 4 == 1:
                ip = _ipv4(rng)
                lines.append("%s # our honeypot saw it" % ip)
                expected.add((ip, info))
            elif i % 4 == 2:
                net = str(ipaddress.ip_network("%s/24" % _ipv4(rng), strict=False))
                lines.append(net)
                expected.add((net, info))
            else:
                lines.append(".%s." % name)
                expected.add((name, info))
    else:
        raise AssertionError("no fixture for format %s" % fmt)
    return ("\n".join(lines) + "\n").encode(), expected


def rows_of(feed: Feed, body, now_s: float = NOW_S, stats: Counter | None = None) -> list:
    return list(parse(feed, body, stats if stats is not None else Counter(), now_s))


# ----------------------------------------------------------------------------------------------
# 1. The catalog
# ----------------------------------------------------------------------------------------------

def test_every_feed_is_declared_once_with_a_parser_and_a_safe_name():
    names = [feed.name for feed in FEEDS]
    assert len(names) == len(set(names))
    assert len(FEEDS) >= 40
    for feed in FEEDS:
        assert re.fullmatch(r"[a-z0-9_]+", feed.name), feed.name
        assert feed.format in PARSERS, feed.name
        assert feed.url.startswith(("http://", "https://")), feed.name
        assert feed.reference, feed.name
        assert feed.info or feed.format in ("csv", "suricata", "sslbl_cert"), feed.name
    assert not set(NOT_CARRIED) & set(names)
    # every format the issue names has a parser, and a declared feed uses it
    assert {f.format for f in FEEDS} == set(PARSERS) - {"custom"}


def test_maltrail_ships_five_feeds_disabled():
    assert {f.name for f in FEEDS if not f.enabled} == {"turris", "ciarmy", "policeman", "myip", "alienvault"}
    chosen, unknown = enabled_feeds(None)
    assert not {"turris", "ciarmy", "policeman", "myip", "alienvault"} & {f.name for f in chosen}
    assert unknown == [] and len(chosen) == len(FEEDS) - 5


def test_disabled_feeds_replaces_the_default_and_a_group_name_disables_its_lists():
    chosen, unknown = enabled_feeds(["dataplane", "urlhaus", "nosuchfeed"], custom_urls=["trails.example.org/x.txt"])
    names = {f.name for f in chosen}
    assert "turris" in names and "alienvault" in names          # the list replaces Maltrail's default
    assert "urlhaus" not in names and not any(n.startswith("dataplane") for n in names)
    assert unknown == ["nosuchfeed"]
    assert "dataplane" in feed_names()
    custom = chosen[-1]
    assert (custom.name, custom.url, custom.info, custom.reference) == (
        "custom_url", "http://trails.example.org/x.txt", "blacklisted", "(remote custom)")
    assert [f.name for f in custom_url_feeds(["http://a/1", "https://b/2"])] == ["custom_url", "custom_url_2"]


# ----------------------------------------------------------------------------------------------
# 2. Every declared feed parses its generated body
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("feed", FEEDS, ids=lambda f: f.name)
def test_every_feed_parses_its_format_to_exactly_its_rows(feed):
    body, expected = fixture(feed)
    if feed.marker:
        assert feed.marker.encode() in body
    stats = Counter()
    rows = rows_of(feed, body, stats=stats)
    assert {(r.trail, r.info) for r in rows} == expected
    assert all(r.reference == feed.reference and r.origin == feed.name for r in rows)
    assert stats["rows"] == len(rows)
    # the same from a stream as from bytes
    assert rows_of(feed, io.BytesIO(body)) == rows
    for row in rows:
        if row.trail.startswith("sha1:"):
            continue
        kind, key = normalize_trail(row.trail, row.reference)
        assert kind is not None, (row, key)


def test_custom_url_lists_follow_maltrails_custom_line_rules():
    feed = custom_url_feeds(["http://127.0.0.1/mine.txt"])[0]
    body, expected = fixture(feed)
    assert {(r.trail, r.info) for r in rows_of(feed, body)} == expected


# ----------------------------------------------------------------------------------------------
# 3. Format rules on constructed lines
# ----------------------------------------------------------------------------------------------

def test_address_lines_take_the_first_field_and_count_garbage():
    stats = Counter()
    rows = rows_of(BY_NAME["bruteforceblocker"], b"# IP\t# Last Reported\n1.2.3.4\t\t# 2024-01-01\t\t3\t\t99\n"
                   b"999.1.1.1\n\xff\xfe\n1.2.3.0/24\n  \n#x\n", stats=stats)
    assert [r.trail for r in rows] == ["1.2.3.4", "1.2.3.0/24"]
    assert stats["not an address"] == 2 and stats["rows"] == 2


def test_ipset_lines_must_be_exactly_one_address():
    stats = Counter()
    rows = rows_of(BY_NAME["botscout"], b"# botscout_1d\n1.2.3.4\n1.2.3.4 extra\n10.1.0.0/16\n", stats=stats)
    assert [r.trail for r in rows] == ["1.2.3.4", "10.1.0.0/16"] and stats["not an address"] == 1


def test_alienvault_leaves_out_scanning_hosts():
    stats = Counter()
    rows = rows_of(BY_NAME["alienvault"], b"1.1.1.9 # Malicious Host,,0\n2.2.2.9 # Scanning Host,,0\n"
                   b"3.3.3.9 # Spamming,,0\n", stats=stats)
    assert [r.trail for r in rows] == ["1.1.1.9", "3.3.3.9"] and stats["left out: reason scanning"] == 1


def test_cobaltstrike_keeps_servers_seen_in_the_last_120_days_by_the_given_time():
    body = b"ip,port,last_seen\n1.1.1.1,443,2024-02-20\n2.2.2.2,80,2023-10-01\n3.3.3.3,99999,2024-02-20\n" \
           b"4.4.4.4,80,yesterday\n"
    stats = Counter()
    rows = rows_of(BY_NAME["cobaltstrike"], body, stats=stats)
    assert [r.trail for r in rows] == ["1.1.1.1:443"]
    assert stats["older than 120 days"] == 1 and stats["not an address and port"] == 1 and stats["no valid date"] == 1
    # judged at another time, the other server is recent
    assert [r.trail for r in rows_of(BY_NAME["cobaltstrike"], body, now_s=NOW_S - 120 * DAY_S)] == [
        "1.1.1.1:443", "2.2.2.2:80"]


def test_a_csv_with_a_nul_byte_keeps_what_came_before():
    stats = Counter()
    rows = rows_of(BY_NAME["blackbook"], b"Domain,Malware\na.com,X\nb.\x00com,Y\nc.com,Z\n", stats=stats)
    assert [r.trail for r in rows][:1] == ["a.com"]
    assert stats["unreadable CSV"] + stats["not a trail"] >= 1


def test_urlhaus_takes_only_urls_and_drops_the_scheme():
    stats = Counter()
    rows = rows_of(BY_NAME["urlhaus"], b"# URLhaus\nhttps://Evil.example/a/b.exe?x=1\nftp-less line\n"
                   b"http://\nhttp://host with space/x\n", stats=stats)
    assert [r.trail for r in rows] == ["Evil.example/a/b.exe?x=1"]
    assert stats["not a URL"] == 3


def test_suricata_domains_only_from_matching_rules_with_hex_decoded():
    rule = ('alert dns any any -> any any (msg:"ET MALWARE X CnC Domain"; dns.query; content:"|04|evil|02|co|02|uk|00|"; '
            'sid:1;)\nalert dns any any -> any any (msg:"ET POLICY Y"; dns.query; content:"fine.com"; sid:2;)\n'
            '#alert dns any any -> any any (msg:"ET MALWARE Z CnC Domain"; dns.query; content:"old.com"; sid:3;)\n')
    assert [r.trail for r in rows_of(BY_NAME["emergingthreatsdns"], rule.encode())] == ["evil.co.uk"]


def test_sslbl_rules_become_ip_port_with_the_family():
    rows = rows_of(BY_NAME["sslbl"], b'alert tcp $HOME_NET any -> [1.2.3.4] 447 (msg:"SSLBL: Malicious SSL '
                   b'connection detected (likely Malware C&C)"; sid:1;)\nalert tcp any any -> [1.2.3.999] 1 '
                   b'(msg:"x (likely A C&C)";)\n')
    assert [(r.trail, r.info) for r in rows] == [("1.2.3.4:447", "generic (malware)")]


def test_certificate_rows_are_sha1_trails_with_the_family():
    stats = Counter()
    rows = rows_of(BY_NAME["sslblcert"], b"# SSL Certificate Blacklist\n2024-01-01 00:00:00,"
                   + b"AB" * 20 + b",AsyncRAT C&C\n2024-01-01,short,x\n2024-01-01 00:00:00," + b"cd" * 20 + b",\n",
                   stats=stats)
    assert [(r.trail, r.info) for r in rows] == [("sha1:" + "ab" * 20, "asyncrat c2 certificate (suspicious)"),
                                                 ("sha1:" + "cd" * 20, "unknown c2 certificate (suspicious)")]
    assert stats["not a SHA-1 fingerprint"] == 1


def test_tor_json_that_is_not_onionoo_is_counted_not_raised():
    for body, reason in ((b"{not json", "not JSON"), (b"[1,2]", "no relays list"), (b'{"relays": 5}', "no relays list"),
                         (b'{"relays": [5, {"or_addresses": ["x:1"]}]}', "relays that are not objects")):
        stats = Counter()
        assert rows_of(BY_NAME["torproject"], body, stats=stats) == []
        assert stats[reason] == 1, (body, stats)


def test_viriback_panels_and_html_scrapes():
    rows = rows_of(BY_NAME["viriback"], b"Family,URL,IP,FirstSeen\nFormBook,http://a.xsph.ru.xsph.ru/webpanel/x/y.php,"
                   b"1.1.1.1,2024\nRedLine,noscheme.com/x,1.1.1.1,2024\n")
    assert [(r.trail, r.info) for r in rows] == [("a.xsph.ru", "formbook")]
    page = b"<p>Sample List of Higher Risk IP Addresses</p>" + b"high-risk-ip-sample/1.2.3.4 " * 3 + b"high-risk-ip-sample/9.9.9.999"
    assert [r.trail for r in rows_of(BY_NAME["maxmind"], page)] == ["1.2.3.4"] * 3


# ----------------------------------------------------------------------------------------------
# 4. Streaming
# ----------------------------------------------------------------------------------------------

class _CountingStream(io.RawIOBase):
    """An endless-ish body that counts what was read from it."""

    def __init__(self, line: bytes, lines: int):
        self._line, self._left, self.read_bytes = line, lines, 0

    def readable(self):
        return True

    def readinto(self, buffer):
        if self._left <= 0:
            return 0
        n = min(len(buffer), len(self._line))
        buffer[:n] = self._line[:n]
        self._left -= 1
        self.read_bytes += n
        return n


def test_parsers_read_as_rows_are_taken():
    raw = _CountingStream(b"1.2.3.4\n", 5_000_000)        # 40 MB if read whole
    stream = io.BufferedReader(raw, 8192)
    rows = parse(BY_NAME["blocklist"], stream, Counter())
    first = [next(rows) for _ in range(10)]
    assert [r.trail for r in first] == ["1.2.3.4"] * 10
    assert raw.read_bytes < 64 * 1024


def test_a_line_without_an_end_is_skipped_not_held():
    body = b"# marker .1\n" + b"9" * (3 * 1024 * 1024) + b"\n1.2.3.4\n"
    stats = Counter()
    assert [r.trail for r in rows_of(BY_NAME["abuseipdb"], body, stats=stats)] == ["1.2.3.4"]
    assert stats["lines longer than 64 KiB"] == 1


# ----------------------------------------------------------------------------------------------
# 5. Fuzzing
# ----------------------------------------------------------------------------------------------

# One feed per distinct (format, options): the parsers' every code path.
_FUZZ_FEEDS = list({(f.format, repr(sorted(f.options.items()))): f for f in FEEDS}.values()) + custom_url_feeds(
    ["http://127.0.0.1/custom.txt"])
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _check_rows(feed: Feed, body: bytes) -> None:
    stats = Counter()
    rows = list(parse(feed, body, stats, NOW_S))
    assert stats["rows"] == len(rows)
    for row in rows:
        assert row.origin == feed.name and row.reference == feed.reference
        assert row.trail and row.info and "\n" not in row.trail
        if row.trail.startswith("sha1:"):
            assert re.fullmatch(r"sha1:[0-9a-f]{40}", row.trail)
            continue
        kind, key = normalize_trail(row.trail, row.reference)
        # A range too wide to list is a rule of the build (rejected there, with its reason), not a
        # parsing failure: the feed did list a range.
        assert kind is not None or key.startswith("range wider than"), (feed.name, row.trail, key)


@pytest.mark.parametrize("feed", _FUZZ_FEEDS, ids=lambda f: "%s-%s" % (f.format, f.name))
@FUZZ
@given(body=st.binary(max_size=2048))
def test_random_bodies_never_raise(feed, body):
    _check_rows(feed, body)


@pytest.mark.parametrize("feed", _FUZZ_FEEDS, ids=lambda f: "%s-%s" % (f.format, f.name))
@FUZZ
@given(data=st.data())
def test_mutated_fixtures_never_raise(feed, data):
    body = bytearray(fixture(feed, seed=data.draw(st.integers(1, 5)), rows=6)[0])
    for _ in range(data.draw(st.integers(1, 12))):
        op = data.draw(st.sampled_from(("flip", "insert", "delete", "cut")))
        at = data.draw(st.integers(0, max(0, len(body) - 1)))
        if op == "flip" and body:
            body[at] = data.draw(st.integers(0, 255))
        elif op == "insert":
            body[at:at] = data.draw(st.sampled_from((b"\0", b"\n", b",", b"|", b"#", b":", b"/", b"\"", b"[",
                                                      b"]", b"{", b"<", b">", b"\xff", b"deny from ", b"..")))
        elif op == "delete":
            del body[at:at + data.draw(st.integers(1, 16))]
        else:
            del body[at:]
    _check_rows(feed, bytes(body))


def test_fuzz_covers_every_format():
    assert {f.format for f in _FUZZ_FEEDS} == set(PARSERS)


def test_feed_entries_are_values():
    # a test copy pointing elsewhere (as the fetch tests make) keeps everything else
    copy = dataclasses.replace(BY_NAME["urlhaus"], url="http://127.0.0.1:1/x")
    assert copy.format == "urls" and copy.option("require_scheme") is True and BY_NAME["urlhaus"].url != copy.url


def _reference_address(token: str):
    import ipaddress as ip
    if not token or len(token) > 64 or not token.isascii():
        return None
    try:
        return str(ip.ip_network(token, strict=False)) if "/" in token else str(ip.ip_address(token))
    except ValueError:
        return None


@FUZZ
@given(token=st.one_of(st.text(alphabet="0123456789./:", max_size=20),
                       st.text(alphabet="0123456789abcdefABCDEFx./:%[] -", max_size=24),
                       st.from_regex(r"\A\d{1,4}\.\d{1,4}\.\d{1,4}\.\d{1,4}(/\d{1,3})?(:\d{1,5})?\Z"),
                       st.from_regex(r"\A[0-9a-f:]{2,30}(/\d{1,3})?(%[a-z0-9]{1,4})?\Z"),
                       st.ip_addresses().map(str),
                       st.builds(lambda a, n: "%s/%d" % (a, n), st.ip_addresses(), st.integers(0, 140)),
                       st.builds(lambda a, n: "%s/0%d" % (a, n), st.ip_addresses(v=4), st.integers(0, 40)),
                       st.sampled_from(("1.2.3.4/33", "1.2.3.4/32", "1.2.3.4/0", "255.255.255.255/31", "01.2.3.4",
                                        "1.2.3.4/255.255.0.0", "1.2.3.4:80", "::", "::1:2", "1:2", "fe80::1%eth0",
                                        "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.4/", "/24", "..."))))
def test_the_fast_address_check_agrees_with_ipaddress(token):
    from trailsdb.feeds.parsers import _address, _address_reference
    assert _address(token) == _reference_address(token) == _address_reference(token)


# The fast shape checks of trailsdb/feeds/parsers.py against the reference twins kept beside them
# (the plain rules: ipaddress, is_dns_name, a per-character check): the same answer for any text.
_SHAPE_TEXT = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.text(alphabet="abz09.-_:/\\[]% #\t\u212a\u00e9\u00a0\u0130\ufffd", max_size=40),
    st.from_regex(r"\A\.?([a-z0-9_-]{1,70}\.){1,4}[a-zA-Z]{2,6}\.?\Z"),
    st.from_regex(r"\A[a-z0-9.-]{1,30}(:\d{1,6})?/[!-~ ]{0,30}\Z"),
    st.from_regex(r"\A\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}:\d{1,6}\Z"),
    st.from_regex(r"\A[\d.]{1,20}\Z"),
    st.sampled_from(("1.2.3.256", "1.2.3.4", "a.b", "a..b", ".a.b.", "a:b.c", "a\\b.c", "A.COM", "\u212a.com", "x.-",
                     "a." + "b" * 63, "a." + "b" * 64, "[::1]/x", "[::1]:80/x", "1.2.3.4:99999/x", "h\u00e9.com/x",
                     "evil.com/a b", "evil.com/\x7f")),
    st.builds(lambda n: "a" * n + ".com", st.integers(60, 260)),
    st.builds(lambda n: "x.com/" + "p" * n, st.integers(1000, 1100)))


@FUZZ
@given(text=_SHAPE_TEXT)
def test_the_fast_shape_checks_agree_with_their_references(text):
    from trailsdb.feeds import parsers as p
    assert p._domain(text) == p._domain_reference(text)
    assert p._url(text) == p._url_reference(text)
    assert p._trail_shape(text) == p._trail_shape_reference(text)


def _custom_reference_rows(feed, body):
    from trailsdb.feeds.parsers import _parse_custom_reference
    stats = Counter()
    return list(_parse_custom_reference(feed, body, stats, NOW_S)), stats


_CUSTOM = custom_url_feeds(["http://127.0.0.1/custom.txt"])[0]


@FUZZ
@given(data=st.data())
def test_the_fast_custom_parser_agrees_with_its_reference(data):
    # parse_custom (one shape check per line, rows made inline) against _parse_custom_reference
    # (the rules one by one): the same rows in the same order and the same counts, on generated
    # lists, lists with comments, schemes, dots and slashes, and random and mutated bodies.
    lines = data.draw(st.lists(st.one_of(
        _SHAPE_TEXT, st.sampled_from(("# a comment", "  ", "1.2.3.4 # why", "http://evil.com/", ".evil.com.",
                                      "https://1.2.3.4/x/", "10.0.0.0/8", "[2001:db8::1]:443", "bad..name",
                                      "evil.com#x", "ftp://a.b/c#d", "...", "1.2.3.4/", "::1", "evil.com.:80"))),
        max_size=30))
    body = "\n".join(lines).encode("utf-8", "surrogatepass") if lines else b""
    if data.draw(st.booleans()):
        body = bytes(fixture(_CUSTOM, seed=data.draw(st.integers(1, 5)), rows=8)[0]) + b"\n" + body
    if data.draw(st.booleans()):
        body = data.draw(st.binary(max_size=256)) + body
    stats = Counter()
    rows = list(parse(_CUSTOM, body, stats, NOW_S))
    assert (rows, stats) == _custom_reference_rows(_CUSTOM, body)


@FUZZ
@given(parts=st.lists(st.one_of(
    st.binary(max_size=64),
    st.sampled_from((b"\n", b"\r\n", b"\r", b"\xff", b"\xe2\x82", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"#", b"\0")),
    st.builds(lambda n, c: c * n, st.sampled_from((65535, 65536, 65537, 65538, 32767, 32768, 32769, 98304, 140000)),
              st.sampled_from((b"a", b"9", b"\xff")))), max_size=12),
    buffered=st.booleans())
def test_the_block_reader_agrees_with_the_line_reader(parts, buffered):
    # _lines (blocks of READ_BYTES, decoded and split at once) against _lines_reference (readline):
    # the same lines and the same count of over-long lines, with lines just under, at and over
    # the 64 KiB limit and across block boundaries, line ends split from their \r, multi-byte
    # characters cut, and with or without a final line end.
    from trailsdb.feeds.parsers import MAX_LINE_BYTES, _lines, _lines_reference
    assert MAX_LINE_BYTES == 65536
    body = b"".join(parts)

    def source():
        return io.BufferedReader(io.BytesIO(body), 1000) if buffered else body
    fast, slow = Counter(), Counter()
    assert list(_lines(source(), fast)) == list(_lines_reference(source(), slow))
    assert fast == slow
