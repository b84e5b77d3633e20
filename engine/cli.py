"""The `maltrail-engine` command line.

Owns argument parsing, turning flags into configuration overrides, and dispatching to the
subcommands: (none) run the sensor on the configured interfaces, `replay`, `tail`,
`trails build|stats|check`, `check-config` and `demo`. Exit status: 0 success, 1 a runtime
failure (capture, trails), 2 a usage or configuration error. Errors are one clear line on stderr.

Must not decode packets or know file layouts; it wires the parts together.
"""

from __future__ import annotations

import argparse
import os
import sys

from engine.config import (
    ConfigError, apply_overrides, default_config_path, dump_config, load_config, parse_flag_value,
    resolved_sensor_name,
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
}


def _common(parser: argparse.ArgumentParser, capture: bool = True) -> None:
    s = argparse.SUPPRESS
    parser.add_argument("-c", "--config", default=s, metavar="FILE",
                        help="configuration file (default: $MALTRAIL_ENGINE_CONFIG, then "
                             "/etc/maltrail-engine/maltrail.toml, then built-in defaults)")
    parser.add_argument("--log-dir", dest="log_dir", default=s, metavar="DIR", help="event log directory")
    parser.add_argument("--trails", default=s, metavar="PATH",
                        help="compiled trail artifact, Maltrail trails.csv or static trail directory")
    parser.add_argument("--sensor-name", dest="sensor_name", default=s, metavar="NAME")
    parser.add_argument("--allow-no-trails", dest="allow_no_trails", action="store_const", const=True, default=s,
                        help="start even without usable trails")
    if capture:
        parser.add_argument("-i", "--interface", default=s, metavar="IFACE[,IFACE...]")
        parser.add_argument("--filter", dest="capture_filter", default=s, metavar="BPF", help="capture filter")
        parser.add_argument("--snaplen", type=int, default=s, metavar="BYTES")
        parser.add_argument("--no-promisc", dest="promiscuous", action="store_const", const=False, default=s)
        parser.add_argument("--capture-buffer", dest="capture_buffer", type=int, default=s, metavar="BYTES",
                            help="kernel capture buffer per interface")
        parser.add_argument("--workers", default=s, metavar="N|auto",
                            help="worker processes (default: [sensor] workers; auto = one per CPU but one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maltrail-engine",
        description="Network sensor: matches traffic against Maltrail trails and writes compressed "
                    "event logs. Without a subcommand it captures on the configured interfaces.")
    _common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("replay", help="replay pcap/pcapng files through the sensor")
    _common(p)
    p.add_argument("pcaps", nargs="+", metavar="PCAP")
    p.add_argument("--reader", choices=("native", "libpcap"), default="native",
                   help="capture file reader (native reads pcapng with mixed interfaces, which libpcap refuses)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary")
    p.add_argument("--stats-json", metavar="FILE", help="also write the run's statistics to FILE as JSON")
    p.add_argument("--reference", action="store_true",
                   help="run the plain-Python reference paths (capture and judgement) instead of the C ones "
                        "(differential runs, benchmarks)")

    p = sub.add_parser("tail", help="print events from the log")
    p.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="FILE")
    p.add_argument("--log-dir", dest="log_dir", default=argparse.SUPPRESS, metavar="DIR")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("--since", metavar="T", help="e.g. 2026-11-24, '2026-11-24 10:00', 2h, 30m")
    p.add_argument("--until", metavar="T")
    p.add_argument("--format", choices=("maltrail", "json", "csv"), default="maltrail")

    trails = sub.add_parser("trails", help="build and inspect trail artifacts")
    tsub = trails.add_subparsers(dest="trails_command", metavar="ACTION")
    p = tsub.add_parser("build", help="compile trail sources into the artifact")
    p.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="FILE")
    p.add_argument("--source", action="append", metavar="PATH",
                   help="trails.csv or static trail directory (repeatable; default: [all] trail_sources)")
    p.add_argument("--custom-dir", metavar="DIR", help="custom trails directory (default: [all] custom_trails_dir)")
    p.add_argument("--whitelist", metavar="FILE", help="whitelist file (default: [all] whitelist_file)")
    p.add_argument("-o", "--output", metavar="FILE", help="artifact to write (default: [all] trails_artifact)")
    p.add_argument("--force", action="store_true",
                   help="replace the artifact even when the new build holds less than half its trails")
    p = tsub.add_parser("stats", help="describe an artifact")
    p.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="FILE")
    p.add_argument("artifact", nargs="?", help="default: [all] trails_artifact")
    p = tsub.add_parser("check", help="which trails would match an indicator, and why")
    _common(p, capture=False)
    p.add_argument("indicator", help="IP, IP:port, [IPv6]:port, domain, host/path URL, or ua:USER-AGENT")

    p = sub.add_parser("check-config", help="validate the configuration and print the effective values")
    _common(p)

    p = sub.add_parser("demo", help="generate a demo capture and trail set, replay it, show the events")
    p.add_argument("--out", default="demo-out", metavar="DIR", help="where to write (default: ./demo-out)")
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
            return {"build": _trails_build, "stats": _trails_stats, "check": _trails_check}[args.trails_command](args)
        if args.command == "demo":
            from engine.demo import run_demo
            return run_demo(args.out)
        cfg = _config(args)
        if args.command == "check-config":
            sys.stdout.write(dump_config(cfg))
            return 0
        if args.command == "replay":
            return _replay(args, cfg)
        return _live(cfg)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _log(message: str) -> None:
    sys.stderr.write(message + "\n")


def _load_matchers(cfg):
    from engine.trails import TrailsUnavailable, resolve_trails
    try:
        return resolve_trails(cfg.all.trails_artifact, cfg.sensor.allow_no_trails, log=_log)
    except TrailsUnavailable as exc:
        _fail(str(exc), 1)
        return None


def _run_engine(cfg, mode: str, paths=(), reader: str = "native", quiet: bool = False,
                stats_json: str | None = None, reference: bool = False) -> int:
    """Replay or live capture through the capture, worker and log-writer processes."""
    from engine.child import auto_workers
    from engine.supervisor import Engine, EngineError
    from engine.trails import TrailsUnavailable, resolve_artifact
    s = cfg.sensor
    try:
        artifact = resolve_artifact(cfg.all.trails_artifact, s.allow_no_trails, log=_log)
    except TrailsUnavailable as exc:
        return _fail(str(exc), 1)
    try:
        os.makedirs(cfg.all.log_dir, exist_ok=True)
    except OSError as exc:
        return _fail("cannot use log directory %s: %s" % (cfg.all.log_dir, exc.strerror or exc), 1)

    def reload_source() -> str:  # SIGHUP: the configured trails as they are now
        return resolve_artifact(cfg.all.trails_artifact, False, log=_log)

    from engine.controls import ControlsError, heuristic_settings, read_controls
    try:
        controls = read_controls(cfg)
    except ControlsError as exc:
        return _fail(str(exc), 2)

    engine = Engine(mode=mode, workers=auto_workers() if s.workers == "auto" else s.workers,
                    artifact_path=artifact, sensor=resolved_sensor_name(cfg), log_dir=cfg.all.log_dir,
                    condense_window_s=s.condense_window_s, ring_bytes_per_worker=s.ring_bytes,
                    stats_interval_s=s.stats_interval_s, paths=paths, reader=reader,
                    snaplen_bytes=s.snaplen_bytes, interfaces=s.interface, promiscuous=s.promiscuous,
                    buffer_bytes=s.capture_buffer_bytes, bpf_filter=s.capture_filter, reload_source=reload_source,
                    reference=reference, heuristics=heuristic_settings(cfg), controls=controls,
                    controls_source=lambda: read_controls(cfg))
    try:
        code = engine.run()
    except EngineError as exc:
        return _fail(str(exc), 2)
    if not quiet or code:
        for line in engine.summary_lines():
            sys.stderr.write(line + "\n")
    if stats_json:
        import json
        with open(stats_json, "w") as f:
            json.dump(engine.report(), f, indent=1, sort_keys=True)
    if mode == "replay" and engine.capture_stats.get("unreadable") and not engine.capture_stats.get("files"):
        return 1
    return code


def _replay(args, cfg) -> int:
    missing = [p for p in args.pcaps if not os.path.exists(p)]
    if missing:
        return _fail("no such capture file: %s" % ", ".join(missing), 2)
    return _run_engine(cfg, "replay", paths=args.pcaps, reader=args.reader, quiet=args.quiet,
                       stats_json=args.stats_json, reference=args.reference)


def _live(cfg) -> int:
    return _run_engine(cfg, "live")


def _tail(args) -> int:
    from engine.tail import run_tail
    log_dir = getattr(args, "log_dir", None)
    if not log_dir:
        log_dir = load_config(getattr(args, "config", None) or default_config_path()).all.log_dir
    return run_tail(log_dir, follow=args.follow, since=args.since, until=args.until, fmt=args.format)


def _trails_build(args) -> int:
    from trailsdb.compile import build
    from trailsdb.sources import SourceError
    from matchers import ArtifactError
    cfg = load_config(getattr(args, "config", None) or default_config_path())
    sources = args.source or list(cfg.all.trail_sources)
    custom = args.custom_dir if args.custom_dir is not None else cfg.all.custom_trails_dir
    whitelist = args.whitelist if args.whitelist is not None else cfg.all.whitelist_file
    output = args.output or cfg.all.trails_artifact
    if not sources and not custom:
        return _fail("no trail sources: pass --source PATH (a Maltrail trails.csv or static trail "
                     "directory) or set [all] trail_sources in maltrail.toml", 2)
    from engine.fsafety import directory_problem
    problem = directory_problem(os.path.dirname(os.path.abspath(output)))
    if problem:
        return _fail("refusing to write %s: %s" % (output, problem), 1)
    try:
        report = build(sources, output, custom_dir=custom, whitelist_file=whitelist, force=args.force,
                       progress=sys.stderr.isatty())
    except (SourceError, ArtifactError) as exc:
        return _fail(str(exc), 1)
    except OSError as exc:
        return _fail("cannot write %s: %s" % (output, exc.strerror or exc), 1)
    sys.stdout.write("\n".join(report.lines()) + "\n")
    return 0


def _trails_stats(args) -> int:
    from matchers import Artifact, ArtifactError
    path = args.artifact or load_config(getattr(args, "config", None) or default_config_path()).all.trails_artifact
    try:
        artifact = Artifact.open(path)
    except ArtifactError as exc:
        return _fail(str(exc), 1)
    import time as _time
    info = artifact.info
    out = ["artifact: %s" % path,
           "generation: %d, built %s" % (artifact.generation, _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(artifact.created_s))),
           "trails: %d" % artifact.trail_count]
    for kind, n in sorted(info.get("by_kind", {}).items(), key=lambda kv: -kv[1]):
        out.append("  %-12s %9d" % (kind, n))
    out.append("sources: %s" % (", ".join(info.get("sources", [])) or "none"))
    for reason, n in sorted(info.get("rejected", {}).items()):
        out.append("rejected at build: %d %s" % (n, reason))
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
    matched, lines = explain(matchers, args.indicator)
    sys.stdout.write("\n".join(lines) + "\n")
    return 0 if matched else 3


if __name__ == "__main__":
    sys.exit(main())
