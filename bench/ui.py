"""Web UI benchmark: time to the first complete dashboard, server side and in a real browser, and
the page's weight.

`python -m bench ui [--day-events N] [--month-events N] [--month-days D] [--runs R] [--cache DIR]
[--json PATH] [--ready-timeout-s S] [--no-browser]`

Two stores: "day" holds --day-events (default 1,000,000) events in one day, "month" holds
--month-events (default 10,000,000) over --month-days (30). They are filled through the SQLite
store's own `ingest` (the server's intake path: the daily log written and fsync'd, then the
index), with bench/server_query.py's seeded synthetic events, and kept in --cache
(bench/out/cache/ by default) with a marker saying what they hold, so a rerun reuses them; the
build's wall and CPU time are printed when a store is built. Then for each store a real
`maltrail-engine server` is started on it (loopback, a free port, a user made for the run, its
state database in a temporary directory so the cached store is not changed) and measured:

(a) server time: the calls the dashboard makes for the range, each timed alone over HTTP with a
    session (the first call after the start, then the median of --runs), and the six fired at
    once as the browser fires them: /api/v1/counts by type,severity (hourly buckets for a day,
    daily beyond two days), /api/v1/top of sources, destinations and trails, /api/v1/threats'
    first page (--threats-limit, 50) with a sparkline (--spark, 24 slices), /api/v1/sensors.
    Baseline, in the same run: /api/v1/session (HTTP, the session check and JSON, no store).
(b) browser time: Playwright for Python driving Debian's chromium (never a downloaded browser),
    logged in through the API in the browser context, loads `/#/dashboard?from=...&to=...` in a
    fresh context per run and waits until `document.documentElement.dataset.state == "ready"`
    (the app sets it when every panel has its data). Wall time from the navigation to ready, and
    the page's own performance.now() then. Baseline, in the same run: the same page for a day
    with no events. Skipped, saying why, when Playwright or chromium is missing or the page never
    becomes ready within --ready-timeout-s (a server without the UI).
(c) page weight: every response the page loaded, by kind; the static assets' bytes (decoded, and
    as sent) against the 300 KB target; the API answers' bytes beside them.

Results as JSON (--json) and one human line per figure. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

os.environ["TZ"] = "UTC"       # day files are named by the local date: make it the store's zone
time.tzset()

from bench.server_query import DAY0_S, DAY_US, Pools, generate  # noqa: E402
from bench.trails import PROJECT_ROOT, machine  # noqa: E402

DEFAULT_CACHE = os.path.join(PROJECT_ROOT, "bench", "out", "cache")
CACHE_FORMAT = 1              # bump when what a cached store holds changes
DAY_TARGET_S = 1.0            # the target for the day's first complete dashboard
WEIGHT_TARGET_BYTES = 300_000  # all the page's assets
USER, PASSWORD = "bench", "bench-ui-password"
ASSET_KINDS = ("document", "stylesheet", "script", "image", "font", "manifest", "media", "other")
START_LIMIT_S = 600           # a month's store is checked (and repaired) at the server's start


def _day(us: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(us / 1e6))


# ---- the stores -------------------------------------------------------------------------------

def build_store(path: str, n: int, days: int, seed: int) -> dict:
    """A store of n events over `days` days from DAY0, built once and reused (the marker file,
    written last, says it is complete and what it holds)."""
    marker = os.path.join(path, "bench-ui.json")
    want = {"format": CACHE_FORMAT, "events": n, "days": days, "seed": seed, "day0_s": DAY0_S}
    try:
        with open(marker) as f:
            if json.load(f).get("holds") == want:
                return {"built": False, **want}
    except (OSError, ValueError):
        pass
    shutil.rmtree(path, ignore_errors=True)          # an interrupted or different build
    os.makedirs(path, mode=0o700)
    from server.store.sqlite import SqliteStore
    store = SqliteStore(os.path.join(path, "store"))
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        for chunk in generate(Pools(), n, DAY0_S * 1_000_000, days * DAY_US, seed):
            store.ingest(chunk)
    finally:
        store.close()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    with open(marker, "w") as f:
        json.dump({"holds": want, "build_wall_s": wall, "build_cpu_s": cpu, "bytes": size}, f)
    return {"built": True, "build_wall_s": wall, "build_cpu_s": cpu, "bytes": size, **want}


# ---- the server -------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "maltrail-engine")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-c", "import sys; from cli import main; sys.exit(main(sys.argv[1:]))"]


class Server:
    """`maltrail-engine server` on a cached store: loopback, a free port, a user for the run, its
    state database and configuration in a temporary directory (the store is not changed)."""

    def __init__(self, store_dir: str, work: str):
        from server.auth.users import make_user_line
        self.port = _free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.dir = tempfile.mkdtemp(prefix="server-", dir=work)
        lines = ["[server]", 'http_address = "127.0.0.1"', "http_port = %d" % self.port, "udp_port = 0",
                 "log_dir = %s" % json.dumps(store_dir),
                 "state_db = %s" % json.dumps(os.path.join(self.dir, "state.sqlite")),
                 "users = [%s]" % json.dumps(make_user_line(USER, PASSWORD, 0, ""))]
        if os.geteuid() == 0:
            lines.append('user = "root"')   # the cache may sit under a directory only root may enter
        self.config = os.path.join(self.dir, "server.toml")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.log_path = os.path.join(self.dir, "server.log")
        self.proc = None

    def start(self) -> float:
        """Start it; the seconds until it answered."""
        t0 = time.perf_counter()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(_command() + ["server", "-c", self.config], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._log, env=dict(os.environ, TZ="UTC"))
        limit = time.monotonic() + START_LIMIT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited: %s" % open(self.log_path, errors="replace").read()[-2000:])
            try:
                with urllib.request.urlopen(self.url + "/api/v1/health", timeout=10) as r:
                    health = json.loads(r.read())
                if health["store"].get("index_lag_events", 0) == 0:
                    return time.perf_counter() - t0
            except (OSError, ValueError):
                pass
            if time.monotonic() > limit:
                raise RuntimeError("the server did not answer within %d s" % START_LIMIT_S)
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Client:
    """An API client with a session (cookie jar), as the browser holds one."""

    def __init__(self, url: str):
        self.url = url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        request = urllib.request.Request(url + "/api/v1/login", method="POST",
                                         data=json.dumps({"username": USER, "password": PASSWORD}).encode(),
                                         headers={"Content-Type": "application/json"})
        with self.opener.open(request, timeout=60) as r:
            r.read()

    def get(self, path: str) -> tuple[int, int, float, bool]:
        """(status, answer bytes, milliseconds, whether the answer says it was cut: "partial")
        of one GET."""
        t0 = time.perf_counter()
        try:
            with self.opener.open(self.url + path, timeout=600) as r:
                body, status = r.read(), r.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        took_ms = (time.perf_counter() - t0) * 1000
        try:
            partial = bool(json.loads(body).get("partial"))
        except (ValueError, AttributeError):
            partial = False
        return status, len(body), took_ms, partial


def dashboard_calls(first_us: int, end_us: int, threats_limit: int, spark: int) -> list[tuple[str, str]]:
    """The calls the dashboard makes for the range [first_us, end_us) (whole days)."""
    rng = "from=%s&to=%s" % (_day(first_us), _day(end_us - 1))
    bucket = "hour" if end_us - first_us <= 2 * DAY_US else "day"
    return [
        ("counts by type,severity", "/api/v1/counts?%s&by=type,severity&bucket=%s" % (rng, bucket)),
        ("top sources", "/api/v1/top?%s&field=src_ip&n=10" % rng),
        ("top destinations", "/api/v1/top?%s&field=dst_ip&n=10" % rng),
        ("top trails", "/api/v1/top?%s&field=trail&n=10" % rng),
        ("threats, first page + spark", "/api/v1/threats?%s&limit=%d&spark=%d" % (rng, threats_limit, spark)),
        ("sensors", "/api/v1/sensors"),
    ]


def measure_server(client: Client, calls, runs: int) -> dict:
    out = {"baseline": {}, "calls": {}, "together": {}}
    base = [client.get("/api/v1/session") for _ in range(max(runs, 3))]
    out["baseline"] = {"call": "/api/v1/session", "median_ms": statistics.median(b[2] for b in base),
                       "status": base[-1][0]}
    for name, path in calls:
        first = client.get(path)
        rest = [client.get(path) for _ in range(runs)]
        out["calls"][name] = {"path": path, "status": first[0], "bytes": first[1], "first_ms": first[2],
                              "median_ms": statistics.median(r[2] for r in rest), "max_ms": max(r[2] for r in rest),
                              "statuses": sorted({first[0]} | {r[0] for r in rest}),
                              "partial": any(r[3] for r in [first] + rest)}
    threats = "threats, first page + spark"
    if out["calls"].get(threats, {}).get("status", 200) != 200:
        # A server whose threats route does not take `spark` yet: time the page without it, so
        # the figure is there, and use that in the six at once (said in the output).
        path = out["calls"][threats]["path"].rsplit("&spark=", 1)[0]
        first = client.get(path)
        rest = [client.get(path) for _ in range(runs)]
        out["calls"]["threats, first page, no spark"] = {
            "path": path, "status": first[0], "bytes": first[1], "first_ms": first[2],
            "median_ms": statistics.median(r[2] for r in rest), "max_ms": max(r[2] for r in rest),
            "statuses": sorted({first[0]} | {r[0] for r in rest}), "instead_of": threats,
            "partial": any(r[3] for r in [first] + rest)}
        calls = [(name, path if name == threats else p) for name, p in calls]
        out["together"]["threats_without_spark"] = True
    walls = []
    for _ in range(runs):           # the six at once, as the page fires them
        results = [None] * len(calls)

        def one(i, path):
            results[i] = client.get(path)
        threads = [threading.Thread(target=one, args=(i, path)) for i, (_, path) in enumerate(calls)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        walls.append((time.perf_counter() - t0) * 1000)
    out["together"].update(median_ms=statistics.median(walls), max_ms=max(walls))
    return out


# ---- the browser ------------------------------------------------------------------------------

def browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright; never `playwright install`)"
    if not shutil.which("chromium"):
        return "Debian's chromium is not installed (apt-get install chromium)"
    return None


def measure_browser(url: str, ranges: list[tuple[str, str, str]], runs: int, ready_timeout_s: float) -> dict:
    """For each (label, from, to): `runs` loads of the dashboard in fresh contexts; the time to
    ready and what the page loaded. Returns {"skipped": reason} when it cannot measure."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright
    out = {}
    with sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []   # chromium's sandbox refuses root
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=args)
        try:
            for label, first, last in ranges:
                loads = []
                for _ in range(runs):
                    context = browser.new_context(viewport={"width": 1280, "height": 720})
                    try:
                        context.request.post(url + "/api/v1/login", data={"username": USER, "password": PASSWORD})
                        page = context.new_page()
                        responses = []
                        page.on("requestfinished", lambda request: responses.append(request))
                        t0 = time.perf_counter()
                        answer = page.goto("%s/#/dashboard?from=%s&to=%s" % (url, first, last),
                                           wait_until="commit")
                        if answer is not None and answer.status != 200:
                            return {"skipped": "the server answers GET / with HTTP %d: it serves no UI yet"
                                               % answer.status}
                        try:
                            # A selector, not wait_for_function: the page's CSP forbids the eval
                            # that a string predicate needs, so that would never see it ready.
                            page.wait_for_selector('html[data-state="ready"]', state="attached",
                                                   timeout=ready_timeout_s * 1000)
                        except PlaywrightError:
                            return {"skipped": "the page at %s/ never became ready (document.documentElement."
                                               "dataset.state == \"ready\") within %g s: no UI on this server yet, "
                                               "or it failed" % (url, ready_timeout_s)}
                        wall_ms = (time.perf_counter() - t0) * 1000
                        page_ms = page.evaluate("performance.now()")
                        page.wait_for_load_state("networkidle")
                        loads.append({"wall_ms": wall_ms, "page_ms": page_ms, "weight": _weight(responses)})
                    finally:
                        context.close()
                out[label] = {"runs": loads, "median_wall_ms": statistics.median(x["wall_ms"] for x in loads),
                              "median_page_ms": statistics.median(x["page_ms"] for x in loads),
                              "weight": loads[0]["weight"]}
        finally:
            browser.close()
    return out


def _weight(requests) -> dict:
    """Bytes by kind of what the page loaded: decoded bodies, and as sent (encoded) where known."""
    kinds: dict[str, dict] = {}
    for request in requests:
        response = request.response()
        if response is None:
            continue
        try:
            decoded = len(response.body())
        except Exception:       # a body the browser no longer holds (a redirect, an aborted load)
            decoded = 0
        sent = request.sizes().get("responseBodySize", decoded)
        kind = "api" if "/api/" in request.url else request.resource_type
        k = kinds.setdefault(kind, {"files": 0, "bytes": 0, "bytes_sent": 0})
        k["files"] += 1
        k["bytes"] += decoded
        k["bytes_sent"] += sent if sent >= 0 else decoded
    assets = {k: v for k, v in kinds.items() if k != "api" and k in ASSET_KINDS + ("fetch", "xhr")}
    return {"by_kind": kinds, "asset_bytes": sum(v["bytes"] for v in assets.values()),
            "asset_bytes_sent": sum(v["bytes_sent"] for v in assets.values()),
            "api_bytes": kinds.get("api", {}).get("bytes", 0)}


# ---- the run ----------------------------------------------------------------------------------

def run_size(label: str, n: int, days: int, args, work: str, results: dict) -> None:
    store_dir = os.path.join(args.cache, "ui-sqlite-%s-%d-%dd-s%d" % (label, n, days, args.seed))
    built = build_store(store_dir, n, days, args.seed)
    if built["built"]:
        print("%s: built %d events over %d day(s) through the store's ingest: %.1f s wall, %.1f s CPU "
              "(%.0f events/s), %.0f MB; cached in %s" % (label, n, days, built["build_wall_s"], built["build_cpu_s"],
                                                         n / max(built["build_wall_s"], 1e-9), built["bytes"] / 1e6,
                                                         store_dir), flush=True)
    else:
        print("%s: %d events over %d day(s), reused from %s" % (label, n, days, store_dir), flush=True)
    first_us = DAY0_S * 1_000_000
    end_us = first_us + days * DAY_US
    server = Server(os.path.join(store_dir, "store"), work)
    entry = {"events": n, "days": days, "store": built}
    results["sizes"][label] = entry
    try:
        entry["server_start_s"] = server.start()
        client = Client(server.url)
        entry["server"] = measure_server(client, dashboard_calls(first_us, end_us, args.threats_limit, args.spark),
                                         args.runs)
        s = entry["server"]
        base = s["baseline"]["median_ms"]
        print("  server (a), median of %d after a first call; baseline %s %.1f ms:" % (args.runs,
                                                                                       s["baseline"]["call"], base))
        for name, c in s["calls"].items():
            bad = "" if c["statuses"] == [200] else "  HTTP %s" % ",".join(map(str, c["statuses"]))
            bad += "  PARTIAL (cut by the server's time budget or row cap)" if c["partial"] else ""
            print("    %-30s first %8.1f ms, median %8.1f ms (x%.0f baseline), %d bytes%s"
                  % (name, c["first_ms"], c["median_ms"], c["median_ms"] / max(base, 1e-9), c["bytes"], bad))
        print("    %-30s median %8.1f ms, worst %8.1f ms%s" % (
            "the six at once", s["together"]["median_ms"], s["together"]["max_ms"],
            " (threats without spark)" if s["together"].get("threats_without_spark") else ""), flush=True)
        if args.no_browser:
            entry["browser"] = {"skipped": "--no-browser"}
        elif results["browser_missing"]:
            entry["browser"] = {"skipped": results["browser_missing"]}
        else:
            empty = _day(first_us - 30 * DAY_US)     # a day the store holds nothing for: the baseline
            entry["browser"] = measure_browser(server.url, [("empty day (baseline)", empty, empty),
                                                            (label, _day(first_us), _day(end_us - 1))],
                                               args.runs, args.ready_timeout_s)
        b = entry["browser"]
        if "skipped" in b:
            print("  browser (b), page weight (c): skipped: %s" % b["skipped"], flush=True)
        else:
            base_ms = b["empty day (baseline)"]["median_wall_ms"]
            mine = b[label]
            target = " (target <= %.0f ms: %s)" % (DAY_TARGET_S * 1000, "met" if mine["median_wall_ms"] <=
                                                    DAY_TARGET_S * 1000 else "MISSED") if days == 1 else ""
            print("  browser (b): first complete dashboard %.0f ms wall (page's clock %.0f ms), x%.2f the empty "
                  "day's %.0f ms%s" % (mine["median_wall_ms"], mine["median_page_ms"],
                                       mine["median_wall_ms"] / max(base_ms, 1e-9), base_ms, target))
            w = mine["weight"]
            print("  page weight (c): assets %d bytes decoded, %d as sent (target <= %d: %s); API answers %d bytes; "
                  "by kind %s" % (w["asset_bytes"], w["asset_bytes_sent"], WEIGHT_TARGET_BYTES,
                                  "met" if w["asset_bytes"] <= WEIGHT_TARGET_BYTES else "MISSED", w["api_bytes"],
                                  ", ".join("%s %d/%d" % (k, v["files"], v["bytes"])
                                            for k, v in sorted(w["by_kind"].items()))), flush=True)
    finally:
        server.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench ui", description=__doc__.split("\n\n")[0])
    ap.add_argument("--day-events", type=int, default=1_000_000, help="events in the one-day store (0: skip)")
    ap.add_argument("--month-events", type=int, default=10_000_000, help="events in the many-day store (0: skip)")
    ap.add_argument("--month-days", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3, help="repeats of each figure, median taken (default 3)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threats-limit", type=int, default=50, help="the threat list's first page (default 50)")
    ap.add_argument("--spark", type=int, default=24, help="sparkline slices per threat (default 24)")
    ap.add_argument("--cache", default=DEFAULT_CACHE, help="where built stores are kept (default bench/out/cache)")
    ap.add_argument("--json", help="also write every figure here")
    ap.add_argument("--ready-timeout-s", type=float, default=60.0,
                    help="how long the page may take to become ready before the browser part is skipped")
    ap.add_argument("--no-browser", action="store_true", help="the server's side only")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.month_days < 1:
        ap.error("--runs and --month-days must be at least 1")
    info = machine()
    print("ui: %s, %d CPUs (%s), %s; SQLite store" % (info["arch"], info["nproc"], info["cpu"], info["python"]))
    results = {"machine": info, "runs": args.runs, "sizes": {}, "browser_missing": browser_missing(),
               "targets": {"day_dashboard_ms": DAY_TARGET_S * 1000, "page_weight_bytes": WEIGHT_TARGET_BYTES}}
    os.makedirs(args.cache, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench-ui-")
    try:
        for label, n, days in (("day", args.day_events, 1), ("month", args.month_events, args.month_days)):
            if n > 0:
                run_size(label, n, days, args, work, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
