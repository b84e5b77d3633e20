"""Getting the sensor a usable trail artifact.

Owns what `--trails PATH` and `[all] trails_artifact` may name (a compiled artifact, a Maltrail
trails.csv, a directory of Maltrail static trail files), compiling the latter once into a cache
keyed by the source's identity, and the fail-closed rule: no usable trails and no explicit
opt-in is an error that says how to get trails.

Must not decode packets or write events.
"""

from __future__ import annotations

import hashlib
import os

from matchers import Artifact, ArtifactError, TrailMatchers
from matchers.artifact import MAGIC

CACHE_DIR_ENV = "MALTRAIL_ENGINE_CACHE"


class TrailsUnavailable(Exception):
    """No usable trails; the message says what was tried and how to fix it."""


def _is_artifact(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def cache_dir() -> str:
    base = os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "maltrail-engine")
    os.makedirs(base, exist_ok=True)
    return base


def _source_identity(path: str) -> str:
    """Changes whenever the source (or any file in a source directory) changes."""
    h = hashlib.sha256(os.path.abspath(path).encode())
    if os.path.isdir(path):
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                st = os.stat(os.path.join(dirpath, name))
                h.update(("%s/%s %d %d\n" % (dirpath, name, st.st_size, st.st_mtime_ns)).encode())
    else:
        st = os.stat(path)
        h.update(("%d %d" % (st.st_size, st.st_mtime_ns)).encode())
    return h.hexdigest()[:24]


def compiled_path_for(source: str, min_prefix: tuple[int, int] | None = None) -> tuple[str, bool]:
    """(artifact path, whether it must be built) for a trails.csv or static trail directory,
    compiled with `min_prefix` (None: the build's default), which is part of the cache key."""
    identity = _source_identity(source) + ("" if min_prefix is None else "-p%d-%d" % tuple(min_prefix))
    path = os.path.join(cache_dir(), "src-%s.mtdb" % identity)
    return path, not os.path.exists(path)


def resolve_artifact(path: str, allow_no_trails: bool, log=print,
                     min_prefix: tuple[int, int] | None = None) -> str:
    """The artifact to load for `path` (compiling a source first, keeping range trails no wider
    than `min_prefix` allows); raises TrailsUnavailable."""
    if path and os.path.exists(path):
        if _is_artifact(path):
            artifact_path = path
        else:
            from trailsdb.compile import build  # only when a source must be compiled
            from trailsdb.sources import SourceError
            artifact_path, needed = compiled_path_for(path, min_prefix)
            if needed:
                log("[i] compiling trails from %s (cached as %s)" % (path, artifact_path))
                options = {} if min_prefix is None else {"min_prefix": min_prefix}
                try:
                    report = build([path], artifact_path, **options)
                except (SourceError, ArtifactError) as exc:
                    raise TrailsUnavailable(str(exc)) from None
                # the summary, and every kind of rejected trail with its reason
                for line in report.lines()[:1] + [line for line in report.lines() if line.startswith("rejected ")]:
                    log("[i] %s" % line)
        try:
            artifact = Artifact.open(artifact_path)
        except ArtifactError as exc:
            raise TrailsUnavailable(str(exc)) from None
        count = artifact.trail_count
        artifact.close()
        if count or allow_no_trails:
            return artifact_path
        problem = "%s holds no trails" % path
    else:
        problem = "no trails at %s" % (path or "(no path configured)")
    if not allow_no_trails:
        raise TrailsUnavailable(
            "%s. Get trails first: `maltrail-engine trails build --source /path/to/trails.csv` "
            "(Maltrail's trails.csv or a directory of its static trail files; set [all] trail_sources "
            "in maltrail.toml to make it the default), or pass --trails PATH. To run on heuristics "
            "alone, pass --allow-no-trails (or set [sensor] allow_no_trails = true)." % problem)
    return empty_artifact()


def resolve_trails(path: str, allow_no_trails: bool, log=print,
                   min_prefix: tuple[int, int] | None = None) -> TrailMatchers:
    return TrailMatchers.load(Artifact.open(resolve_artifact(path, allow_no_trails, log, min_prefix)))


def empty_artifact() -> str:
    from trailsdb.compile import build
    path = os.path.join(cache_dir(), "empty.mtdb")
    if not os.path.exists(path):
        build([], path)
    return path
