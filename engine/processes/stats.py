"""Run statistics: merging what the processes report, and saying it in lines.

Owns the counters' shape across processes (a worker's counters are workers.pipeline
WorkerCounters.as_dict(); the capture process and the log writer report their own), how they add
up, the periodic one-line status and the summary every run ends with. Must not count anything
itself.
"""

from __future__ import annotations

from collections import Counter


def empty_counters() -> dict:
    return {"frames": 0, "decoded": 0, "skipped": {}, "extracted": {}, "events": {}, "condensed": 0,
            "dropped": {}, "saturation": {}}


def merge_counters(parts) -> dict:
    """Sums worker counters; `first_batch_unix` is the earliest non-zero one."""
    total = empty_counters()
    firsts = [p.get("first_batch_unix") for p in parts if p.get("first_batch_unix")]
    if firsts:
        total["first_batch_unix"] = min(firsts)
    sums = {"skipped": Counter(), "extracted": Counter(), "events": Counter(), "dropped": Counter(),
            "saturation": Counter()}
    for part in parts:
        total["frames"] += part.get("frames", 0)
        total["decoded"] += part.get("decoded", 0)
        total["condensed"] += part.get("condensed", 0)
        for key, counter in sums.items():
            counter.update(part.get(key, {}))
    for key, counter in sums.items():
        total[key] = dict(counter)
    return total


def _events_text(events: dict) -> str:
    return ", ".join("%s %d" % kv for kv in sorted(events.items(), key=lambda kv: (-kv[1], kv[0])))


def stats_line(counters: dict, capture: dict, engine: dict) -> str:
    """One line for the periodic status of a running engine."""
    parts = ["frames %d" % capture.get("frames", counters["frames"])]
    kernel = capture.get("kernel")
    if kernel:
        parts.append("kernel received %d, dropped %d" % (kernel.get("received", 0),
                                                        kernel.get("dropped", 0) + kernel.get("if_dropped", 0)))
    drops = capture.get("ring_drop_frames") or []
    if any(drops):
        parts.append("ring drops " + " ".join("w%d:%d" % (i, n) for i, n in enumerate(drops)))
    processed = engine.get("processed") or []
    if processed:
        parts.append("processed " + " ".join("w%d:%d" % (i, n) for i, n in enumerate(processed)))
    skipped = counters["skipped"]
    text = "decoded %d, skipped %d" % (counters["decoded"], sum(skipped.values()))
    if skipped:
        text += " (%s)" % ", ".join("%s %d" % kv for kv in sorted(skipped.items(), key=lambda kv: -kv[1]))
    parts.append(text)
    parts.append("events: %s" % (_events_text(counters["events"]) or "none"))
    deaths = sum(engine.get("deaths") or [])
    if deaths:
        parts.append("worker deaths %d (at most %d frames lost)" % (deaths, sum(engine.get("lost_frames") or [])))
    return "; ".join(parts)


def summary_lines(counters: dict, elapsed: float, cpu: float, log_dir: str, capture: dict | None = None,
                  engine: dict | None = None) -> list[str]:
    capture = capture or {}
    engine = engine or {}
    elapsed = max(elapsed, 1e-9)
    frames = counters["frames"]
    lines = ["frames: %d in %.2f s wall, %.2f s CPU (%.0f frames/s)" % (frames, elapsed, cpu, frames / elapsed),
             "decoded: %d; skipped: %d" % (counters["decoded"], sum(counters["skipped"].values()))]
    for reason, n in sorted(counters["skipped"].items(), key=lambda kv: -kv[1]):
        lines.append("  skipped %-50s %d" % (reason, n))
    if counters["extracted"]:
        lines.append("extracted: " + ", ".join("%s %d" % kv for kv in sorted(counters["extracted"].items())))
    total = sum(counters["events"].values())
    lines.append("events: %d" % total + (" (%s)" % _events_text(counters["events"]) if total else ""))
    if counters.get("condensed"):
        lines.append("  repeats folded into per-source records (noise control): %d" % counters["condensed"])
    dropped = {k: v for k, v in (counters.get("dropped") or {}).items() if v}
    if dropped:
        lines.append("  events dropped by controls: " + ", ".join("%s %d" % kv for kv in sorted(dropped.items())))
    saturated = {k: v for k, v in (counters.get("saturation") or {}).items() if v}
    if saturated:
        lines.append("heuristic state at its caps: " + ", ".join("%s %d" % kv for kv in sorted(saturated.items())))
    processed = engine.get("processed") or []
    if len(processed) > 1:
        lines.append("workers: %d; frames per worker: %s" % (len(processed), " ".join(str(n) for n in processed)))
    kernel = capture.get("kernel")
    if kernel:
        lines.append("kernel: received %d, dropped %d, interface dropped %d"
                     % (kernel.get("received", 0), kernel.get("dropped", 0), kernel.get("if_dropped", 0)))
    drops = capture.get("ring_drop_frames") or []
    if any(drops):
        lines.append("ring full, frames dropped: " + " ".join("w%d:%d" % (i, n) for i, n in enumerate(drops)))
    deaths = engine.get("deaths") or []
    if any(deaths):
        lines.append("worker deaths: %s; frames lost with them (at most): %s"
                     % (" ".join("w%d:%d" % (i, n) for i, n in enumerate(deaths)),
                        " ".join("w%d:%d" % (i, n) for i, n in enumerate(engine.get("lost_frames") or []))))
    for note in engine.get("notes", []):
        lines.append(note)
    if capture.get("headers_only") or capture.get("whole_frames"):
        lines.append("published as headers alone: %d frames%s" % (
            capture.get("headers_only", 0), "; every frame whole since a certificate flight from the higher port"
            if capture.get("whole_frames") else ""))
    if capture.get("timeline_breaks"):
        lines.append("timeline breaks (files older than the ones before them): %d" % capture["timeline_breaks"])
    if capture.get("truncated_records"):
        lines.append("capture files ended inside a record: %d" % capture["truncated_records"])
    for note in (capture.get("notes") or [])[:10]:
        lines.append("  note: %s" % note)
    for problem in capture.get("unreadable") or []:
        lines.append("unreadable: %s" % problem)
    lines.append("log: %s" % log_dir)
    return lines
