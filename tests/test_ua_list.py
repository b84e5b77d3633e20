"""Maltrail's suspicious user-agent list (misc/ua.txt of a Maltrail checkout) read as user-agent
trails: which lines are text and which regular expressions, what a checkout given as --source
reads, and the events a replay writes for requests carrying those user agents.

The checkout is made here with lines of our own in the shapes the real list uses (anchors,
optional versions, " (compatible" lines, a line that does not compile)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.sources import synthetic as g
from tests.test_outputs import mte, write_conf, write_pcap

UA_LIST = r"""# Suspicious user-agent regular expressions (test list)

# Reference: example
exampletool
\Afetchbot( [\d.]+)?\Z
Mozilla/4.0 (compatible; Oddware)
(brokenpattern
\bcrawlx\b
\A\w{1,2}\Z
"""


def make_checkout(root: Path) -> Path:
    (root / "trails" / "static" / "malware").mkdir(parents=True)
    (root / "trails" / "static" / "malware" / "evilware.txt").write_text("evilware-c2.example\n")
    (root / "trails" / "feeds").mkdir()
    (root / "trails" / "feeds" / "somefeed.py").write_text("# not a trail file\n")
    (root / "misc").mkdir()
    (root / "misc" / "ua.txt").write_text(UA_LIST)
    # Must never be read as trails: the checkout's whitelist and ranges sit in misc/ too.
    (root / "misc" / "whitelist.txt").write_text("whitelisted.example\n")
    (root / "misc" / "bogon_ranges.txt").write_text("10.0.0.0/8\n")
    return root


def build(source, out) -> str:
    done = mte("trails", "build", "--source", str(source), "--output", str(out))
    assert done.returncode == 0, done.stderr
    return str(out)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    return make_checkout(tmp_path_factory.mktemp("maltrail"))


@pytest.fixture(scope="module")
def artifact(checkout, tmp_path_factory):
    return build(checkout, tmp_path_factory.mktemp("art") / "trails.mtdb")


def test_list_lines_become_text_or_regex_trails():
    from trailsdb.sources import ua_list_trail
    assert ua_list_trail("exampletool") == "ua:exampletool"
    assert ua_list_trail(r"\Afetchbot( [\d.]+)?\Z") == r"ua-re:\Afetchbot( [\d.]+)?\Z"
    # Maltrail escapes a line holding " (compatible", and one that does not compile.
    assert ua_list_trail("Mozilla/4.0 (compatible; Oddware)") == "ua:Mozilla/4.0 (compatible; Oddware)"
    assert ua_list_trail("(brokenpattern") == "ua:(brokenpattern"
    assert ua_list_trail(r"it\.example") == r"ua-re:it\.example"


@pytest.mark.parametrize("where", ["", "trails", "trails/static"])
def test_a_checkout_reads_its_static_tree_and_its_user_agent_list(checkout, tmp_path, where):
    out = build(checkout / where if where else checkout, tmp_path / "t.mtdb")
    stats = mte("trails", "stats", out)
    assert stats.returncode == 0, stats.stderr
    kinds = dict(line.strip().rsplit(None, 1) for line in stats.stdout.splitlines() if line.startswith("  "))
    assert kinds.get("domain") == "1", stats.stdout          # evilware-c2.example, and not whitelisted.example
    assert kinds.get("user-agent") == "3", stats.stdout      # exampletool, the (compatible line, (brokenpattern
    assert kinds.get("user-agent regex") == "3", stats.stdout  # fetchbot, crawlx, one or two word characters
    assert "cidr4" not in kinds, stats.stdout                # misc/bogon_ranges.txt is no trail file
    check = mte("trails", "check", "--trails", out, "whitelisted.example")
    assert check.returncode == 3, check.stdout


def test_trails_check_answers_a_user_agent_from_the_list(artifact):
    hit = mte("trails", "check", "--trails", artifact, "ua:fetchbot 2.1")
    assert hit.returncode == 0, hit.stdout + hit.stderr
    assert "user agent (suspicious)" in hit.stdout and "(heuristic)" in hit.stdout
    # Anchored: the same word inside a longer header is no match.
    miss = mte("trails", "check", "--trails", artifact, "ua:Mozilla/5.0 fetchbot 2.1")
    assert miss.returncode == 3, miss.stdout
    assert mte("trails", "check", "--trails", artifact, "ua:a crawlx b").returncode == 0
    assert mte("trails", "check", "--trails", artifact, "ua:crawlxy").returncode == 3


def test_replayed_requests_are_reported_as_maltrail_writes_them(artifact, tmp_path):
    client, server = "192.0.2.10", "198.51.100.20"
    agents = ["fetchbot 2.1", "Mozilla/5.0 (X11) exampletool/3 (y)", "Mozilla/4.0 (compatible; Oddware)",
              "Mozilla/5.0 fetchbot 2.1", "x (brokenpattern y", "ordinary/1.0", "zz"]
    frames = []
    for i, ua in enumerate(agents):
        payload = g.http_request("GET", "/", host="site.example", user_agent=ua)
        frames.append(g.tcp_frame(client, server, 40000 + i, 80, flags=g.TCP_ACK | g.TCP_PSH, payload=payload))
    pcap = write_pcap(tmp_path / "ua.pcap", frames)
    log = tmp_path / "log"
    # Heuristics off: every UA event below comes from the list's trails.
    conf = write_conf(tmp_path / "m.toml", sensor={"use_heuristics": False})
    done = mte("replay", "-c", conf, "--trails", artifact, "--log-dir", str(log), "--sensor-name", "s1", pcap)
    assert done.returncode == 0, done.stderr
    out = mte("tail", "--log-dir", str(log), "--format", "json")
    records = [json.loads(line) for line in out.stdout.splitlines()]
    got = sorted((r["trail"], r["info"], r["reference"]) for r in records if r["type"] == "UA")
    assert got == sorted([
        ("fetchbot 2.1", "user agent (suspicious)", "(heuristic)"),
        # A regular expression requiring no literal: every request with a user agent reaches it.
        ("zz", "user agent (suspicious)", "(heuristic)"),
        ("exampletool (Mozilla/5.0 \\(X11\\) exampletool/3 \\(y\\))", "user agent (suspicious)", "(heuristic)"),
        ("Mozilla/4.0 \\(compatible; Oddware\\)", "user agent (suspicious)", "(heuristic)"),
        ("\\(brokenpattern (x \\(brokenpattern y)", "user agent (suspicious)", "(heuristic)"),
    ]), got
