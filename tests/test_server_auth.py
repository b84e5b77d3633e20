"""server/auth apart from HTTP: user lines, netfilter scopes (against ipaddress and against real
SQLite over the store's column convention), custom-trail masking, the state database, the auth
records' layouts, and the `server user add` / `server sensor add` commands run as processes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from config import ConfigError, load_config
from events.record import Event
from server.auth.audit import AuthEvent, clean_username
from server.addresses import key_range
from server.auth.scopes import ScopeError, mask_custom, parse_netfilter
from server.auth.state import StateDB, StateError
from server.auth.users import UserConfigError, check_password, parse_user_line, parse_users, users_from_config

CLI = [str(Path(sys.executable).with_name("maltrail-engine"))]
SHA = hashlib.sha256(b"x").hexdigest()


# -- scopes -----------------------------------------------------------------------------------

NETFILTER = "10.0.5.0/16, 192.168.1.7 2001:db8::/32;172.16.0.1-172.16.0.9 ::ffff:100.64.0.0/106 fe80::1-fe80::ff"
REFERENCE = [ipaddress.ip_network("10.0.0.0/16"), ipaddress.ip_network("192.168.1.7/32"),
             ipaddress.ip_network("2001:db8::/32"), ipaddress.ip_network("100.64.0.0/10")]


def reference_contains(text):
    address = ipaddress.ip_address(text)
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    if any(address in net for net in REFERENCE if net.version == address.version):
        return True
    if address.version == 4:
        return ipaddress.ip_address("172.16.0.1") <= address <= ipaddress.ip_address("172.16.0.9")
    return ipaddress.ip_address("fe80::1") <= address <= ipaddress.ip_address("fe80::ff")


def sample_addresses(count=3000):
    rng = random.Random(11)
    out = ["10.0.0.0", "10.0.255.255", "9.255.255.255", "10.1.0.0", "192.168.1.7", "192.168.1.8", "172.16.0.0",
           "172.16.0.1", "172.16.0.9", "172.16.0.10", "2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
           "2001:db9::", "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "fe80::", "fe80::1", "fe80::ff", "fe80::100",
           "::", "::1", "0.0.0.0", "255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::ffff:10.0.3.3",
           "100.127.255.255", "100.128.0.0"]
    for _ in range(count):
        if rng.random() < 0.5:
            base = rng.choice(["10.0.%d.%d", "172.16.0.%d%d", "100.%d.0.%d", "%d.1.2.%d"])
            out.append(str(ipaddress.ip_address(rng.getrandbits(32))) if rng.random() < 0.3 else
                       base % (rng.randrange(256), rng.randrange(10)) if "%d%d" not in base else
                       "172.16.0.%d" % rng.randrange(12))
        else:
            prefix = rng.choice([0x20010DB8 << 96, 0x20010DB9 << 96, 0xFE80 << 112, 0])
            out.append(str(ipaddress.ip_address(prefix | rng.getrandbits(100 if prefix != 0xFE80 << 112 else 9))))
    return out


def test_scope_contains_agrees_with_ipaddress():
    scope = parse_netfilter(NETFILTER)
    for text in sample_addresses():
        assert scope.contains(text) == reference_contains(text), text
    assert not scope.contains("not an address") and not scope.contains("")


def test_the_store_scope_holds_exactly_what_contains_says():
    # The store applies store_scope (merged a-b ranges read back by server/addresses.py), the API
    # checks rows with contains: both must draw the same edges.
    scope = parse_netfilter(NETFILTER)
    ranges = [key_range(item) for item in scope.store_scope]
    assert ranges == sorted(ranges) and len(ranges) == 6    # 10.0/16 and 100.64/10 ... merged, disjoint
    for text in sample_addresses():
        key = key_range(text)[0]
        assert any(lo <= key <= hi for lo, hi in ranges) == scope.contains(text), text
    assert parse_netfilter("").store_scope == () and parse_netfilter("*").store_scope == ()


@pytest.mark.parametrize("text", ["", "*", "::", "0.0.0.0/0", "  "])
def test_maltrails_everything_forms_see_everything(text):
    scope = parse_netfilter(text)
    assert scope.everything and scope.contains("2001:db8::1") and scope.contains("1.2.3.4")


@pytest.mark.parametrize("text,words", [("10.0.0.0/33", "prefix length"), ("10.0.0.9-10.0.0.1", "backwards"),
                                        ("10.0.0.1-::1", "mixes"), ("example.com", "not an address"),
                                        ("10.0.0.0/x", "not a CIDR"), (" , ;", "holds no item")])
def test_bad_netfilters_are_refused_naming_the_item(text, words):
    with pytest.raises(ScopeError, match=words):
        parse_netfilter(text)


def test_masking_blanks_the_info_of_custom_trails_only():
    event = Event(1, "s", "10.0.0.1", 1, "10.0.0.2", 53, "UDP", "DNS", "evil.example", "our secret op (x)",
                  "(custom)", "high")
    masked = mask_custom(event)
    assert masked.info == "-" and masked.trail == "evil.example" and event.info == "our secret op (x)"
    assert mask_custom(event._replace(reference="(remote custom)")).info == "-"
    assert mask_custom(event._replace(reference="(static)")).info == "our secret op (x)"
    assert mask_custom({"info": "x", "reference": "(custom)", "trail": "t"}) == {"info": "-", "reference": "(custom)",
                                                                                  "trail": "t"}


# -- users ------------------------------------------------------------------------------------

@pytest.mark.parametrize("line,words", [
    ("admin:%s:0" % SHA, "3 field"),
    ("ad min:%s:0:" % SHA, "name"),
    ("admin:$9065b2ea10f3a4ee$10000$0098088129467f87f2233d581f6695aac38ffcd9787174db:0:", "PBKDF2"),
    ("admin:abc:0:", "neither argon2id"),
    ("admin:$argon2id$v=19$broken:0:", "damaged"),
    ("admin:%s:-1:" % SHA, "uid"),
    ("admin:%s:0:10.0.0.0/40" % SHA, "netfilter"),
])
def test_bad_user_lines_say_what_and_how_to_fix_without_the_hash(line, words):
    with pytest.raises(ValueError, match=words) as caught:
        parse_user_line(line)
    assert SHA not in str(caught.value)


def test_user_lines_take_ipv6_netfilters_with_colons_and_refuse_duplicates():
    users = parse_users(["v6:%s:1000:2001:db8::/32, ::1" % SHA, "all:%s:0:::" % SHA])
    assert users["v6"].scope.contains("2001:db8::7") and not users["v6"].scope.contains("10.0.0.1")
    assert users["all"].scope.everything and users["v6"].restricted_view and not users["all"].restricted_view
    with pytest.raises(UserConfigError, match="item 2: user a is listed twice"):
        parse_users(["a:%s:0:" % SHA, "a:%s:1:" % SHA])
    assert SHA not in repr(users["v6"])


def test_a_bad_user_line_in_maltrail_toml_is_located_and_its_hash_not_shown(tmp_path):
    conf = tmp_path / "maltrail.toml"
    conf.write_text('[server]\nhttp_port = 8338\nusers = ["ok:%s:0:", "bad:%s:zero:"]\n' % (SHA, SHA))
    with pytest.raises(ConfigError) as caught:
        load_config(conf)
    message = str(caught.value)
    assert "%s:3: [server] users" % conf in message and "bad" in message and "uid" in message
    assert SHA not in message
    conf.write_text('[server]\nusers = ["ok:%s:0:10.0.0.0/8"]\n' % SHA)
    users = users_from_config(load_config(conf))
    assert users["ok"].scope.contains("10.1.2.3")


# -- commands ---------------------------------------------------------------------------------

def test_user_add_reads_a_password_from_a_pipe_and_prints_a_line_the_config_accepts(tmp_path):
    done = subprocess.run(CLI + ["server", "user", "add", "carol", "--uid", "1000", "--netfilter", "10.0.0.0/8"],
                          input="s3cret pass\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert "s3cret" not in line and line.startswith("carol:$argon2id$") and line.endswith(":1000:10.0.0.0/8")
    conf = tmp_path / "maltrail.toml"
    conf.write_text("[server]\nusers = [%s]\n" % json.dumps(line))
    user = users_from_config(load_config(conf))["carol"]
    assert check_password(user.hash, user.kind, "s3cret pass") and not check_password(user.hash, user.kind, "s3cret")
    empty = subprocess.run(CLI + ["server", "user", "add", "carol"], input="\n", capture_output=True, text=True,
                           timeout=60)
    assert empty.returncode == 1 and "empty" in empty.stderr and empty.stdout == ""
    bad = subprocess.run(CLI + ["server", "user", "add", "carol", "--netfilter", "10.0.0.0/99"], input="pw\n",
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "netfilter" in bad.stderr and bad.stdout == ""


def test_sensor_add_prints_a_key_once_and_stores_only_its_hash(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    conf = tmp_path / "maltrail.toml"
    conf.write_text('[server]\nstate_db = "%s"\n' % (state_dir / "state.sqlite"))
    done = subprocess.run(CLI + ["server", "sensor", "add", "-c", str(conf), "edge-1"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key.startswith("mtk_") and len(key) == 47
    state = StateDB(str(state_dir / "state.sqlite"))
    try:
        assert state.check_sensor_key("edge-1", key) and not state.check_sensor_key("edge-1", key[:-1] + ("B" if key.endswith("A") else "A"))
        assert not state.check_sensor_key("edge-2", key)
        assert [name for name, _, _ in state.sensors()] == ["edge-1"]
    finally:
        state.close()
    for path in state_dir.iterdir():
        assert key.encode() not in path.read_bytes()
    assert oct(os.stat(state_dir / "state.sqlite").st_mode & 0o777) == "0o600"
    # The configuration given before the action counts too (`server -c FILE sensor add NAME`).
    again = subprocess.run(CLI + ["server", "-c", str(conf), "sensor", "add", "edge-3"], capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    state = StateDB(str(state_dir / "state.sqlite"))
    try:
        assert sorted(name for name, _, _ in state.sensors()) == ["edge-1", "edge-3"]
    finally:
        state.close()


# -- state database ---------------------------------------------------------------------------

def test_state_database_refuses_a_symlink_a_shared_directory_and_a_newer_schema(tmp_path):
    (tmp_path / "target").write_text("precious")
    os.symlink(tmp_path / "target", tmp_path / "link.sqlite")
    with pytest.raises(StateError, match="symbolic link"):
        StateDB(str(tmp_path / "link.sqlite"))
    assert (tmp_path / "target").read_text() == "precious"
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(StateError, match="writable by every user"):
        StateDB(str(shared / "state.sqlite"))
    db = StateDB(str(tmp_path / "s.sqlite"))
    assert db.schema_version() == 2
    db._run("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(StateError, match="newer"):
        StateDB(str(tmp_path / "s.sqlite"))


def test_a_version_1_state_database_gains_the_suppressions_table_and_keeps_its_rows(tmp_path):
    db = StateDB(str(tmp_path / "s.sqlite"))
    db.add_sensor_key("edge", "k" * 43, 1000.0)
    db._run("DROP TABLE suppressions")
    db._run("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.close()
    db = StateDB(str(tmp_path / "s.sqlite"))
    assert db.schema_version() == 2 and db.check_sensor_key("edge", "k" * 43)
    first = db.add_suppression("10.0.0.5", "Evil.Example", 2000.0, "alice", "lab scanner", 1000.0)
    second = db.add_suppression("10.0.0.0/24", "bad.example", 1500.0, "bob", "", 1000.0)
    assert [(r.host, r.trail) for r in db.suppressions(1100.0)] == [("10.0.0.0/24", "bad.example"),
                                                                     ("10.0.0.5", "evil.example")]
    assert [r.id for r in db.suppressions(1600.0)] == [first]            # the second has expired
    assert db.lift_suppression(first, "carol", 1700.0) and not db.lift_suppression(first, "carol", 1701.0)
    assert db.suppressions(1800.0) == [] and db.suppression(first).lifted_by == "carol"
    assert len(db.suppressions(1800.0, include_ended=True)) == 2
    with pytest.raises(StateError):
        db.add_suppression("10.0.0.5", "x", 900.0, "alice", "", 1000.0)     # already expired


# -- audit records ----------------------------------------------------------------------------

def test_auth_records_have_maltrails_cef_and_json_layouts():
    event = AuthEvent(1_800_000_000, clean_username("ad|m=in\n"), "10.0.0.9", 50123, False, "wrong password")
    cef = event.cef("collector", "0.1.0")
    assert cef.split(" CEF:", 1)[1] == ("0|Maltrail|server|0.1.0|auth|login failure|2|"
                                        "src=10.0.0.9 spt=50123 duser=ad|m\\=in? outcome=failed")
    assert json.loads(event.json("collector")) == {"timestamp": 1_800_000_000, "sensor": "collector", "type": "auth",
                                                   "outcome": "failure", "username": "ad|m=in?",
                                                   "src_ip": "10.0.0.9", "src_port": 50123}
    ok = event._replace(success=True, username="admin")
    assert "|auth|login success|1|" in ok.cef("h", "v") and ok.cef("h", "v").endswith("outcome=accepted")
    assert ok.line() == "Accepted password for admin from 10.0.0.9 port 50123"
    assert clean_username(None) == "-" and len(clean_username("x" * 500)) == 64
