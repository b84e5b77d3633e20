"""maltrail.toml, read by the sensor, the server and the command line alike.

Owns nothing itself: it gathers the public names of its modules so callers write
`from config import load_config`.

- config/schema.py: `SCHEMA` (the one declaration of every section and key: type, default,
  allowed values, a one-line doc and the Maltrail option it stands for), `Key`, `SECTION_DOCS`;
  checked against its own rules at import.
- config/values.py: one class per value type (check, describe, parse a flag, dump) and the
  string forms (path, host, CIDR, regex, ...).
- config/load.py: reading and validating a file, TOML errors, line numbers, the cross-key rule,
  `Config`, command-line overrides, where the file is looked for.
- config/dump.py: the effective configuration printed for `maltrail-engine check-config`.
- config/maltrail_conf.py: `config import` of Maltrail's maltrail.conf (imported on its own).

Must not: import any other part of maltrail-engine (tests/test_layering.py), open interfaces,
touch trail files or directories, resolve host names, or start anything.
"""

from config.dump import comment_text, dump_config
from config.load import (
    COMMAND_LINE, ENV_VAR, ORIGIN_DEFAULT, ORIGIN_FILE, ORIGIN_FLAG, SYSTEM_CONFIG_PATH, Config, ConfigError,
    apply_overrides, check_value, default_config_path, load_config, looks_like_maltrail_conf, parse_flag_value,
    resolved_sensor_name,
)
from config.schema import DEFAULT_SEVERITY_REGEX, SCHEMA, SECTION_DOCS, Key, iter_keys
from config.values import ALERT_FORMAT_FIELDS
from config.values import NAME_MAX_BYTES, toml_value

__all__ = [
    "ALERT_FORMAT_FIELDS",
    "DEFAULT_SEVERITY_REGEX",
    "SCHEMA",
    "SECTION_DOCS",
    "SYSTEM_CONFIG_PATH",
    "ENV_VAR",
    "Key",
    "Config",
    "ConfigError",
    "iter_keys",
    "load_config",
    "apply_overrides",
    "parse_flag_value",
    "default_config_path",
    "dump_config",
    "resolved_sensor_name",
    "looks_like_maltrail_conf",
    "check_value",
    "toml_value",
    "comment_text",
    "COMMAND_LINE",
    "ORIGIN_DEFAULT",
    "ORIGIN_FILE",
    "ORIGIN_FLAG",
    "NAME_MAX_BYTES",
]
