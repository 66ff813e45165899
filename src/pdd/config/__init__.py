"""Configuration: presets (YAML), the one typed schema of every option and model key, YAML I/O.

``yaml_io``      strict YAML loading (duplicate keys are errors) and plain YAML output
``schema``       pydantic models: model configs, fit options, checkpoint values, and their bounds
``messages``     pydantic's errors -> one-line ``ConfigError`` naming the key and the file/option
``presets``      shipped presets, ``extends:``, overrides -> ``resolve_config``
``fit_options``  `pdd fit` settings from a --config file, the command line and --set
"""

from pdd.config.presets import (
    list_presets,
    load_config_file,
    load_preset,
    resolve_config,
    validate_config,
)
from pdd.config.schema import MAX_IMAGE_SIZE, TEACHER_NAMES
from pdd.config.yaml_io import config_to_yaml, parse_yaml, read_yaml_file

__all__ = [
    "MAX_IMAGE_SIZE",
    "TEACHER_NAMES",
    "config_to_yaml",
    "list_presets",
    "load_config_file",
    "load_preset",
    "parse_yaml",
    "read_yaml_file",
    "resolve_config",
    "validate_config",
]
