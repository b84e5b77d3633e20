"""Whole-update benchmark: `maltrail-engine trails update` (fetch + judge + merge + build +
publish) against a local feed server, beside today's build-only figure, in the same run.

Run `python -m bench update` (see bench/README.md). Category: micro (one command at a time, no
packets). It measures, each in a fresh process started as the installed command, wall time and
peak RSS of the process tree (the command's own process and anything it started, from wait4's
rusage; the update fetches in threads of that one process):

1. build: `maltrail-engine trails build --source SET` (no artifact there), the baseline;
2. update: `maltrail-engine trails update` with the same set split into `--feeds` lists served
   over HTTP on 127.0.0.1 (with Last-Modified) (one trail per line, the [all] custom_trails_url format; the catalog
   off with disabled_feeds = ["all"]), into an empty feeds directory and no artifact: every list
   fetched, judged (parsed once, its rows counted and kept in a row file), stored, and its rows
   read back from that file into the build;
3. update, unchanged: the server answers 304 for every list, and the artifact is kept;
4. update again: the lists re-fetched (the server now ignores the validators and sends none, so
   every body is new), a rebuild over the artifact of 2 (its provenance carried over).

The target for 2 and 3 is 250 MB (a trail update on a 512 MB machine), and CPU within 1.2 x the
build's (the last line says which). Owns nothing the engine
uses; imports only the standard library at module level and reads the trail set with
trailsdb.sources in the parent (whose memory is not measured).
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from bench.trails import DEFAULT_TRAILS, MISSING_TRAILS, machine

UPDATE_TARGET_MB = 250.0
# The update's CPU against the build alone's in the same run: parsing the feeds is all it adds.
UPDATE_CPU_GOAL = 1.2
MB = 1e6


def split_set(trails: str, out_dir: str, feeds: int) -> tuple[int, list[str]]:
    """The set's trails, round-robin into `feeds` one-trail-per-line files: (rows, file names)."""
    from collections import Counter

    from trailsdb.sources import read_source
    names = ["list%02d.txt" % i for i in range(feeds)]
    handles = [open(os.path.join(out_dir, n), "w", encoding="utf-8", errors="surrogateescape") for n in names]
    rows = 0
    try:
        for h in handles:
            h.write("# a part of %s, for bench/update.py\n" % os.path.basename(trails))
        for raw in read_source(trails, Counter()):
            trail = raw.trail.strip()
            if not trail or "\n" in trail or trail.startswith("#"):
                continue
            handles[rows % feeds].write(trail + "\n")
            rows += 1
    finally:
        for h in handles:
            h.close()
    return rows, names


class _Quiet(http.server.SimpleHTTPRequestHandler):
    """Serves the lists; with `validators` off it neither sends Last-Modified nor answers 304, so
    an update downloads and rebuilds everything (the worst case)."""

    validators = True

    def log_message(self, *args):
        pass

    def send_head(self):
        if not self.validators:
            del self.headers["If-Modified-Since"]
        return super().send_head()

    def send_header(self, keyword, value):
        if self.validators or keyword.lower() != "last-modified":
            super().send_header(keyword, value)


def serve(directory: str) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = lambda *a, **kw: _Quiet(*a, directory=directory, **kw)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, httpd.server_address[1]


def command() -> str:
    script = os.path.join(os.path.dirname(sys.executable), "maltrail-engine")
    if not os.path.exists(script):
        raise SystemExit("bench.update: the package is not installed in this interpreter's environment (%s)" % script)
    return script


def measure(args: list[str], env: dict) -> dict:
    """Runs the command; its wall time, the process tree's peak RSS and its output's last line."""
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    start = time.monotonic()
    proc = subprocess.Popen(args, stdout=out, stderr=err, env=env)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    text, errors = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        sys.stderr.write(text + errors)
        raise SystemExit("bench.update: %s failed (exit %d)" % (" ".join(args[1:3]), proc.returncode))
    # ru_maxrss (kB) of a waited-for child covers it and every descendant it waited for.
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss": usage.ru_maxrss * 1024,
            "last": text.strip().splitlines()[-1]}


def _trails_of(artifact: str) -> int:
    from matchers import Artifact
    a = Artifact.open(artifact, verify=False)
    try:
        return a.trail_count
    finally:
        a.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench update", description=__doc__.split("\n\n")[0])
    p.add_argument("--trails", default=DEFAULT_TRAILS, help="trail set to serve and build (default: %(default)s)")
    p.add_argument("--feeds", type=int, default=8, help="lists the set is split into (default 8)")
    p.add_argument("--runs", type=int, default=1, help="fresh processes per figure (default 1; the median is shown)")
    p.add_argument("--json", help="also write the raw numbers here")
    args = p.parse_args(argv)
    if not os.path.exists(args.trails):
        print("bench.update: skipped: " + MISSING_TRAILS % args.trails)
        return 0
    work = tempfile.mkdtemp(prefix="bench-update-")
    # The installed command is what is measured: no PYTHONPATH (which would put a checkout's
    # packages before the installed ones), and no proxy between it and the local server.
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy") and k != "PYTHONPATH"}
    env["no_proxy"] = "127.0.0.1"
    results = {"machine": machine(), "feeds": args.feeds, "trails_file": args.trails,
               "build": [], "update": [], "update_again": [], "update_unchanged": []}
    try:
        served = os.path.join(work, "served")
        os.mkdir(served)
        sys.stderr.write("bench.update: splitting %s into %d lists\n" % (args.trails, args.feeds))
        rows, names = split_set(args.trails, served, args.feeds)
        results["rows"] = rows
        httpd, port = serve(served)
        try:
            for run in range(args.runs):
                base = os.path.join(work, "run%d" % run)
                os.mkdir(base)
                built = os.path.join(base, "built", "trails.mtdb")
                results["build"].append(measure([command(), "trails", "build", "--source", args.trails,
                                                 "-o", built, "-c", os.devnull], env))
                results["build"][-1]["trails"] = _trails_of(built)
                conf = os.path.join(base, "m.toml")
                urls = ", ".join('"http://127.0.0.1:%d/%s"' % (port, n) for n in names)
                with open(conf, "w") as f:
                    f.write('[all]\ntrails_artifact = "%s"\nfeeds_dir = "%s"\ndisabled_feeds = ["all"]\n'
                            "custom_trails_url = [%s]\n" % (os.path.join(base, "out", "trails.mtdb"),
                                                              os.path.join(base, "feeds"), urls))
                for key in ("update", "update_unchanged", "update_again"):
                    # The first downloads everything (and keeps the validators it was sent), the
                    # second gets a 304 for every list, the third is sent no validators and no
                    # 304: it downloads and rebuilds everything again.
                    _Quiet.validators = key != "update_again"
                    sys.stderr.write("bench.update: run %d: %s\n" % (run + 1, key))
                    results[key].append(measure([command(), "trails", "update", "-c", conf], env))
                    results[key][-1]["trails"] = _trails_of(os.path.join(base, "out", "trails.mtdb"))
                shutil.rmtree(base)
        finally:
            httpd.shutdown()
            httpd.server_close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    m = results["machine"]
    lines = ["trail update: %d rows of %s in %d lists; %s, %s, %d CPUs (%s)"
             % (results["rows"], os.path.basename(args.trails), args.feeds, m["python"], m["arch"], m["nproc"],
                m["cpu"]),
             "%-46s %7s %7s %8s %12s %9s" % ("", "wall s", "CPU s", "x build", "peak RSS MB", "trails")]
    base_cpu = statistics.median(r["cpu_s"] for r in results["build"])
    for key, label in (("build", "build only (trails build), the baseline"),
                       ("update", "update: fetch + merge + build, first"),
                       ("update_unchanged", "update, every list unchanged (304)"),
                       ("update_again", "update again: re-fetch + rebuild over it")):
        wall = statistics.median(r["wall_s"] for r in results[key])
        cpu = statistics.median(r["cpu_s"] for r in results[key])
        rss = statistics.median(r["peak_rss"] for r in results[key]) / MB
        lines.append("%-46s %7.1f %7.1f %8.2f %12.0f %9d" % (label, wall, cpu, cpu / base_cpu, rss,
                                                            results[key][0]["trails"]))
    lines.append("(x build: CPU seconds over the build's)")
    worst = max(r["peak_rss"] for key in ("update", "update_again") for r in results[key]) / MB
    lines.append("update peak RSS %.0f MB: %s the %.0f MB target" % (worst, "within" if worst <= UPDATE_TARGET_MB
                                                                    else "OVER", UPDATE_TARGET_MB))
    ratio = max(statistics.median(r["cpu_s"] for r in results[key]) for key in ("update", "update_again")) / base_cpu
    lines.append("update CPU %.2f x the build's: %s the %.1f x goal" % (ratio, "within" if ratio <= UPDATE_CPU_GOAL
                                                                      else "OVER", UPDATE_CPU_GOAL))
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
