from dataclasses import dataclass
from typing import Optional

import pytest

from dinossl.config.merge import build_dataclass, settings_from
from dinossl.errors import ConfigError


@dataclass(frozen=True)
class Probe:
    ks: tuple[int, ...] = (10, 20)
    temperature: float = 0.07
    name: Optional[str] = None
    flag: bool = False


def test_settings_from_yaml_then_overrides_then_updates(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("temperature: 0.1\nks: [5]\nname: first\n")
    s = settings_from(Probe, path, ["temperature=0.2", "flag=true"], {"name": "last"})
    assert s == Probe(ks=(5,), temperature=0.2, name="last", flag=True)


def test_a_single_value_for_a_variable_length_tuple_becomes_one_item():
    assert build_dataclass(Probe, {"ks": 7}).ks == (7,)


@pytest.mark.parametrize("values,fragment", [
    ({"temprature": 1}, "temprature: unknown configuration key"),
    ({"temperature": "warm"}, "temperature: expected a number"),
    ({"ks": ["a"]}, "ks: expected an integer"),
    ({"flag": 3}, "flag: expected true or false"),
])
def test_bad_settings_name_the_field(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_dataclass(Probe, values)
