"""The feed keys of maltrail.toml ([all] custom_trails_url, disabled_feeds, feeds_dir,
feeds_ca_file) and how `config import` carries Maltrail's CUSTOM_TRAILS_URL and DISABLED_FEEDS
over (the installed command, run as a real process).

What this file establishes:
1. the defaults: Maltrail's shipped DISABLED_FEEDS, no custom URLs, the state directory under
   /var/lib/maltrail-engine, the system's CA store; and that the default disabled set is exactly
   the catalog's feeds shipped disabled;
2. values and their forms: URLs (http/https, no credentials), feed names, either as arrays or
   comma-separated strings, with errors naming the file, line and key;
3. config import: DISABLED_FEEDS split at anything but word characters, CUSTOM_TRAILS_URL at ';'
   and ',' with http:// added where the scheme is missing, and a maltrail.conf without
   DISABLED_FEEDS fetching every feed (as Maltrail does); neither is listed as not applicable.
"""

from __future__ import annotations

import subprocess

import pytest

from config import ConfigError, load_config
from config.maltrail_conf import MALTRAIL_ONLY
from tests.test_corpus import console_script
from trailsdb.feeds import FEEDS, enabled_feeds


def write(tmp_path, text: str):
    path = tmp_path / "maltrail.toml"
    path.write_text(text)
    return str(path)


def test_defaults():
    cfg = load_config(None)
    assert cfg.all.disabled_feeds == ("turris", "ciarmy", "policeman", "myip", "alienvault")
    assert set(cfg.all.disabled_feeds) == {f.name for f in FEEDS if not f.enabled}
    assert cfg.all.custom_trails_url == () and cfg.all.feeds_ca_file == ""
    assert cfg.all.feeds_dir == "/var/lib/maltrail-engine/feeds"
    # the configured default and the catalog's default choose the same feeds
    assert enabled_feeds(cfg.all.disabled_feeds)[0] == enabled_feeds(None)[0]


def test_values_as_arrays_or_comma_separated(tmp_path):
    cfg = load_config(write(tmp_path, '[all]\ndisabled_feeds = "dataplane, urlhaus"\ncustom_trails_url = '
                                      '["https://lists.example.org/a.txt", "http://10.0.0.5:8080/b"]\n'
                                      'feeds_dir = "/srv/feeds"\nfeeds_ca_file = "/etc/ssl/proxy-ca.pem"\n'))
    assert cfg.all.disabled_feeds == ("dataplane", "urlhaus")
    assert cfg.all.custom_trails_url == ("https://lists.example.org/a.txt", "http://10.0.0.5:8080/b")
    assert (cfg.all.feeds_dir, cfg.all.feeds_ca_file) == ("/srv/feeds", "/etc/ssl/proxy-ca.pem")
    assert load_config(write(tmp_path, "[all]\ndisabled_feeds = []\n")).all.disabled_feeds == ()


@pytest.mark.parametrize("line, needles", [
    ('custom_trails_url = ["ftp://x.org/a"]', ["maltrail.toml:2", "custom_trails_url", "http:// or https://"]),
    ('custom_trails_url = "https://user:pw@x.org/a"', ["custom_trails_url", "credentials"]),
    ('custom_trails_url = ["https:///a"]', ["custom_trails_url", "host is missing"]),
    ('disabled_feeds = ["Turris"]', ["disabled_feeds", "lower-case"]),
    ('disabled_feeds = "a b"', ["disabled_feeds", "feed name"]),
    ('feeds_dir = ""', ["feeds_dir", "must not be empty"]),
])
def test_bad_values_are_named(tmp_path, line, needles):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[all]\n%s\n" % line))
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def mte(*args):
    return subprocess.run([console_script(), *args], capture_output=True, text=True, timeout=60)


def test_config_import_carries_the_feed_options_over(tmp_path):
    assert "DISABLED_FEEDS" not in MALTRAIL_ONLY and "CUSTOM_TRAILS_URL" not in MALTRAIL_ONLY
    conf = tmp_path / "maltrail.conf"
    conf.write_text("MONITOR_INTERFACE any\nDISABLED_FEEDS Turris, ciarmy;myip alienvault\n"
                    "CUSTOM_TRAILS_URL https://a.example.org/1.txt; trails.example.org/2.txt,http://10.1.1.1/3\n")
    out = tmp_path / "maltrail.toml"
    done = mte("config", "import", str(conf), "-o", str(out))
    assert done.returncode == 0, done.stderr
    cfg = load_config(str(out))
    assert cfg.all.disabled_feeds == ("turris", "ciarmy", "myip", "alienvault")
    assert cfg.all.custom_trails_url == ("https://a.example.org/1.txt", "http://trails.example.org/2.txt",
                                         "http://10.1.1.1/3")
    text = out.read_text()
    assert "# from Maltrail's DISABLED_FEEDS (line 2)" in text and "# from Maltrail's CUSTOM_TRAILS_URL (line 3)" in text
    assert "taken as http://" in text


def test_without_disabled_feeds_maltrail_fetches_every_feed(tmp_path):
    conf = tmp_path / "maltrail.conf"
    conf.write_text("MONITOR_INTERFACE any\n")
    out = tmp_path / "maltrail.toml"
    assert mte("config", "import", str(conf), "-o", str(out)).returncode == 0
    cfg = load_config(str(out))
    assert cfg.all.disabled_feeds == ()
    assert len(enabled_feeds(cfg.all.disabled_feeds)[0]) == len(FEEDS)
