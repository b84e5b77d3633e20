"""Reading maltrail.toml into a `Config`, and command-line values on top of it.

Owns reading the file (not found, unreadable, not UTF-8, a byte-order mark), TOML syntax errors
with their line and column, telling Maltrail's maltrail.conf apart from a broken TOML file, the
line index that puts a line number on each problem, validation against `SCHEMA` (every problem
in a file reported at once, each naming file, line, key, what was found and what is allowed),
the one rule that spans two keys, `Config` (the read-only result), command-line overrides and
where the file is looked for.

Must not: open interfaces, touch trail files or directories, resolve host names, or start
anything.  Paths are checked for form only; whether they exist is the business of the part
that uses them (a config written on one host is often checked on another).
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import socket
import tomllib
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from config.schema import SCHEMA, Key, iter_keys
from config.values import toml_value, type_name

__all__ = [
    "ENV_VAR", "SYSTEM_CONFIG_PATH", "ORIGIN_DEFAULT", "ORIGIN_FILE", "ORIGIN_FLAG", "COMMAND_LINE",
    "Config", "ConfigError", "load_config", "apply_overrides", "parse_flag_value", "check_value",
    "default_config_path", "resolved_sensor_name", "looks_like_maltrail_conf", "location",
]

ENV_VAR = "MALTRAIL_ENGINE_CONFIG"
SYSTEM_CONFIG_PATH = "/etc/maltrail-engine/maltrail.toml"

ORIGIN_DEFAULT = "default"
ORIGIN_FILE = "file"
ORIGIN_FLAG = "flag"
COMMAND_LINE = "command line"


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

class ConfigError(Exception):
    """An unusable configuration.  `problems` holds one line per problem found."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def location(source: str, line: int | None) -> str:
    """"FILE:LINE" for a message, or "FILE" when the line is not known."""
    return "%s:%d" % (source, line) if line else source


def _value_problem(at: str, section: str, key: str, value: Any, problem: str,
                   allowed: str) -> str:
    spec = SCHEMA.get(section, {}).get(key)
    # A secret (a webhook URL holds one) is not shown in a message either, even a wrong one.
    found = "(the value, not shown)" if spec is not None and spec.secret else _render_found(value)
    return "%s: [%s] %s = %s %s; allowed: %s" % (at, section, key, found, problem, allowed)


def _render_found(value: Any) -> str:
    try:
        text = toml_value(value)
    except TypeError:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _closest(name: str, candidates: list[str]) -> str | None:
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return match[0] if match else None


def _unknown_section(at: str, section: str) -> str:
    message = "%s: unknown section [%s]; known sections: %s" % (
        at, section, ", ".join("[%s]" % s for s in SCHEMA))
    hint = _closest(section, list(SCHEMA))
    return message + ("; did you mean [%s]?" % hint if hint else "")


def _unknown_key(at: str, section: str, key: str) -> str:
    known = list(SCHEMA[section])
    message = "%s: [%s] unknown key %s; known keys of [%s]: %s" % (
        at, section, key, section, ", ".join(known))
    homes = [s for s in SCHEMA if key in SCHEMA[s]]
    if homes:  # a real key, filed under the wrong header
        return message + "; %s belongs in [%s]" % (key, homes[0])
    hint = _closest(key, known)
    return message + ("; did you mean %s?" % hint if hint else "")


def check_value(section: str, key: str, value: Any) -> tuple[Any, str | None]:
    """(normalised value, None) when `value` is acceptable for [section] key, else (None, the
    problem and what is allowed); the rules a file's value is held to."""
    spec = SCHEMA[section][key]
    normalised, problem = spec.rules.check(spec, value)
    return (None, "%s; allowed: %s" % (problem, spec.allowed)) if problem else (normalised, None)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

# Values, origins and line numbers travel through loading as flat {(section, key): ...} maps;
# a Config is built from them once, at the end.
Values = dict[tuple[str, str], Any]


@dataclass(frozen=True, eq=False)
class _ConfigRecord:
    """What a Config holds besides its sections: where it came from, value by value."""

    path: str | None
    origins: Mapping[tuple[str, str], str] = field(repr=False)
    lines: Mapping[tuple[str, str], int | None] = field(repr=False)

    def origin(self, section: str, key: str) -> str:
        """"default", "file" or "flag" (the command line)."""
        return self.origins[(section, key)]

    def value(self, section: str, key: str) -> Any:
        """The value of [section] key; the same as `cfg.section.key`."""
        return getattr(getattr(self, section), key)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """{section: {key: value}} in schema order, lists as lists; a fresh copy."""
        out: dict[str, dict[str, Any]] = {}
        for section, key, _spec in iter_keys():
            value = self.value(section, key)
            out.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
        return out


def _section_type(section: str, keys: Mapping[str, Key]) -> type:
    # Frozen: a Config cannot be changed in place, not even by a new attribute (apply_overrides
    # makes a new one).  Not slots=True: on Python 3.11 a frozen slotted dataclass raises
    # TypeError instead of FrozenInstanceError when an unknown attribute is set.
    name = "".join(part.title() for part in section.split("_")) + "Section"
    return make_dataclass(name, list(keys), frozen=True, namespace={"__module__": __name__})


# Section name -> its record type: one field per key, in schema order.
SECTION_TYPES: dict[str, type] = {section: _section_type(section, keys) for section, keys in SCHEMA.items()}

# A section named like one of the record's own attributes would hide it (or be hidden): fail at
# import, not at a user's start.
_CLASHES = [s for s in SCHEMA if s in set(_ConfigRecord.__dataclass_fields__) | set(dir(_ConfigRecord))]
if _CLASHES:
    raise AssertionError("sections named like an attribute of Config: %s" % ", ".join(_CLASHES))

# One field per section after the record's own, built from SCHEMA so a section added there is
# here too.  eq=False keeps equality and hashing by identity, as they were; compare as_dict()
# to compare what two configurations say.
Config = make_dataclass("Config", list(SECTION_TYPES.items()), bases=(_ConfigRecord,), frozen=True,
                        eq=False, namespace={"__module__": __name__})
Config.__doc__ = """The effective configuration: read-only, one attribute per section.

    `cfg.sensor.snaplen_bytes`; lists are tuples.  `path` is the file it came from (None when
    only defaults were used); `origin(section, key)` says where a value came from and `lines`
    the line of the file that set it.
    """


def _config(path: str | None, values: Values, origins: dict, lines: dict) -> Config:
    sections = {section: SECTION_TYPES[section](**{key: values[(section, key)] for key in keys})
                for section, keys in SCHEMA.items()}
    return Config(path, MappingProxyType(dict(origins)), MappingProxyType(dict(lines)), **sections)


def _defaults() -> tuple[Values, dict, dict]:
    values = {(s, k): spec.default for s, k, spec in iter_keys()}
    return values, {key: ORIGIN_DEFAULT for key in values}, {key: None for key in values}


def _cross_check(values: Values, origins: dict, lines: dict, source: str | None) -> list[str]:
    """Problems of keys fine one by one that do not fit together."""
    problems = []
    # TLS cannot be served without a key and certificate; reported at use_ssl, the switch.
    if values[("server", "use_ssl")] and values[("server", "ssl_pem")] == "":
        if origins[("server", "use_ssl")] == ORIGIN_FLAG:
            at = COMMAND_LINE
        else:
            at = location(source, lines[("server", "use_ssl")]) if source else "defaults"
        problems.append(_value_problem(at, "server", "use_ssl", values[("server", "use_ssl")],
                                       "needs [server] ssl_pem to name a PEM file",
                                       "set ssl_pem, or use_ssl = false"))
    # Our server takes events only from a sensor with its key.
    if values[("sensor", "server_url")] and not values[("sensor", "server_key")]:
        key = ("sensor", "server_url")
        at = COMMAND_LINE if origins[key] == ORIGIN_FLAG else (location(source, lines[key]) if source else "defaults")
        problems.append(_value_problem(
            at, "sensor", "server_url", values[key], "needs [sensor] server_key, the key the server issued",
            "run `maltrail-engine server sensor add NAME` on the server and set server_key to what it prints"))
    # A spool needs somewhere for every event to go; reported at the switch.
    if values[("sensor", "disable_local_log_storage")] and not (
            values[("sensor", "log_server")] or values[("sensor", "syslog_server")]
            or values[("sensor", "logstash_server")] or values[("sensor", "json_output")]
            or values[("sensor", "server_url")]):
        key = ("sensor", "disable_local_log_storage")
        at = COMMAND_LINE if origins[key] == ORIGIN_FLAG else (location(source, lines[key]) if source else "defaults")
        problems.append(_value_problem(
            at, "sensor", "disable_local_log_storage", True,
            "turns the log directory into a spool, which needs a destination that takes every event",
            "set log_server, syslog_server, logstash_server, json_output or server_url, or "
            "disable_local_log_storage = false"))
    return problems


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_HEADER_RE = re.compile(r"^\s*\[\[?\s*(.*?)\s*\]\]?\s*(?:#.*)?$")
_KEY_RE = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
                     r"""(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")
_KEY_PART_RE = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")
_TOML_POS_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _key_parts(text: str) -> tuple[str, ...]:
    return tuple(p[1:-1] if p[0] in "\"'" else p for p in _KEY_PART_RE.findall(text))


def _index_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map (section,) and (section, key) to the line that defines them, by scanning the raw
    text.  tomllib gives no positions for values, so this finds the `[section]` header and the
    first `key =` line after it.  Best effort: a look-alike line inside a multi-line string can
    fool it, which only costs a wrong line number in a message, never a wrong value."""
    found: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.split("\n"), 1):
        header = _HEADER_RE.match(line)
        if header:
            table = _key_parts(header.group(1))
            for depth in range(1, len(table) + 1):
                found.setdefault(table[:depth], number)
            continue
        key = _KEY_RE.match(line)
        if key:
            path = table + _key_parts(key.group(1))
            for depth in range(1, len(path) + 1):
                found.setdefault(path[:depth], number)
    return found


def _read_text(path: str) -> str:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError("%s: configuration file not found" % path) from None
    except IsADirectoryError:
        raise ConfigError("%s: is a directory, not a configuration file" % path) from None
    except PermissionError:
        raise ConfigError("%s: cannot be read: permission denied" % path) from None
    except OSError as exc:
        raise ConfigError("%s: cannot be read: %s" % (path, exc.strerror or exc)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError("%s:%d: not valid UTF-8 text (byte offset %d)"
                          % (path, line, exc.start)) from None
    # Some Windows editors start UTF-8 files with a byte-order mark; TOML parsers reject it.
    return text[1:] if text.startswith("\ufeff") else text


# A maltrail.conf line: an option name in capitals, whitespace, its value ("LOG_DIR /var/log").
_MALTRAIL_LINE_RE = re.compile(r"^([A-Z][A-Z0-9_]*)\s+\S")


def looks_like_maltrail_conf(text: str) -> bool:
    """Whether `text` is Maltrail's maltrail.conf format: some line sets, in Maltrail's
    `NAME value` form, an option one of our keys stands for.  (TOML cannot parse such a line,
    so this is only asked after TOML has refused the file.)"""
    names = {spec.maltrail for _s, _k, spec in iter_keys() if spec.maltrail}
    for line in text.splitlines():
        match = _MALTRAIL_LINE_RE.match(line.split("#", 1)[0])
        if match and match.group(1) in names:
            return True
    return False


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        if looks_like_maltrail_conf(text):
            raise ConfigError(
                "%s: this is Maltrail's maltrail.conf format, not TOML; maltrail-engine reads "
                "maltrail.toml. Write the equivalent maltrail.toml with: maltrail-engine config import %s "
                "(-o FILE to choose where; every option is carried over or named as not applicable)"
                % (source, shlex.quote(source))) from None
        message = str(exc)
        pos = _TOML_POS_RE.search(message)
        if pos:
            where = "%s:%s:%s" % (source, pos.group(1), pos.group(2))
            message = message[:pos.start()]
        elif message.endswith("(at end of document)"):
            where = "%s:%d" % (source, text.count("\n") + 1)
            message = message[: -len("(at end of document)")].rstrip()
        else:
            where = source
        raise ConfigError("%s: TOML syntax error: %s" % (where, message)) from None


def _apply_document(doc: Mapping[str, Any], source: str, lines: dict[tuple[str, ...], int],
                    values: dict, origins: dict, key_lines: dict) -> list[str]:
    """Validate a parsed file into `values`/`origins`/`key_lines`; return the problems."""
    problems = []
    for section, body in doc.items():
        where = location(source, lines.get((section,)))
        if section not in SCHEMA:
            homes = [s for s in SCHEMA if section in SCHEMA[s]]
            if homes and not isinstance(body, dict):
                problems.append("%s: %s is outside any section; it belongs under [%s]"
                                % (where, section, homes[0]))
                continue
            problems.append(_unknown_section(where, section))
            continue
        if not isinstance(body, dict):
            problems.append("%s: %s must be a table (a [%s] header), found %s"
                            % (where, section, section, type_name(body)))
            continue
        for key, value in body.items():
            line = lines.get((section, key)) or lines.get((section,))
            where = location(source, line)
            spec = SCHEMA[section].get(key)
            if spec is None:
                problems.append(_unknown_key(where, section, key))
                continue
            normalised, problem = spec.rules.check(spec, value)
            if problem:
                problems.append(_value_problem(where, section, key, value, problem, spec.allowed))
                continue
            values[(section, key)] = normalised
            origins[(section, key)] = ORIGIN_FILE
            key_lines[(section, key)] = line
    return problems


def load_config(path: str | os.PathLike | None) -> Config:
    """Load and validate `path`; None means no file (every key at its default).

    Raises ConfigError naming the file, line, key, what was found and what is allowed; all the
    problems in a file are reported at once.
    """
    values, origins, key_lines = _defaults()
    if path is None:
        return _config(None, values, origins, key_lines)
    source = os.fspath(path)
    if isinstance(source, bytes):
        source = os.fsdecode(source)
    text = _read_text(source)
    doc = _parse(text, source)
    problems = _apply_document(doc, source, _index_lines(text), values, origins, key_lines)
    if not problems:
        problems = _cross_check(values, origins, key_lines, source)
    if problems:
        raise ConfigError(problems)
    return _config(source, values, origins, key_lines)




# --------------------------------------------------------------------------------------------
# Command-line overrides
# --------------------------------------------------------------------------------------------

def apply_overrides(cfg: Config, overrides: Mapping[tuple[str, str], Any]) -> Config:
    """A new Config with the command-line values in `overrides` on top of `cfg`.

    Keys are (section, key); a value of None means "flag not given" and is skipped, so an
    argparse namespace can be passed through without filtering.  Values are checked with the
    same rules as the file; messages say "command line".
    """
    values = {(s, k): cfg.value(s, k) for s, k, _spec in iter_keys()}
    origins = dict(cfg.origins)
    lines = dict(cfg.lines)
    problems = []
    for (section, key), value in overrides.items():
        if value is None:
            continue
        spec = SCHEMA.get(section, {}).get(key)
        if spec is None:
            if section not in SCHEMA:
                problems.append(_unknown_section(COMMAND_LINE, section))
            else:
                problems.append(_unknown_key(COMMAND_LINE, section, key))
            continue
        normalised, problem = spec.rules.check(spec, value)
        if problem:
            problems.append(_value_problem(COMMAND_LINE, section, key, value, problem,
                                           spec.allowed))
            continue
        values[(section, key)] = normalised
        origins[(section, key)] = ORIGIN_FLAG
        lines[(section, key)] = None
    if not problems:
        problems = _cross_check(values, origins, lines, cfg.path)
    if problems:
        raise ConfigError(problems)
    return _config(cfg.path, values, origins, lines)


def parse_flag_value(section: str, key: str, text: str) -> Any:
    """Turn a flag's text into the typed value `apply_overrides` expects.

    "1500" -> 1500 for int keys, "auto" stays a word, "true"/"false" for bool keys, strings and
    comma-separated lists as they are (apply_overrides splits and checks them).  Text that is
    not even of the right type is returned unchanged so apply_overrides reports it with the
    usual message.
    """
    spec = SCHEMA[section][key]
    return spec.rules.parse_flag(spec, text)


# --------------------------------------------------------------------------------------------
# Locating the file, the sensor name
# --------------------------------------------------------------------------------------------

def default_config_path(environ: Mapping[str, str] | None = None,
                        system_path: str = SYSTEM_CONFIG_PATH) -> str | None:
    """$MALTRAIL_ENGINE_CONFIG if set and non-empty, else `system_path` if it exists, else None.

    (An explicit -c/--config flag is handled by the CLI before this is consulted.)
    """
    env = os.environ if environ is None else environ
    chosen = env.get(ENV_VAR, "")
    if chosen:
        return chosen
    return system_path if os.path.exists(system_path) else None


def resolved_sensor_name(cfg: Config) -> str:
    """The configured sensor name, or the host name when it is empty (as Maltrail does)."""
    return cfg.sensor.sensor_name or socket.gethostname()
