"""The `maltrail-engine` command line.

Owns argument parsing, turning flags into configuration overrides, and dispatching to the
subcommands: (none) run the sensor on the configured interfaces, `replay`, `tail`,
`trails build|update|stats|check`, `check-config`, `server user add`, `server sensor add` and `demo`. Exit status: 0 success, 1 a runtime
failure (capture, trails), 2 a usage or configuration error. Errors are one clear line on stderr.

Must not decode packets or know file layouts; it wires the parts together.
"""

from __future__ import annotations

import argparse
import os
import sys

from config import (
    ConfigError, apply_overrides, default_config_path, dump_config, load_config, parse_flag_value,
    resolved_sensor_name, toml_value,
)

# flag dest -> (section, key)
_OVERRIDES = {
    "log_dir": ("all", "log_dir"),
    "trails": ("all", "trails_artifact"),
    "interface": ("sensor", "interface"),
    "capture_filter": ("sensor", "capture_filter"),
    "snaplen": ("sensor", "snaplen_bytes"),
    "sensor_name": ("sensor", "sensor_name"),
    "allow_no_trails": ("sensor", "allow_no_trails"),
    "promiscuous": ("sensor", "promiscuous"),
    "workers": ("sensor", "workers"),
    "capture_buffer": ("sensor", "capture_buffer_bytes"),
    "console": ("sensor", "console"),
}


_S = argparse.SUPPRESS
# Every flag that overrides a configuration key, declared once with its help; each command takes
# the ones that mean something to it, so `replay --help` shows no capture flags.
_FLAGS = {
    "config": (("-c", "--config"), dict(
        metavar="FILE", help="configuration file (default: $MALTRAIL_ENGINE_CONFIG, then "
                             "/etc/maltrail-engine/maltrail.toml, then built-in defaults)")),
    "log_dir": (("--log-dir",), dict(dest="log_dir", metavar="DIR",
                                     help="event log directory (default: [all] log_dir)")),
    "trails": (("--trails",), dict(
        metavar="PATH", help="compiled trail artifact, Maltrail trails.csv or static trail directory "
                             "(default: [all] trails_artifact)")),
    "sensor_name": (("--sensor-name",), dict(
        dest="sensor_name", metavar="NAME", help="name written into every event (default: [sensor] sensor_name, "
                                                 "else the host name)")),
    "allow_no_trails": (("--allow-no-trails",), dict(
        dest="allow_no_trails", action="store_const", const=True,
        help="start even without usable trails (heuristics only)")),
    "interface": (("-i", "--interface"), dict(
        metavar="IFACE[,IFACE...]", help='interface(s) to capture on (default: [sensor] interface, "any")')),
    "capture_filter": (("--filter",), dict(
        dest="capture_filter", metavar="BPF",
        help='capture filter; "default" keeps what detection needs, "" keeps everything '
             '(default: [sensor] capture_filter)')),
    "snaplen": (("--snaplen",), dict(type=int, metavar="BYTES",
                                     help="bytes kept of each frame (default: [sensor] snaplen_bytes)")),
    "promiscuous": (("--no-promisc",), dict(dest="promiscuous", action="store_const", const=False,
                                            help="do not put the interfaces in promiscuous mode")),
    "capture_buffer": (("--capture-buffer",), dict(
        dest="capture_buffer", type=int, metavar="BYTES",
        help="kernel capture buffer per interface (default: [sensor] capture_buffer_bytes)")),
    "workers": (("--workers",), dict(
        metavar="N|auto", help="worker processes (default: [sensor] workers; auto = one per CPU but one)")),
    "console": (("--console",), dict(
        dest="console", action="store_const", const=True,
        help="also print every event on stderr as it is detected, as Maltrail's line (coloured by severity on "
             "a terminal unless NO_COLOR is set; default: [sensor] console)")),
}
_LIVE_FLAGS = ("config", "log_dir", "trails", "sensor_name", "allow_no_trails", "interface", "capture_filter",
               "snaplen", "promiscuous", "capture_buffer", "workers", "console")
_REPLAY_FLAGS = ("config", "log_dir", "trails", "sensor_name", "allow_no_trails", "workers", "snaplen", "console")


def _flags(parser: argparse.ArgumentParser, *names: str) -> None:
    for name in names:
        flags, options = _FLAGS[name]
        parser.add_argument(*flags, default=_S, **options)


def _package_version() -> str:
    # Every start names the version (the banner, /metrics, the forwarders' headers). Read here
    # from the one installed distribution beside this package when there is exactly one:
    # importlib.metadata would import email, zipfile and csv first (~17 ms of every start, in
    # every process forked after it). Anything else (an editable install, several copies) asks
    # importlib.metadata.
    site = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        found = [name for name in os.listdir(site)
                 if name.startswith("maltrail_engine-") and name.endswith(".dist-info")]
        if len(found) == 1:
            with open(os.path.join(site, found[0], "METADATA"), encoding="utf-8") as f:
                for line in f:
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
                    if not line.strip():
                        break  # the headers end at the first empty line
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("maltrail-engine")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def _version() -> str:
    return "maltrail-engine %s (Python %s)" % (_package_version(), sys.version.split()[0])


def _indicator(text: str) -> str:
    """argparse type of `trails check INDICATOR`: a usage error unless it is one."""
    from trailsdb.check import IndicatorError, parse_indicator
    try:
        parse_indicator(text)
    except IndicatorError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maltrail-engine",
        description="Network sensor: matches traffic against Maltrail trails and writes compressed "
                    "event logs. Without a subcommand it captures on the configured interfaces.")
    parser.add_argument("-V", "--version", action="version", version=_version(),
                        help="print the version and exit")
    _flags(parser, *_LIVE_FLAGS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("replay", help="replay pcap/pcapng files through the sensor",
                       description="Replay capture files through the sensor's processes and print a summary.")
    _flags(p, *_REPLAY_FLAGS)
    p.add_argument("pcaps", nargs="+", metavar="PCAP", help="pcap or pcapng files, read in order")
    p.add_argument("--reader", choices=("native", "libpcap"), default="native",
                   help="capture file reader (native reads pcapng with mixed interfaces, which libpcap refuses)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary")
    p.add_argument("--stats-json", metavar="FILE", help="also write the run's statistics to FILE as JSON")
    p.add_argument("--reference", action="store_true",
                   help="run the plain-Python reference paths (capture and judgement) instead of the C ones "
                        "(differential runs, benchmarks)")

    p = sub.add_parser("tail", help="print events from the log")
    _flags(p, "config", "log_dir")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new events (after the last 10, unless -n or --since says otherwise)")
    p.add_argument("-n", "--lines", metavar="N", default=None,
                   help="print only the last N events (of those --since/--until select); without -n, "
                        "tail prints them all and tail -f the last 10")
    p.add_argument("--since", metavar="T", help="e.g. 2026-11-24, '2026-11-24 10:00', 2h, 30m")
    p.add_argument("--until", metavar="T", help="only events before T (same forms as --since)")
    p.add_argument("--format", choices=("maltrail", "json", "csv"), default="maltrail",
                   help="maltrail: Maltrail's event line (default); json: one object per line; csv: with a header")

    trails = sub.add_parser("trails", help="build and inspect trail artifacts")
    tsub = trails.add_subparsers(dest="trails_command", metavar="ACTION")
    p = tsub.add_parser("build", help="compile trail sources into the artifact")
    _flags(p, "config")
    p.add_argument("--source", action="append", metavar="PATH",
                   help="trails.csv or static trail directory (repeatable; default: [all] trail_sources)")
    p.add_argument("--custom-dir", metavar="DIR", help="custom trails directory (default: [all] custom_trails_dir)")
    p.add_argument("--whitelist", metavar="FILE", help="whitelist file (default: [all] whitelist_file)")
    p.add_argument("-o", "--output", metavar="FILE", help="artifact to write (default: [all] trails_artifact)")
    p.add_argument("--force", action="store_true",
                   help="replace the artifact even when the new build holds less than half its trails")
    p = tsub.add_parser("update", help="one trail update: fetch the feeds, merge, build, publish",
                        description="Fetch every enabled feed (keeping the last good copy of one that fails) and "
                                    "the custom_trails_url lists, merge them with [all] trail_sources and "
                                    "custom_trails_dir, build and publish [all] trails_artifact atomically. Exit 0 "
                                    "when an artifact was published or the sources were unchanged, 1 when the "
                                    "update failed and the current artifact was kept.")
    _flags(p, "config")
    p.add_argument("--offline", action="store_true",
                   help="fetch nothing: static and custom trails plus each feed's last good copy")
    p.add_argument("--force", action="store_true",
                   help="rebuild even when nothing changed, accept a feed or a build that shrank by more than half")
    p = tsub.add_parser("stats", help="describe an artifact")
    _flags(p, "config")
    p.add_argument("artifact", nargs="?", help="the artifact to describe (default: [all] trails_artifact)")
    p = tsub.add_parser("check", help="which trails would match an indicator, and why")
    _flags(p, "config", "trails")
    p.add_argument("indicator", type=_indicator, metavar="INDICATOR",
                   help="IP, IP:port, [IPv6]:port, domain, host/path URL, or ua:USER-AGENT")

    p = sub.add_parser("check-config", help="check the configuration and this host, and print the effective values",
                       description="Validate the configuration, print the effective values and where each came "
                                   "from, then check this host as a start would: the trail artifact, the control "
                                   "files, the interfaces, the capture filter, the capture privileges and the log "
                                   "directory. Exit 2 for a configuration error, 1 for a problem of this host.")
    _flags(p, *_LIVE_FLAGS)
    p.add_argument("--config-only", action="store_true",
                   help="validate the configuration alone, not this host (for a file meant for another host)")

    p = sub.add_parser("config", help="convert configuration files")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    p = csub.add_parser("import", help="write the maltrail.toml equivalent to a Maltrail maltrail.conf",
                        description="Carry every option of a Maltrail maltrail.conf over to the maltrail.toml key "
                                    "that stands for it, or name it as not applicable, with why.")
    p.add_argument("maltrail_conf", metavar="MALTRAIL_CONF", help="Maltrail's configuration file (maltrail.conf)")
    p.add_argument("-o", "--output", default="maltrail.toml", metavar="FILE",
                   help="where to write (default: ./maltrail.toml; - for standard output)")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")

    p = sub.add_parser("server", help="run the event server (UDP intake, store, HTTP)",
                       description="Run the event server: receive Maltrail sensors' UDP events, store them "
                                   "in [server] log_dir with an index, and answer over HTTP.")
    _flags(p, "config")
    ssub = p.add_subparsers(dest="server_command", metavar="ACTION")
    p = ssub.add_parser("reindex", help="rebuild the index of [server] log_dir from its event logs "
                                        "(the server must be stopped)")
    # Also after the action; SUPPRESS keeps an absent flag here from hiding one given before it.
    p.add_argument("-c", "--config", dest="config", metavar="FILE", default=argparse.SUPPRESS,
                   help="configuration file (as before the action)")
    users = ssub.add_parser("user", help="users of the web interface and API")
    usub = users.add_subparsers(dest="user_command", metavar="ACTION")
    p = usub.add_parser("add", help="make a [server] users line with a new argon2id password hash",
                        description="Ask for the password twice (no echo) and print the line to add to "
                                    "[server] users in maltrail.toml. When standard input is not a terminal, "
                                    "one line is read from it as the password (for scripts). An empty "
                                    "password is refused.")
    p.add_argument("name", metavar="NAME", help="user name: letters, digits, _ . @ + - (at most 64)")
    p.add_argument("--uid", type=int, default=0, metavar="N",
                   help="0-999 administer, 1000 and above only view (default: 0)")
    p.add_argument("--netfilter", default="", metavar="NETS",
                   help='addresses, CIDRs and a-b ranges the user may see, comma separated (default: "", everything)')
    sensors = ssub.add_parser("sensor", help="keys of our sensors sending to this server")
    sesub = sensors.add_subparsers(dest="sensor_command", metavar="ACTION")
    p = sesub.add_parser("add", help="issue a key for a sensor; printed once, stored hashed in [server] state_db")
    _flags(p, "config")
    p.add_argument("name", metavar="NAME", help="the sensor's name ([sensor] sensor_name)")

    p = sub.add_parser("demo", help="generate a demo capture and trail set, replay it, show the events; "
                                    "on a terminal, also serve them on a local server until Ctrl-C",
                       description="Build the demo's trails, replay its capture and show the events. Run from a "
                                   "terminal it then starts a server on loopback, feeds it the events through the "
                                   "sensor's server link, prints the URL and a login, and replays the capture "
                                   "again every few seconds until Ctrl-C, which stops everything it started.")
    p.add_argument("--out", default="demo-out", metavar="DIR", help="where to write (default: ./demo-out)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true",
                      help="only replay and show the events, then exit (the default when stdin is not a terminal)")
    mode.add_argument("--serve", action="store_true", help="start the server even when stdin is not a terminal")
    p.add_argument("--port", type=int, default=0, metavar="N", help="the server's HTTP port (default: a free one)")
    p.add_argument("--every-s", dest="every_s", type=float, default=10.0, metavar="S",
                   help="served: replay the capture again every S seconds (default: 10)")
    return parser


def _config(args):
    path = getattr(args, "config", None) or default_config_path()
    cfg = load_config(path)
    overrides = {}
    for dest, key in _OVERRIDES.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[key] = parse_flag_value(*key, value) if isinstance(value, str) and key == ("sensor", "workers") else value
    return apply_overrides(cfg, overrides) if overrides else cfg


def _fail(message: str, code: int) -> int:
    sys.stderr.write("maltrail-engine: %s\n" % message)
    return code


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "tail":
            return _tail(args)
        if args.command == "trails":
            if args.trails_command is None:
                parser.parse_args(["trails", "--help"])
            return {"build": _trails_build, "update": _trails_update, "stats": _trails_stats,
                    "check": _trails_check}[args.trails_command](args)
        if args.command == "demo":
            from cli.demo import run_demo
            serve = args.serve or (not args.once and sys.stdin.isatty())
            if not 0 <= args.port <= 65535 or not args.every_s > 0:
                return _fail("demo: --port must be 0-65535 and --every-s above 0", 2)
            return run_demo(args.out, serve=serve, port=args.port, every_s=args.every_s)
        if args.command == "server":
            from cli import server_auth
            if args.server_command == "user" and getattr(args, "user_command", None) == "add":
                return server_auth.user_add(args)
            if args.server_command == "sensor" and getattr(args, "sensor_command", None) == "add":
                return server_auth.sensor_add(args, _config(args))
            if args.server_command in ("user", "sensor"):
                parser.parse_args(["server", args.server_command, "--help"])
        if args.command == "config":
            if args.config_command is None:
                parser.parse_args(["config", "--help"])
            return _config_import(args)
        cfg = _config(args)
        if args.command == "server":
            from server.process import run_reindex, run_server
            return run_reindex(cfg) if args.server_command == "reindex" else run_server(cfg)
        if args.command == "check-config":
            sys.stdout.write(dump_config(cfg))
            return 0 if args.config_only else _check_host(cfg)
        if args.command == "replay":
            return _replay(args, cfg)
        return _live(cfg, getattr(args, "config", None) or default_config_path(), getattr(args, "trails", None))
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _log(message: str) -> None:
    sys.stderr.write(message + "\n")


def _min_prefix(cfg) -> tuple[int, int]:
    """The shortest (IPv4, IPv6) prefixes a range trail may have ([all] min_trail_prefix_v4/_v6)."""
    return cfg.all.min_trail_prefix_v4, cfg.all.min_trail_prefix_v6


def _load_matchers(cfg):
    from engine.trail_artifact import TrailsUnavailable, resolve_trails
    try:
        return resolve_trails(cfg.all.trails_artifact, cfg.sensor.allow_no_trails, log=_log,
                              min_prefix=_min_prefix(cfg))
    except TrailsUnavailable as exc:
        _fail(str(exc), 1)
        return None


def _run_engine(cfg, mode: str, paths=(), reader: str = "native", quiet: bool = False,
                stats_json: str | None = None, reference: bool = False, update=None) -> int:
    """Replay or live capture through the capture, worker and log-writer processes."""
    from engine.processes.child import auto_workers
    from engine.trail_artifact import TrailCopy, TrailsUnavailable, resolve_artifact
    s = cfg.sensor
    try:
        artifact = resolve_artifact(cfg.all.trails_artifact, s.allow_no_trails, log=_log,
                                    min_prefix=_min_prefix(cfg))
    except TrailsUnavailable as exc:
        return _fail(str(exc), 1)
    if mode == "live":
        # The capture checks run before anything starts: a bad interface, filter or privilege is
        # one line, not a started-and-failed sensor with an empty summary.
        from engine.preflight import capture_findings
        problems = ["%s: %s" % (f.what, f.problem) for f in capture_findings(cfg) if f.problem]
        if problems:
            return _fail("cannot capture: %s" % "; ".join(problems), 1)

    def reload_source() -> str:  # SIGHUP: the configured trails as they are now
        return resolve_artifact(cfg.all.trails_artifact, False, log=_log, min_prefix=_min_prefix(cfg))

    # The workers' private copy of the trails is made on a thread of its own while the rest of
    # the engine is imported and set up: ~35 ms of `sendfile` off the path to the first packet.
    # It is checked by the supervisor (Engine._start).
    pending_copy = TrailCopy.copy_on_thread(artifact)

    def fail(text: str, code: int) -> int:
        pending_copy.discard()
        return _fail(text, code)

    from engine.processes.supervisor import Engine, EngineError
    from engine.control_files import ControlsError, heuristic_settings, read_controls
    try:
        controls = read_controls(cfg)
    except ControlsError as exc:
        return fail(str(exc), 2)

    from engine.processes import privileges
    from engine.processes.forwarder import destinations_from_config, position_names
    from events.record import SeverityRule
    forward_to = destinations_from_config(cfg)
    try:
        account = privileges.resolve_account(s.user, notice=lambda text: _log("[i] " + text))
    except privileges.PrivilegeError as exc:
        return fail(str(exc), 2)
    stats_file = None
    if stats_json:
        # Opened now: a path that cannot be written fails before the run, and the supervisor,
        # which gives up its capabilities once its children run, still holds it at the end.
        try:
            stats_file = open(stats_json, "w")
        except OSError as exc:
            return fail("cannot write --stats-json %s: %s" % (stats_json, exc.strerror or exc), 2)
    bpf_text = s.capture_filter
    if mode == "live" and bpf_text == "default":
        bpf_text = "default (DNS, UDP, ICMP, TCP handshakes, TLS and HTTP starts)"
    engine = Engine(mode=mode, workers=auto_workers() if s.workers == "auto" else s.workers,
                    artifact_path=artifact, sensor=resolved_sensor_name(cfg), log_dir=cfg.all.log_dir,
                    condense_window_s=s.condense_window_s, ring_bytes_per_worker=s.ring_bytes,
                    stats_interval_s=s.stats_interval_s, paths=paths, reader=reader,
                    snaplen_bytes=s.snaplen_bytes, interfaces=s.interface, promiscuous=s.promiscuous,
                    buffer_bytes=s.capture_buffer_bytes, bpf_filter=s.capture_filter, reload_source=reload_source,
                    reference=reference, heuristics=heuristic_settings(cfg), controls=controls,
                    controls_source=lambda: read_controls(cfg), account=account, drop_privileges=True,
                    bpf_text=bpf_text,
                    # The console's lines and a progress bar would share one terminal line: the console wins.
                    progress=mode == "replay" and not quiet and sys.stderr.isatty() and not s.console,
                    forward_to=forward_to, version=_package_version(), severity=SeverityRule(cfg.all.severity_regex),
                    console=s.console, spool=position_names(forward_to) if s.disable_local_log_storage else [],
                    stats_address=s.stats_address,
                    update=update(artifact, account) if update is not None else None, pending_copy=pending_copy)
    try:
        code = engine.run()
    except EngineError as exc:
        if stats_file is not None:
            stats_file.close()
        return _fail(str(exc), exc.code)
    if mode == "replay" and engine.capture_stats.get("unreadable"):
        # A capture file given was not read to its end (not a capture, a read error, refused by
        # libpcap): the other files were replayed, but the status says not everything was judged.
        code = code or 1
    lost_note = None
    if mode == "replay" and sum(engine.lost_frames):
        # A replay is a measurement: frames that were never judged make it wrong, and say so.
        code = code or 1
        lost_note = ("maltrail-engine: at most %d frame(s) were lost with %d worker death(s); the events of the "
                     "rest are in the log" % (sum(engine.lost_frames), sum(engine.deaths)))
    if not quiet or code:
        for line in engine.summary_lines():
            sys.stderr.write(line + "\n")
    if lost_note:
        _log(lost_note)
    if stats_file is not None:
        import json
        with stats_file:
            json.dump(engine.report(), stats_file, indent=1, sort_keys=True)
    return code


def _replay(args, cfg) -> int:
    missing = [p for p in args.pcaps if not os.path.exists(p)]
    if missing:
        return _fail("no such capture file: %s" % ", ".join(missing), 2)
    return _run_engine(cfg, "replay", paths=args.pcaps, reader=args.reader, quiet=args.quiet,
                       stats_json=args.stats_json, reference=args.reference)


def _live(cfg, config_path: str | None, trails_flag: str | None) -> int:
    def update(artifact: str, account):
        return _update_spec(cfg, config_path, trails_flag, artifact, account)
    return _run_engine(cfg, "live", update=update)


def _update_spec(cfg, config_path: str | None, trails_flag: str | None, artifact: str, account):
    """What the running sensor's trail updates run (engine/processes/updater.py), or None when
    this run cannot update itself: the update publishes [all] trails_artifact of the config file,
    so a sensor running other trails (--trails, a trails.csv compiled into the cache) is not
    updated, and says why."""
    from engine.processes.updater import UpdateSpec
    if trails_flag is not None or os.path.abspath(artifact) != os.path.abspath(cfg.all.trails_artifact):
        import time
        _log("[i] %s trail updates are off in this run: the sensor runs %s, not the artifact [all] trails_artifact "
             "names, which an update publishes" % (time.strftime("%Y-%m-%d %H:%M:%S"), artifact))
        return None
    args = ("trails", "update") + (("--config", os.path.abspath(config_path)) if config_path else ())
    period = cfg.all.update_period_s
    return UpdateSpec(main, args, offline_args=("--offline",), period_s=0 if period == "off" else period,
                      timeout_s=cfg.all.update_timeout_s, custom_dir=cfg.all.custom_trails_dir, account=account,
                      # what `trails update` imports; "idna": the codec host names are looked up with
                      preload=("trailsdb.update", "trailsdb.remote", "trailsdb.feeds.refresh", "events.fsafety", "encodings.idna"))


def _check_host(cfg) -> int:
    """check-config's checks of this host: each one a comment line on stdout (so the output stays
    a loadable maltrail.toml), each problem also a line on stderr; 1 when there is any."""
    from config import comment_text
    from engine.preflight import deployment_findings
    findings = deployment_findings(cfg)
    out = ["", "# this host, checked as a start would check it (--config-only skips this):"]
    for finding in findings:
        out.append("#   %-4s %s: %s" % ("ok" if finding.ok else "FAIL", finding.what,
                                         comment_text(finding.detail if finding.ok else finding.problem)))
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()
    problems = [finding for finding in findings if not finding.ok]
    for finding in problems:
        _fail("check-config: %s: %s" % (finding.what, finding.problem), 1)
    return 1 if problems else 0


def _config_import(args) -> int:
    from config.maltrail_conf import ConfImportError, import_conf, write_toml
    try:
        result = import_conf(args.maltrail_conf)
        to_stdout = args.output == "-"
        if to_stdout:
            sys.stdout.write(result.toml)
        else:
            write_toml(result, args.output, force=args.force)
    except ConfImportError as exc:
        for problem in exc.problems:
            _fail(problem, 2)
        return 2
    report = sys.stderr if to_stdout else sys.stdout
    lines = ["%s from %s" % ("maltrail.toml" if to_stdout else "wrote " + args.output, args.maltrail_conf),
             "carried over (%d):" % len(result.carried)]
    lines += ["  %s -> [%s] %s = %s%s" % (c.source, c.section, c.key, toml_value(c.value),
                                         "".join("; %s" % note for note in c.notes)) for c in result.carried]
    if result.not_applicable or result.unknown:
        lines.append("not applicable (%d):" % (len(result.not_applicable) + len(result.unknown)))
        lines += ["  %s (line %d): %s" % item for item in result.not_applicable]
        lines += ["  %s (line %d): not an option of Maltrail's known to this import" % item for item in result.unknown]
    lines += ["note: %s" % note for note in result.notes]
    if not to_stdout:
        lines.append("check it, and this host, with: maltrail-engine check-config -c %s" % args.output)
    report.write("\n".join(lines) + "\n")
    return 0


def _tail(args) -> int:
    from events.tail import run_tail
    log_dir = getattr(args, "log_dir", None)
    if not log_dir:
        log_dir = load_config(getattr(args, "config", None) or default_config_path()).all.log_dir
    return run_tail(log_dir, follow=args.follow, since=args.since, until=args.until, fmt=args.format,
                    lines=args.lines)


def _trails_build(args) -> int:
    from trailsdb.compile import build
    from trailsdb.sources import SourceError
    from trailsdb.update import build_inputs
    from matchers import ArtifactError
    cfg = load_config(getattr(args, "config", None) or default_config_path())
    inputs = build_inputs(cfg, sources=args.source, custom_dir=args.custom_dir, whitelist_file=args.whitelist,
                          output=args.output)
    output = inputs.output
    if not inputs.sources and not inputs.custom_dir:
        return _fail("no trail sources: pass --source PATH (a Maltrail trails.csv or static trail "
                     "directory) or set [all] trail_sources in maltrail.toml", 2)
    from events.fsafety import directory_problem
    problem = directory_problem(os.path.dirname(os.path.abspath(output)))
    if problem:
        return _fail("refusing to write %s: %s" % (output, problem), 1)
    try:
        report = build(inputs.sources, output, custom_dir=inputs.custom_dir, whitelist_file=inputs.whitelist_file,
                       min_prefix=inputs.min_prefix, force=args.force, progress=sys.stderr.isatty(),
                       disabled_info_regex=inputs.disabled_info_regex)
    except (SourceError, ArtifactError) as exc:
        return _fail(str(exc), 1)
    except OSError as exc:
        return _fail("cannot write %s: %s" % (output, exc.strerror or exc), 1)
    sys.stdout.write("\n".join(report.lines()) + "\n")
    return 0


def _trails_update(args) -> int:
    """`trails update`: the failed feeds (and the offline / no network line) as process lines on
    stderr as they happen, then the build report and a one-line summary on stdout."""
    from events.fsafety import directory_problem
    from trailsdb.feeds.refresh import stderr_log
    from trailsdb.update import run_update
    cfg = load_config(getattr(args, "config", None) or default_config_path())
    if cfg.sensor.update_server:    # the trails come signed from a server (trailsdb/remote.py)
        from trailsdb.remote import download_update
        from trailsdb.update import fetch_settings
        got = download_update(cfg.sensor.update_server, cfg.sensor.update_server_key, cfg.all.trails_artifact,
                              fetch_settings(cfg), stderr_log, directory_problem)
        sys.stdout.write(("update: " if got.ok else "update FAILED: ") + got.summary() + "\n")
        return 0 if got.ok else 1
    report = run_update(cfg, offline=args.offline, force=args.force, log=stderr_log,
                        directory_problem=directory_problem)
    lines = report.build.lines() if report.build is not None else []
    lines.append(("update: " if report.ok else "update FAILED: ") + report.summary())
    sys.stdout.write("\n".join(lines) + "\n")
    return 0 if report.ok else 1


def _trails_stats(args) -> int:
    from matchers import Artifact, ArtifactError
    from trailsdb.provenance import source_lines
    cfg = load_config(getattr(args, "config", None) or default_config_path())
    path = args.artifact or cfg.all.trails_artifact
    try:
        artifact = Artifact.open(path)
        sources = source_lines(artifact, getattr(cfg.all, "feeds_dir", ""))
    except ArtifactError as exc:
        return _fail(str(exc), 1)
    import time as _time
    info = artifact.info
    out = ["artifact: %s" % path,
           "generation: %d, built %s" % (artifact.generation, _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(artifact.created_s))),
           "trails: %d" % artifact.trail_count]
    for kind, n in sorted(info.get("by_kind", {}).items(), key=lambda kv: -kv[1]):
        out.append("  %-12s %9d" % (kind, n))
    out += sources
    for reason, n in sorted(info.get("rejected", {}).items()):
        out.append("rejected at build: %d %s" % (n, reason))
    for reason, n in sorted(info.get("dropped", {}).items()):
        out.append("dropped at build: %d %s" % (n, reason))
    if info.get("whitelisted"):
        out.append("removed by whitelist: %d" % info["whitelisted"])
    out.append("file size: %.1f MB; sections: %s" % (
        os.path.getsize(path) / 1e6,
        ", ".join("%s %.1f MB" % (k, v / 1e6) for k, v in sorted(artifact.section_sizes().items(), key=lambda kv: -kv[1])[:6])))
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def _trails_check(args) -> int:
    from trailsdb.check import explain
    cfg = _config(args)
    matchers = _load_matchers(cfg)
    if matchers is None:
        return 1
    from matchers import ArtifactError
    try:
        matched, lines = explain(matchers, args.indicator, with_provenance=True)
    except ArtifactError as exc:
        return _fail(str(exc), 1)
    sys.stdout.write("\n".join(lines) + "\n")
    return 0 if matched else 3


if __name__ == "__main__":
    sys.exit(main())
