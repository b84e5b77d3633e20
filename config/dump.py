"""`maltrail-engine check-config`'s printer: the effective configuration as TOML.

Owns `dump_config` (every key in schema order, each value written by its type's rules in
config/values.py, with a trailing comment saying where it came from) and `comment_text`, which
makes any text safe inside a TOML comment.  Loading the printed text gives the same values.

Must not: validate (a Config is valid by construction), read files, or print anything itself.
"""

from __future__ import annotations

from config.load import COMMAND_LINE, ORIGIN_DEFAULT, ORIGIN_FILE, ORIGIN_FLAG, Config, location
from config.schema import iter_keys

__all__ = ["dump_config", "comment_text"]


def comment_text(text: str) -> str:
    """`text` made safe inside a TOML comment."""
    # A newline in a path would end the comment and corrupt the TOML that follows.
    return "".join("?" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)


def _note(cfg: Config, section: str, key: str) -> str:
    origin = cfg.origin(section, key)
    if origin == ORIGIN_FLAG:
        return COMMAND_LINE
    if origin == ORIGIN_FILE:
        return "file " + comment_text(location(cfg.path, cfg.lines[(section, key)]))
    return ORIGIN_DEFAULT


def _line(key: str, spec, value) -> str:
    if spec.secret and value:
        # A secret is never printed: the key stays commented out (so the output still loads,
        # without the secret), and the line says it is set.
        return "# %s = (set, not shown)" % key
    return "%s = %s" % (key, spec.rules.dump(value))


def dump_config(cfg: Config) -> str:
    """The effective configuration as TOML: every key, in schema order, each with a trailing
    comment saying where its value came from.  Loading the output gives the same values."""
    if cfg.path:
        source_line = "# configuration file: %s" % comment_text(cfg.path)
    else:
        source_line = "# configuration file: none (built-in defaults)"
    out = [
        "# maltrail-engine effective configuration",
        source_line,
        "# precedence: command-line flags, then the file, then built-in defaults",
    ]
    rows = [(section, _line(key, spec, cfg.value(section, key)), _note(cfg, section, key))
            for section, key, spec in iter_keys()]
    # Align the comments, but let a long value (a list, a regex) push its own comment out rather
    # than every line's.
    width = min(60, max(len(text) for _s, text, _n in rows))
    current = None
    for section, text, note in rows:
        if section != current:
            out += ["", "[%s]" % section]
            current = section
        out.append("%s  # %s" % (text.ljust(width), note))
    return "\n".join(out) + "\n"
