"""`maltrail-engine check-config` as a deployment check, and the live sensor's capture checks.

Everything runs the installed command as a real process against real files, directories and
interfaces of this host: a compiled artifact, control files with a mistake in them, a log
directory anyone may write into, interfaces that exist (lo, "any") and one that does not, filters
libpcap compiles and one it refuses. Missing capture privileges are real too: the command runs
with CAP_NET_RAW and CAP_NET_ADMIN taken out of its bounding set (setpriv), or unprivileged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from config import load_config
from engine.preflight import DLT_EN10MB, DLT_LINUX_SLL, compile_filter_problem, interface_dlt
from tests.test_corpus import console_script

CORPUS = Path(__file__).resolve().parent / "corpus"


def mte(*args, prefix=(), **kw):
    return subprocess.run([*prefix, console_script(), *args], capture_output=True, text=True, timeout=120, **kw)


def without_capture_privileges():
    """A command prefix that runs without CAP_NET_RAW and CAP_NET_ADMIN: as root, setpriv takes
    them out of the bounding set; a process that is not root has neither already."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop capabilities")
    return ("setpriv", "--bounding-set=-net_raw,-net_admin")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("art") / "trails.mtdb"
    done = mte("trails", "build", "--source", str(CORPUS / "trails.csv"), "-o", str(path))
    assert done.returncode == 0, done.stderr
    return path


def _checks(stdout: str) -> dict[str, str]:
    """check-config's lines about this host: {what: "ok ..." or "FAIL ..."}."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("#   ok ") or line.startswith("#   FAIL "):
            verdict, rest = line[4:].split(None, 1)
            what, _, detail = rest.partition(": ")
            out[what] = "%s %s" % (verdict, detail)
    return out


def test_a_sound_deployment_passes_every_check(artifact, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: the check includes the capture privileges")
    done = mte("check-config", "--trails", str(artifact), "--log-dir", str(tmp_path / "log"), "-i", "lo,any")
    assert done.returncode == 0, done.stderr
    checks = _checks(done.stdout)
    assert checks["trails"].startswith("ok") and "30 trails" in checks["trails"]
    assert checks["control files"] == "ok none configured"
    assert checks["interface lo"].startswith("ok") and checks["interface any"].startswith("ok")
    assert checks["capture filter on lo"].startswith("ok") and checks["capture filter on any"].startswith("ok")
    assert checks["capture privileges"].startswith("ok root")
    assert checks["log directory"].startswith("ok") and "does not exist yet" in checks["log directory"]
    assert not (tmp_path / "log").exists()  # the check creates nothing
    # the output, checks included, is still a maltrail.toml our loader reads
    (tmp_path / "effective.toml").write_text(done.stdout)
    assert load_config(str(tmp_path / "effective.toml")).all.trails_artifact == str(artifact)


def test_every_problem_of_the_host_is_named_and_the_exit_is_non_zero(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # anyone could plant a symlink where the log is written
    ignore = tmp_path / "ignore.txt"
    ignore.write_text("10.0.0.1 80 10.0.0.2\n")  # three fields, four needed
    conf = tmp_path / "maltrail.toml"
    conf.write_text('[all]\ntrails_artifact = "%s"\nlog_dir = "%s"\n[sensor]\nignore_file = "%s"\n'
                    'interface = "lo,no-such-iface0"\ncapture_filter = "port not-a-number"\n'
                    % (tmp_path / "missing.mtdb", open_dir / "log", ignore))
    done = mte("check-config", "-c", str(conf), prefix=without_capture_privileges())
    assert done.returncode == 1, done.stderr
    problems = done.stderr.splitlines()
    assert all(line.startswith("maltrail-engine: check-config: ") for line in problems), problems
    named = {line.split(": ")[2] for line in problems}
    assert named == {"trails", "control files", "interface no-such-iface0", "capture filter on lo",
                     "capture privileges", "log directory"}, problems
    text = done.stderr
    assert "no trails at %s" % (tmp_path / "missing.mtdb") in text and "trails build" in text
    assert "ignore.txt:1" in text
    assert "no-such-iface0: not found; available: any" in text
    assert "unknown port 'not-a-number'" in text
    assert "lacks it" in text and "capturing needs root or CAP_NET_RAW;" in text
    assert "writable by every user" in text
    checks = _checks(done.stdout)
    assert checks["interface lo"].startswith("ok")  # what is fine is still said to be fine
    # --config-only checks the file alone: a file written for another host passes here
    only = mte("check-config", "-c", str(conf), "--config-only")
    assert only.returncode == 0, only.stderr
    assert "this host" not in only.stdout


def test_no_trails_is_fine_where_the_configuration_allows_it(tmp_path):
    done = mte("check-config", "--trails", str(tmp_path / "none.mtdb"), "--allow-no-trails", "--log-dir",
               str(tmp_path / "log"), "--config-only")
    assert done.returncode == 0
    done = mte("check-config", "--trails", str(tmp_path / "none.mtdb"), "--allow-no-trails", "--log-dir",
               str(tmp_path / "log"), "-i", "lo")
    assert _checks(done.stdout)["trails"].startswith("ok none at")


def _one_clean_line(done):
    assert done.returncode == 1, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("maltrail-engine: cannot capture: "), done.stderr
    # nothing started: no summary of zero frames, no Python warning or traceback
    assert "frames:" not in done.stderr and "Warning" not in done.stderr and "Traceback" not in done.stderr
    return lines[0]


def test_the_live_sensor_refuses_a_bad_interface_before_starting(artifact, tmp_path):
    line = _one_clean_line(mte("-i", "no-such-iface0", "--trails", str(artifact), "--log-dir", str(tmp_path / "log")))
    assert "interface no-such-iface0: not found" in line
    assert not (tmp_path / "log").exists()


def test_the_live_sensor_refuses_a_bad_filter_before_starting(artifact, tmp_path):
    line = _one_clean_line(mte("-i", "lo", "--filter", "port not-a-number", "--trails", str(artifact),
                               "--log-dir", str(tmp_path / "log")))
    assert "capture filter on lo" in line and "unknown port 'not-a-number'" in line


def test_the_live_sensor_refuses_to_start_without_capture_privileges(artifact, tmp_path):
    line = _one_clean_line(mte("-i", "lo", "--trails", str(artifact), "--log-dir", str(tmp_path / "log"),
                               prefix=without_capture_privileges()))
    assert "capture privileges" in line and "CAP_NET_RAW" in line and "setcap" in line


def test_filters_compile_with_libpcap_for_the_interface_link_type():
    assert interface_dlt("any") == DLT_LINUX_SLL and interface_dlt("lo") == DLT_EN10MB
    instructions, problem = compile_filter_problem("udp port 53", DLT_EN10MB, 2000)
    assert problem is None and instructions > 0
    # "vlan" exists on Ethernet only: the link type decides, as it does for a live handle
    assert compile_filter_problem("vlan and udp", DLT_EN10MB, 2000)[1] is None
    assert compile_filter_problem("vlan and udp", DLT_LINUX_SLL, 2000)[1]
    assert "syntax error" in compile_filter_problem("udp and and", DLT_EN10MB, 2000)[1]
