"""Smoke tests of the benchmark tooling: the mix/hard generators, `python -m bench replay` and
`python -m bench ui` at tiny sizes.

No timing is asserted, only that the generators are deterministic, lay frames out as
engine/sources/synthetic.py does, keep the protocol shares, plant what their truth file says, and that the
replay harness runs the real engine over a tiny pcap and finds every planted indicator.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter

from bench import generate as gen
from engine.sources import synthetic as g
from engine.sources.pcapfile import open_capture
from tests.conftest import REPO
from workers.decode import decode_frame

TRAILS = """\
evil-bench-one.com,generic (malware),(static)
evil-bench-two.net,c2 (malware),(static)
evil-bench-three.org,phishing (suspicious),(static)
evil-bench-four.info,generic (malware),(static)
evil-bench-five.biz,ransomware (malware),(static)
dyn-provider-bench.com,dynamic domain (suspicious),(static)
45.11.22.1,generic (malware),(static)
45.11.22.2,generic (malware),(static)
45.11.22.3,cobalt strike (malware),(static)
45.11.22.4,mass scanner (suspicious),(static)
45.11.22.5,known attacker,(static)
45.11.22.6,known attacker,(static)
45.11.22.7,tor exit (suspicious),(static)
45.11.22.8,tor exit (suspicious),(static)
45.11.22.9,generic (malware),(static)
45.11.22.10,parking site (suspicious),(static)
45.11.22.11,mass scanner (suspicious),(static)
45.11.22.12,generic (malware),(static)
91.7.8.9:4443,c2 (malware),(static)
91.7.8.10:8080,c2 (malware),(static)
91.7.8.11:443,c2 (malware),(static)
evil-host-bench.com/gate.php,lokibot (malware),(static)
evil-host-bench.net/panel/admin.php,azorult (malware),(static)
/bench-malicious-login.php,phishing (suspicious),(static)
/wp-bench/evil.js,skimmer (malware),(static)
"""


def _frames(path):
    out = []
    with open_capture(str(path)) as source:
        while True:
            batch = source.read_batch(1024)
            if batch is None:
                return out
            for i in range(len(batch.caplens)):
                start = batch.offsets[i]
                out.append((batch.ts_ns[i], bytes(batch.buf[start:start + batch.caplens[i]])))


def _classify(frame):
    p = decode_frame(frame, 1)
    if p.proto == 1:
        return "icmp"
    if p.proto == 17:
        return "dns" if p.dport == 53 else "mdns" if p.dport == 5353 else "udp"
    if p.tcp_flags & 0x02:
        return "syn"
    return "http" if p.dport == 80 else "tls"


def test_frame_builders_match_pcapgen():
    src, dst = gen._packed("10.0.0.1"), gen._packed("198.51.100.7")
    assert gen.tcp4(src, dst, 40000, 443, g.TCP_SYN) == g.tcp_frame("10.0.0.1", "198.51.100.7", 40000, 443)
    payload = g.http_request("GET", "/x", "a.example", "ua")
    assert (gen.tcp4(src, dst, 40001, 80, g.TCP_PSH | g.TCP_ACK, payload)
            == g.tcp_frame("10.0.0.1", "198.51.100.7", 40001, 80, g.TCP_PSH | g.TCP_ACK, payload))
    assert (gen.tcp4(src, dst, 40001, 443, g.TCP_ACK, gen.TLS_PAYLOAD, payload_sum=gen._sum16(gen.TLS_PAYLOAD))
            == g.tcp_frame("10.0.0.1", "198.51.100.7", 40001, 443, g.TCP_ACK, gen.TLS_PAYLOAD))
    for name in ("a.b", "odd-length-name.example.org"):
        query = g.dns_query(name)
        assert gen.udp4(src, dst, 5353, 53, query) == g.udp_frame("10.0.0.1", "198.51.100.7", 5353, 53, query)
    assert gen.icmp4(src, dst) == g.icmp_frame("10.0.0.1", "198.51.100.7")


def test_mix_shares_order_and_timestamps(tmp_path):
    path = tmp_path / "mix.pcap"
    gen.generate_mix(str(path), 1000, 1)
    frames = _frames(path)
    assert len(frames) == 1000
    kinds = Counter(_classify(f) for _, f in frames)
    assert kinds == {"tls": 600, "syn": 150, "dns": 100, "http": 100, "icmp": 25, "mdns": 25}
    assert [ts for ts, _ in frames] == [gen.T0_NS + i * 1_000_000 for i in range(1000)]
    # templates repeat in order: round 2 equals round 0
    assert [f for _, f in frames[200:300]] == [f for _, f in frames[0:100]]
    assert b"Host: www.example.org" in frames[85][1] and b"/index0.html?id=0" in frames[85][1]


def _hard(tmp_path, packets=3000, planted=50, seed=7):
    trails = tmp_path / "trails.csv"
    trails.write_text(TRAILS)
    path = tmp_path / ("hard-%d.pcap" % seed)
    truth = gen.generate_hard(str(path), packets, seed, [str(trails), gen.EXTRA_TRAILS], planted)
    return path, truth, trails


def test_hard_is_unique_deterministic_and_planted(tmp_path):
    path, truth, _ = _hard(tmp_path)
    again = tmp_path / "again.pcap"
    gen.generate_hard(str(again), 3000, 7, [str(tmp_path / "trails.csv"), gen.EXTRA_TRAILS], 50)
    assert path.read_bytes() == again.read_bytes()
    frames = _frames(path)
    assert len(frames) == 3000
    assert all(b[0] < a[0] for a, b in zip(frames[1:], frames))  # strictly increasing
    kinds = Counter(_classify(f) for _, f in frames)
    assert kinds["tls"] == 1800 and kinds["syn"] == 450 and kinds["dns"] == 300 and kinds["http"] == 300
    assert kinds["icmp"] + kinds["mdns"] + kinds["udp"] == 150
    assert len({f for _, f in frames}) == 3000  # nothing repeats
    assert truth["planted"] == len(truth["entries"]) > 0
    assert json.loads((tmp_path / "hard-7.pcap.truth.json").read_text())["entries"] == truth["entries"]
    for entry in truth["entries"]:
        frame = frames[entry["index"]][1]
        if entry["type"] == "DNS":
            assert g.dns_name(entry["query"]) in frame and entry["query"].endswith(entry["trail"])
        elif entry["type"] in ("URL", "UA"):
            assert entry["trail"].split("/", 1)[-1].encode() in frame
        else:
            assert gen._packed(entry["trail"].split(":")[0]) in frame[26:34]  # IPv4 source or destination
    # the documented suppressions are avoided
    for entry in truth["entries"]:
        if entry["category"] in ("ip-syn-out", "ipport-syn-out"):
            assert not any(word in entry["info"] for word in ("attacker", "scanner", "parking"))
        if entry["category"] == "ip-syn-in":
            assert "malware" not in entry["info"]
        assert "dyn-provider" not in entry["key"] or entry["category"] != "dns-exact"
    assert {"ua", "url-path", "url-host-path", "dns-parent"} <= {e["category"] for e in truth["entries"]}


def test_generate_cli(tmp_path):
    out = tmp_path / "m.pcap"
    done = subprocess.run([sys.executable, "-m", "bench.generate", "mix", "--packets", "10", "--seed", "3",
                           "-o", str(out)], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(_frames(out)) == 10
    # written in 8 KiB pieces (the layout bench/README.md compares), the same bytes
    small = tmp_path / "small.pcap"
    done = subprocess.run([sys.executable, "-m", "bench.generate", "mix", "--packets", "10", "--seed", "3",
                           "--piece-bytes", "8192", "-o", str(small)], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert small.read_bytes() == out.read_bytes()
    done = subprocess.run([sys.executable, "-m", "bench.generate", "mix", "--piece-bytes", "0", "-o", str(small)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--piece-bytes must be at least 1" in done.stderr


def _env():
    # `bench` is found in the checkout; the engine packages still come from the installed package
    # (the checkout goes last, and PYTHONSAFEPATH keeps the working directory off sys.path).
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)])))


def test_replay_harness_smoke(tmp_path):
    path, truth, trails = _hard(tmp_path, packets=2000, planted=40, seed=3)
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "bench", "replay", "--pcap", str(path), "--trails", str(trails),
                           "--runs", "1", "--workers", "2", "--json", str(out)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    for heading in ("1. Packet path", "2. Replay", "3. Start-up", "4. Scaling", "5. Heuristics", "6. Orientation"):
        assert heading in done.stdout
    assert "issue" not in done.stdout  # the report speaks to its reader, not to the project's tracker
    results = json.loads(out.read_text())
    res = results["replay"][path.name]
    assert res["fast"]["frames"] == 2000 and res["fast"]["accounted"]
    assert res["recall"]["found"] == res["recall"]["planted"] == truth["planted"]
    assert res["fast"]["peak_pss"] > 0 and res["fast"]["first_packet_s"] is not None
    assert res["one_worker"]["events"] == res["fast"]["events"]
    if "reference" not in results["skipped"]:
        assert res["reference"]["events"] == res["fast"]["events"]
    if "packet_path" not in results["skipped"]:
        pp = results["packet_path"][path.name]
        assert pp["fast"]["events"] == pp["reference"]["events"]


def test_long_replay_and_scaling_model_smoke(tmp_path):
    """`--long-only --scaling-model` at a tiny size: the long pcaps are generated into --long-dir and
    deleted after; the real capture process alone hands every frame to its drained rings; 1 and 2
    pinned workers judge the same frames into the same events; every planted indicator is found."""
    trails = tmp_path / "trails.csv"
    trails.write_text(TRAILS)
    long_dir = tmp_path / "long"
    long_dir.mkdir()
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "bench", "replay", "--trails", str(trails), "--long-only",
                           "--scaling-model", "--long-packets", "3000", "--long-dir", str(long_dir), "--runs", "1",
                           "--json", str(out)], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "7. Long replay" in done.stdout and "8. Scaling model" in done.stdout
    assert "DOCUMENTED" in done.stdout and "1. Packet path" not in done.stdout
    assert list(long_dir.iterdir()) == []  # the generated pcaps are gone
    results = json.loads(out.read_text())
    for kind in ("mix", "hard"):
        run = results["long"][kind]["one_worker"]
        assert run["frames"] == 3000 and run["accounted"] and not run["dropped"]
        assert run["tree_cpu_s"] > 0 and run["peak_pss"] > 0 and run["first_packet_s"] is not None
        # what each process of the pipeline spent is known by its part
        names = {name.split("[")[0] for name in run["runs"][0]["cpu_by_process"]}
        assert {"mte-capture", "mte-worker-0", "supervisor"} <= names
        model = results["scaling_model"][kind]
        if model.get("skipped"):
            continue
        for ceiling, rings in zip(model["capture_alone"], (1, 2)):
            assert ceiling["rings"] == rings and ceiling["frames"] == 3000
            assert sum(ceiling["dispatched"]) == 3000 and len(ceiling["dispatched"]) == rings
        one, two = model["workers_1"], model["workers_2"]
        assert one["frames"] == two["frames"] == 3000 and sum(two["dispatched"]) == 3000
        assert one["events"] == two["events"] == run["events"]
    hard = results["long"]["hard"]
    assert hard["recall"]["planted"] > 0 and hard["recall"]["found"] == hard["recall"]["planted"]


def test_long_replay_against_a_baseline_engine_smoke(tmp_path):
    """`--baseline-engine`: table 7 runs the other tree's engine in the same rounds and sets the two
    side by side (here the same engine, so the events must be the same and every ratio exists)."""
    trails = tmp_path / "trails.csv"
    trails.write_text(TRAILS)
    out = tmp_path / "results.json"
    engine = os.path.join(os.path.dirname(sys.executable), "maltrail-engine")
    done = subprocess.run([sys.executable, "-m", "bench", "replay", "--trails", str(trails), "--long-only",
                           "--long-kinds", "hard", "--long-packets", "2000", "--runs", "1",
                           "--baseline-engine", engine, "--json", str(out)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "Against the baseline engine (%s)" % engine in done.stdout
    assert re.search(r"hard steady rate .* \d+\.\d+x", done.stdout) and re.search(r"hard events .* same", done.stdout)
    run = json.loads(out.read_text())["long"]["hard"]["one_worker"]
    assert run["baseline"]["frames"] == run["frames"] == 2000
    assert run["baseline"]["events"] == run["events"] and run["baseline"]["peak_pss"] > 0


def test_floods_harness_smoke(tmp_path):
    out = tmp_path / "floods.json"
    done = subprocess.run([sys.executable, "-m", "bench", "floods", "--keys", "300", "--kind", "port", "--kind", "dns",
                           "--scanners", "300", "--json", str(out)], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    port, dns, engine = json.loads(out.read_text())
    # every scanner passes the threshold once (the 11th port), and the window holds one key each
    assert port["kind"] == "port" and port["frames"] == 300 * 11 and port["events"] == 300
    assert port["held"]["port"] == 300
    assert dns["held"]["dns domains"] == 300 and dns["held"]["dns subdomains"] == 300 * 16
    assert "RSS +MB" in done.stdout
    # the engine flood: 300 scanners x 20 ports, each reported with its 10 probes past the threshold,
    # the worker's memory read from /proc
    run, = engine["runs"]["this tree"]
    assert (run["scanners"], run["detections"], engine["expected"]) == (300, 3000, 3000)
    assert run["worker_rss"] > 0 and run["worker_pss"] > 0 and run["total_pss"] >= run["worker_pss"]
    assert "300/300" in done.stdout
    # the log writer's and the supervisor's share at this event rate, as each process read its own
    assert {"supervisor", "mte-capture", "mte-worker-0", "mte-writer"} <= set(run["cpu_by_process"])
    assert "CPU seconds per process at this event rate" in done.stdout


def test_the_floods_pcap_is_what_the_frame_builders_make(tmp_path):
    """bench/floods.py patches one template per frame; the frames must be tcp_frame's, byte for byte."""
    from bench.floods import FIRST_PORT, GAP_NS, START_NS, scanner_address, write_scanner_pcap
    fast, slow = tmp_path / "fast.pcap", tmp_path / "slow.pcap"
    write_scanner_pcap(str(fast), 300, 20)
    with g.PcapWriter(str(slow)) as w:
        ts = START_NS
        for k in range(300):
            for v in range(20):
                ts += GAP_NS
                w.write(ts, g.tcp_frame(scanner_address(k), "198.18.0.7", 40000, FIRST_PORT + v, g.TCP_SYN))
    assert fast.read_bytes() == slow.read_bytes()


def test_memory_sampler_counts_children_and_grandchildren():
    """The peak sums the whole process tree: a grandchild holding 60 MB is in it, by name."""
    from bench.replay import TreeSampler
    script = ("import os, time\n"
              "if os.fork() == 0:\n"
              "    if os.fork() == 0:\n"
              "        block = bytearray(60 * 1000 * 1000); block[::4096] = b'x' * len(block[::4096])\n"
              "        time.sleep(3); os._exit(0)\n"
              "    os.wait(); os._exit(0)\n"
              "os.wait()\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    sampler = TreeSampler(proc.pid)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sampler.peak < 60_000_000:
            sampler.sample()
            time.sleep(0.05)
    finally:
        proc.wait(timeout=30)
    assert sampler.peak >= 60_000_000
    assert len(sampler.at_peak) == 3 and any(name.startswith("supervisor[") for name in sampler.at_peak)


def test_ui_harness_smoke(tmp_path):
    """Tiny stores built into the cache, a real server started on each, the dashboard's calls
    answered; a rerun reuses the cache. The browser part runs, or says why it was skipped."""
    out, cache = tmp_path / "ui.json", tmp_path / "cache"
    argv = [sys.executable, "-m", "bench", "ui", "--day-events", "2000", "--month-events", "3000", "--month-days",
            "3", "--runs", "1", "--cache", str(cache), "--ready-timeout-s", "30", "--json", str(out)]
    done = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    results = json.loads(out.read_text())
    assert set(results["sizes"]) == {"day", "month"}
    import importlib.util
    import shutil
    can_browse = shutil.which("chromium") is not None and importlib.util.find_spec("playwright") is not None
    for label, (n, days) in {"day": (2000, 1), "month": (3000, 3)}.items():
        size = results["sizes"][label]
        assert size["store"]["built"] and size["store"]["events"] == n and size["store"]["days"] == days
        server = size["server"]
        assert server["baseline"]["status"] == 200
        calls = server["calls"]
        assert set(calls) - {"threats, first page, no spark"} == {
            "counts by type,severity", "top sources", "top destinations", "top trails", "threats, first page + spark",
            "sensors"}
        for name in ("counts by type,severity", "top sources", "top destinations", "top trails", "sensors"):
            assert calls[name]["statuses"] == [200], (name, calls[name])
        # the threats page is timed with its sparkline, or without where the server refuses `spark`
        threats = calls.get("threats, first page, no spark", calls["threats, first page + spark"])
        assert threats["statuses"] == [200], calls
        browser = size["browser"]
        if can_browse:      # the page must become ready: a wait the page cannot satisfy fails here
            assert "skipped" not in browser, browser
        if "skipped" in browser:
            assert browser["skipped"] and "skipped: " + browser["skipped"] in done.stdout
        else:
            assert browser[label]["median_wall_ms"] > 0 and browser[label]["weight"]["asset_bytes"] > 0
    assert "built 2000 events over 1 day(s)" in done.stdout
    again = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr + again.stdout
    assert "2000 events over 1 day(s), reused from" in again.stdout and "built" not in again.stdout


def test_bench_entry_point_lists_commands():
    done = subprocess.run([sys.executable, "-m", "bench", "--help"], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "replay" in done.stdout and "trails" in done.stdout and "floods" in done.stdout
    assert "ui " in done.stdout


def test_default_paths_are_relative_to_the_checkout(tmp_path):
    """A checkout anywhere looks for the shared trail set beside itself, not on one machine's path;
    without it the benchmarks say what to pass instead of failing."""
    import shutil
    checkout = tmp_path / "somewhere" / "maltrail-engine"
    shutil.copytree(REPO / "bench", checkout / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(checkout))
    expected = str(tmp_path / "somewhere" / "shared" / "trails" / "maltrail-trails.csv.zst")
    done = subprocess.run([sys.executable, "-c", "import bench.trails, bench.generate, bench.replay; "
                           "print(bench.trails.DEFAULT_TRAILS); print(bench.generate.DEFAULT_TRAILS)"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [os.path.normpath(p) for p in done.stdout.split()] == [expected, expected]
    for module in ("bench.trails", "bench.replay"):
        done = subprocess.run([sys.executable, "-m", module], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert "skipped: no trail set at %s" % expected in done.stdout and "pass --trails PATH" in done.stdout


def test_pcap_writer_writes_in_pieces(tmp_path):
    """bench/generate.py writes its pcaps in WRITE_PIECE_BYTES pieces (the page cache then holds
    them in large folios): nothing reaches the file until a piece is full, all of it at close."""
    from bench.generate import WRITE_PIECE_BYTES
    path = tmp_path / "p.pcap"
    frame = g.tcp_frame("10.0.0.1", "10.0.0.2", 1000, 80)
    with g.PcapWriter(str(path), piece_bytes=WRITE_PIECE_BYTES) as w:
        per_record = 16 + len(frame)
        for i in range(WRITE_PIECE_BYTES // per_record - 1):
            w.write(i * 1000, frame)
        assert path.stat().st_size == 0
        for i in range(2):
            w.write(i * 1000, frame)
        assert 0 < path.stat().st_size < 24 + w.frames * per_record
    assert path.stat().st_size == 24 + w.frames * per_record
    with open_capture(str(path)) as reader:
        for _ in reader:
            pass
        assert reader.frames == w.frames
