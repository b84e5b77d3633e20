"""The heuristic settings are declared twice and must not drift apart.

config/__init__.py's SCHEMA["heuristics"] (with [sensor] use_heuristics) is what maltrail.toml is
read, checked and documented against; workers.heuristics.HeuristicSettings is what the workers,
the benchmarks and most tests run on. Neither package may import the other (tests/test_layering.py:
config is a leaf the server reads too, and workers must not know about configuration files), so
this test holds them together key for key: the same names, the same types, the same defaults, each
default acceptable to the schema, and the settings a sensor runs without a configuration file equal
to the dataclass's defaults.
"""

from __future__ import annotations

import dataclasses

import pytest

from config import SCHEMA, check_value, load_config
from engine.control_files import heuristic_settings
from workers.heuristics import HeuristicSettings

# [heuristics] keys by schema type -> the Python type of the dataclass default
_TYPES = {"bool": bool, "int": int, "float": float, "ints": tuple, "list": tuple}
# The dataclass's master switch is [sensor] use_heuristics.
_MASTER = ("sensor", "use_heuristics")


def declared():
    """(section, key, schema spec, dataclass field) for every heuristic setting."""
    fields = {f.name: f for f in dataclasses.fields(HeuristicSettings) if not f.name.startswith("_")}
    out = [(*_MASTER, SCHEMA[_MASTER[0]][_MASTER[1]], fields.pop("enabled"))]
    out += [("heuristics", name, SCHEMA["heuristics"].get(name), fields.get(name)) for name in SCHEMA["heuristics"]]
    out += [("heuristics", name, None, field) for name, field in fields.items() if name not in SCHEMA["heuristics"]]
    return out


@pytest.mark.parametrize("section, key, spec, field", declared(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_heuristic_setting_is_the_same_in_the_schema_and_the_dataclass(section, key, spec, field):
    assert spec is not None, "HeuristicSettings.%s has no [%s] key in config SCHEMA" % (key, section)
    assert field is not None, "[%s] %s has no HeuristicSettings field" % (section, key)
    default = field.default
    assert type(default) is _TYPES[spec.type], (key, spec.type, default)
    assert default == spec.default, "[%s] %s: schema says %r, HeuristicSettings %r" % (section, key, spec.default,
                                                                                       default)
    normalised, problem = check_value(section, key, default)
    assert problem is None, (key, problem)
    assert normalised == default


def test_a_sensor_without_a_configuration_file_runs_the_dataclass_defaults():
    assert heuristic_settings(load_config(None)) == HeuristicSettings()


def test_every_setting_is_compared():
    # a field excluded from comparison could differ between the two without the test above seeing it
    assert all(f.compare for f in dataclasses.fields(HeuristicSettings) if not f.name.startswith("_"))
