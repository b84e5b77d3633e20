"""`maltrail-engine trails update`, run as the installed command against a local feed server
(tests/test_feeds_fetch.py's FeedServer, HTTP) through a real proxy (its tinyproxy fixture).

The feeds reach the local server only through real configuration: `[all] custom_trails_url`
names lists on it, `disabled_feeds = ["all"]` leaves out the catalog (whose URLs are on the
internet), and a catalog feed is exercised from a last good copy in feeds_dir, offline.

What this file establishes:
1. an update fetches through the proxy, publishes an artifact that `trails check` answers for a
   trail of a fetched list, and a second update with nothing changed (a 304) keeps the artifact
   and says so (exit 0 both times);
2. a list that comes back broken keeps its last good copy in the published set, with one line
   naming it and why;
3. `--offline` fetches nothing and builds from the last good copies plus the custom directory;
   no network at all (every list unreachable) does the same with one line saying so;
4. a build holding less than half the current artifact's trails is refused: exit 1, the old
   artifact stays (same generation, its trails still answer), the reason is said; --force
   replaces it;
5. [all] feed_updates = false and disabled_feeds = ["all"] leave the catalog feeds out, and
   [all] disabled_trails_info_regex drops trails by label;
6. `config import` carries USE_FEED_UPDATES and DISABLED_TRAILS_INFO_REGEX over.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from config import toml_value
from tests.test_corpus import console_script
from tests.test_feeds import BY_NAME, fixture
from tests.test_feeds_fetch import FeedServer, _free_port, pki, proxy  # noqa: F401 (fixtures)

# The proxy variables of the environment the tests run in must not steer the command.
_ENV = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "no_proxy",
                                                                  "all_proxy")}


def mte(*args, timeout=180):
    return subprocess.run([console_script(), *args], capture_output=True, text=True, timeout=timeout, env=_ENV)


@pytest.fixture
def server():
    running = FeedServer()
    yield running
    running.close()


def write_config(path: Path, **keys) -> str:
    base = path.parent
    values = dict(trails_artifact=str(base / "out" / "trails.mtdb"), feeds_dir=str(base / "feeds"),
                  disabled_feeds=["all"], trail_sources=[], custom_trails_dir="", custom_trails_url=[])
    values.update(keys)
    path.write_text("[all]\n" + "".join("%s = %s\n" % (k, toml_value(v)) for k, v in values.items()))
    return str(path)


def check(conf: str, indicator: str) -> subprocess.CompletedProcess:
    return mte("trails", "check", "-c", conf, indicator)


def generation(conf_artifact: Path) -> int:
    from matchers import Artifact
    artifact = Artifact.open(str(conf_artifact), verify=False)
    try:
        return artifact.generation
    finally:
        artifact.close()


def listing(*trails: str) -> bytes:
    return ("# my list\n" + "".join("%s\n" % t for t in trails)).encode()


# ----------------------------------------------------------------------------------------------
# 1. Fetch through the proxy, publish, check; unchanged
# ----------------------------------------------------------------------------------------------

def test_an_update_publishes_what_it_fetched_through_the_proxy(tmp_path, server, proxy):
    server.route("/mine.txt", body=listing("evil-update-one.com", "203.0.113.77", "bad-path.net/gate.php"),
                 etag='"v1"')
    conf = write_config(tmp_path / "m.toml", custom_trails_url=[server.url("/mine.txt")], proxy_url=proxy.url)
    done = mte("trails", "update", "-c", conf)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "published" in done.stdout and "generation 1: 3 trails" in done.stdout
    assert "feeds: 1 ok (1 new, 0 unchanged), 0 kept last good" in done.stdout
    assert proxy.requests(server.port) == ["GET %s" % server.url("/mine.txt")]
    found = check(conf, "evil-update-one.com")
    assert found.returncode == 0 and "(remote custom)" in found.stdout, found.stdout
    # A remote custom list is the user's own: its address is kept though no feed agrees with it.
    assert check(conf, "203.0.113.77").returncode == 0
    assert check(conf, "not-listed.com").returncode == 3

    again = mte("trails", "update", "-c", conf)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "sources unchanged: kept" in again.stdout and "generation 1" in again.stdout
    assert "0 new, 1 unchanged" in again.stdout
    assert server.routes["/mine.txt"].not_modified == 1
    assert generation(tmp_path / "out" / "trails.mtdb") == 1
    forced = mte("trails", "update", "-c", conf, "--force")
    assert forced.returncode == 0 and "generation 2" in forced.stdout, forced.stdout + forced.stderr


# ----------------------------------------------------------------------------------------------
# 2. A broken list keeps its last good copy in the published set
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["404", "html", "garbage", "shrunk"])
def test_a_broken_list_keeps_its_last_good_copy(tmp_path, server, proxy, fault):
    good = ["kept-%d.example-bad.com" % i for i in range(10)]
    server.route("/a.txt", body=listing("alpha-one.com"))
    server.route("/b.txt", body=listing(*good))
    conf = write_config(tmp_path / "m.toml", custom_trails_url=[server.url("/a.txt"), server.url("/b.txt")],
                        proxy_url=proxy.url)
    first = mte("trails", "update", "-c", conf)
    assert first.returncode == 0, first.stdout + first.stderr
    server.route("/a.txt", body=listing("alpha-one.com", "alpha-two.com"))
    if fault == "404":
        server.route("/b.txt", status=404)
    elif fault == "html":
        server.route("/b.txt", body=b"<html><head><title>Error</title></head><body>kept-1.example-bad.com"
                                    b"</body></html>\n")
    elif fault == "garbage":
        server.route("/b.txt", body=bytes(range(256)) * 64)
    else:
        server.route("/b.txt", body=listing(good[0]))
    done = mte("trails", "update", "-c", conf)
    assert done.returncode == 0, done.stdout + done.stderr
    failed = [line for line in done.stderr.splitlines() if line.startswith("[!]") and "custom_url_2" in line]
    assert len(failed) == 1 and "last good copy" in failed[0], done.stderr
    assert "1 kept last good" in done.stdout and "generation 2" in done.stdout
    for trail in good:
        assert check(conf, trail).returncode == 0, trail
    assert check(conf, "alpha-two.com").returncode == 0


# ----------------------------------------------------------------------------------------------
# 3. Offline, and no network at all
# ----------------------------------------------------------------------------------------------

def test_offline_builds_from_the_last_good_copies_and_fetches_nothing(tmp_path, server, proxy):
    server.route("/mine.txt", body=listing("remote-offline.com"))
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "mine.txt").write_text("custom-one.net\n")
    conf = write_config(tmp_path / "m.toml", custom_trails_url=[server.url("/mine.txt")], proxy_url=proxy.url,
                        custom_trails_dir=str(custom))
    assert mte("trails", "update", "-c", conf).returncode == 0
    requests = len(server.requests)
    (custom / "mine.txt").write_text("custom-one.net\ncustom-two.net\n")
    done = mte("trails", "update", "-c", conf, "--offline")
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(server.requests) == requests
    assert sum("offline" in line for line in done.stderr.splitlines()) == 1, done.stderr
    assert "1 offline" in done.stdout and "generation 2" in done.stdout
    for trail in ("remote-offline.com", "custom-one.net", "custom-two.net"):
        assert check(conf, trail).returncode == 0, trail


def test_no_network_at_all_is_said_once_and_builds_like_offline(tmp_path, server):
    server.route("/mine.txt", body=listing("remote-cached.com"))
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "mine.txt").write_text("custom-one.net\n")
    conf = write_config(tmp_path / "m.toml", custom_trails_url=[server.url("/mine.txt")],
                        custom_trails_dir=str(custom))
    assert mte("trails", "update", "-c", conf).returncode == 0
    # The network is gone: the proxy the configuration now names does not answer.
    (custom / "mine.txt").write_text("custom-one.net\ncustom-two.net\n")
    conf = write_config(tmp_path / "m.toml", custom_trails_url=[server.url("/mine.txt")],
                        custom_trails_dir=str(custom), proxy_url="http://127.0.0.1:%d" % _free_port())
    done = mte("trails", "update", "-c", conf)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sum("no feed could be reached" in line for line in done.stderr.splitlines()) == 1, done.stderr
    assert "1 kept last good" in done.stdout and "generation 2" in done.stdout
    for trail in ("remote-cached.com", "custom-two.net"):
        assert check(conf, trail).returncode == 0, trail


# ----------------------------------------------------------------------------------------------
# 4. A refused shrink keeps the old artifact
# ----------------------------------------------------------------------------------------------

def test_a_refused_shrink_keeps_the_old_artifact_and_exits_1(tmp_path):
    source = tmp_path / "trails.csv"
    source.write_text("".join("shrink-%d.com,malware,(static)\n" % i for i in range(40)))
    conf = write_config(tmp_path / "m.toml", trail_sources=[str(source)])
    artifact = tmp_path / "out" / "trails.mtdb"
    assert mte("trails", "update", "-c", conf).returncode == 0
    before = artifact.read_bytes()
    source.write_text("".join("shrink-%d.com,malware,(static)\n" % i for i in range(5)))
    done = mte("trails", "update", "-c", conf)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "less than half" in done.stderr and "update FAILED" in done.stdout
    assert "kept the current artifact" in done.stdout
    assert artifact.read_bytes() == before
    assert check(conf, "shrink-30.com").returncode == 0
    forced = mte("trails", "update", "-c", conf, "--force")
    assert forced.returncode == 0 and "generation 2: 5 trails" in forced.stdout, forced.stdout + forced.stderr
    assert check(conf, "shrink-30.com").returncode == 3


def test_a_failed_update_on_a_first_run_says_why(tmp_path):
    conf = write_config(tmp_path / "m.toml")
    done = mte("trails", "update", "-c", conf, "--offline")
    assert done.returncode == 1 and "no trail source at all" in done.stdout, done.stdout + done.stderr
    assert not (tmp_path / "out" / "trails.mtdb").exists()


# ----------------------------------------------------------------------------------------------
# 5. Catalog feeds on and off; labels dropped by regex
# ----------------------------------------------------------------------------------------------

def _catalog_copy(feeds_dir: Path) -> set:
    """A last good copy of a catalog domain feed, as an earlier update would have left it."""
    body, expected = fixture(BY_NAME["minerchk"], seed=3)
    feeds_dir.mkdir(mode=0o750, exist_ok=True)
    (feeds_dir / "minerchk.body").write_bytes(body)
    return {trail for trail, _info in expected}


@pytest.mark.parametrize("setting", ["enabled", "feed_updates_off", "disabled_all", "disabled_star"])
def test_catalog_feeds_are_used_unless_turned_off(tmp_path, setting):
    domains = _catalog_copy(tmp_path / "feeds")
    source = tmp_path / "trails.csv"
    source.write_text("static-one.com,malware,(static)\n")
    keys = dict(trail_sources=[str(source)], disabled_feeds=[])
    if setting == "feed_updates_off":
        keys["feed_updates"] = False
    elif setting == "disabled_all":
        keys["disabled_feeds"] = ["all"]
    elif setting == "disabled_star":
        keys["disabled_feeds"] = ["*"]
    conf = write_config(tmp_path / "m.toml", **keys)
    done = mte("trails", "update", "-c", conf, "--offline")
    assert done.returncode == 0, done.stdout + done.stderr
    some = sorted(domains)[0]
    expected = 0 if setting == "enabled" else 3
    assert check(conf, some).returncode == expected, (setting, some)
    assert check(conf, "static-one.com").returncode == 0


def test_disabled_trails_info_regex_drops_trails_by_label(tmp_path):
    source = tmp_path / "trails.csv"
    source.write_text("exit-relay.com,tor exit node (suspicious),(static)\nc2-host.com,malware,(static)\n")
    conf = write_config(tmp_path / "m.toml", trail_sources=[str(source)], disabled_trails_info_regex="tor exit")
    done = mte("trails", "update", "-c", conf)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dropped 1: label matches [all] disabled_trails_info_regex" in done.stdout
    assert check(conf, "exit-relay.com").returncode == 3
    assert check(conf, "c2-host.com").returncode == 0


# ----------------------------------------------------------------------------------------------
# 6. config import
# ----------------------------------------------------------------------------------------------

def test_config_import_carries_the_update_options(tmp_path):
    conf = tmp_path / "maltrail.conf"
    conf.write_text("USE_FEED_UPDATES false\nDISABLED_TRAILS_INFO_REGEX bad reputation|tor exit\n"
                    "DISABLED_FEEDS turris, ciarmy\n")
    out = tmp_path / "maltrail.toml"
    done = mte("config", "import", str(conf), "-o", str(out))
    assert done.returncode == 0, done.stderr
    from config import load_config
    cfg = load_config(str(out))
    assert cfg.all.feed_updates is False
    assert cfg.all.disabled_trails_info_regex == "bad reputation|tor exit"
    assert cfg.all.disabled_feeds == ("turris", "ciarmy")
    absent = tmp_path / "bare.conf"
    absent.write_text("LOG_DIR /var/log/x\n")
    out2 = tmp_path / "bare.toml"
    assert mte("config", "import", str(absent), "-o", str(out2)).returncode == 0
    # Maltrail leaves an unset switch off: without USE_FEED_UPDATES it fetches no feed.
    assert load_config(str(out2)).all.feed_updates is False


# ----------------------------------------------------------------------------------------------
# 7. CDN range lists: fetched with a last good copy, applied to feed addresses
# ----------------------------------------------------------------------------------------------

def test_cdn_range_lists_are_fetched_and_keep_their_last_good_copy(tmp_path, server):
    import ipaddress

    from tests.test_feeds_fetch import Log
    from trailsdb.feeds import FetchSettings
    from trailsdb.ranges import RangeList
    from trailsdb.update import refresh_cdn_ranges

    lists = (RangeList("cdn-a", server.url("/a.txt"), "lines"),
             RangeList("cdn-b", server.url("/b.json"), "json", ("addresses",)))
    server.route("/a.txt", body=b"# edge\n93.184.216.0/24\n")
    server.route("/b.json", body=b'{"addresses": ["151.101.0.0/16"]}')
    settings = FetchSettings(retries=0, environ={})
    feeds_dir = str(tmp_path / "feeds")

    def label(ranges, address):
        return ranges.label(4, int(ipaddress.ip_address(address)))

    ranges, states = refresh_cdn_ranges(feeds_dir, settings, False, Log(), lists)
    assert states == [("cdn-a", "fresh", None), ("cdn-b", "fresh", None)]
    assert (label(ranges, "93.184.216.34"), label(ranges, "151.101.1.1"), label(ranges, "8.8.8.8")) == \
        ("cdn-a", "cdn-b", None)
    # A list that changed its format, and one that is gone: both keep their last good copy.
    server.route("/a.txt", body=b"<html><body>moved</body></html>\n")
    server.route("/b.json", status=404)
    log = Log()
    ranges, states = refresh_cdn_ranges(feeds_dir, settings, False, log, lists)
    assert [(name, state) for name, state, _ in states] == [("cdn-a", "kept"), ("cdn-b", "kept")]
    assert "not an address range" in states[0][2] and "404" in states[1][2]
    assert len(log.lines("!")) == 2
    assert (label(ranges, "93.184.216.34"), label(ranges, "151.101.1.1")) == ("cdn-a", "cdn-b")
    served = len(server.requests)
    ranges, states = refresh_cdn_ranges(feeds_dir, settings, True, Log(), lists)
    assert len(server.requests) == served and [s for _, s, _ in states] == ["offline", "offline"]
    assert label(ranges, "93.184.216.34") == "cdn-a"


def test_a_feed_address_in_a_cdn_range_is_dropped_from_the_update(tmp_path):
    feeds_dir = tmp_path / "feeds"
    feeds_dir.mkdir(mode=0o750)
    # Last good copies an earlier update left: an address feed, and Cloudflare's published ranges.
    (feeds_dir / "greensnow.body").write_text("104.16.1.1\n185.220.101.7\n")
    (feeds_dir / "cdn_cloudflare_v4.body").write_text("104.16.0.0/13\n")
    conf = write_config(tmp_path / "m.toml", disabled_feeds=[], ip_minimum_feeds=1)
    done = mte("trails", "update", "-c", conf, "--offline")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dropped 1: feed address in a CDN range (cloudflare-v4)" in done.stdout, done.stdout
    assert check(conf, "185.220.101.7").returncode == 0
    assert check(conf, "104.16.1.1").returncode == 3


# ----------------------------------------------------------------------------------------------
# 8. The benchmark runs (its figures are measured, never asserted)
# ----------------------------------------------------------------------------------------------

def test_bench_update_smoke(tmp_path):
    import json
    import sys
    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / "update.json"
    done = subprocess.run([sys.executable, "-m", "bench", "update", "--trails", str(repo / "tests" / "corpus" / "trails.csv"),
                           "--feeds", "3", "--json", str(out)], cwd=repo, env=dict(_ENV, PYTHONPATH=str(repo)), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    results = json.loads(out.read_text())
    for key in ("build", "update", "update_unchanged", "update_again"):
        assert len(results[key]) == 1 and results[key][0]["peak_rss"] > 0, key
    assert "sources unchanged" in results["update_unchanged"][0]["last"]
    assert "published" in results["update_again"][0]["last"] and "generation 2" in results["update_again"][0]["last"]
    assert results["update"][0]["trails"] == results["update_again"][0]["trails"] > 0
    assert "peak RSS MB" in done.stdout and "250 MB target" in done.stdout
