"""Configuration of a DINO run.

* :mod:`~dinossl.config.schema`: the typed sections and their defaults (the reference's values);
* ``presets/*.yaml``: named recipes shipped with the package;
* :mod:`~dinossl.config.merge`: YAML files and ``key=value`` overrides merged and typed into any
  settings dataclass (also used for the evaluation settings);
* :mod:`~dinossl.config.validation`: the checks, one ConfigError naming the field;
* :mod:`~dinossl.config.loading`: defaults <- preset <- YAML <- overrides <- options.
"""

from dinossl.config.loading import DEFAULT_PRESET, config_from_dict, file_preset, load_config, preset_names, preset_values
from dinossl.config.merge import parse_override
from dinossl.config.schema import (
    ARCHS,
    CENTERINGS,
    HOST_ALLOCATORS,
    LOSS_CRITERIA,
    TEACHER_UPDATES,
    VIT_ARCHS,
    Config,
    CropConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from dinossl.config.validation import validate

__all__ = [
    "ARCHS",
    "HOST_ALLOCATORS",
    "CENTERINGS",
    "DEFAULT_PRESET",
    "LOSS_CRITERIA",
    "TEACHER_UPDATES",
    "VIT_ARCHS",
    "Config",
    "CropConfig",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "config_from_dict",
    "file_preset",
    "load_config",
    "parse_override",
    "preset_names",
    "preset_values",
    "validate",
]
