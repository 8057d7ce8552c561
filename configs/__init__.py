"""The config tree (schema), its loader and its validation; the YAML files beside this module are the shipped configs."""
from .loader import CONFIG_ROOT, load_config, resolve_config_path, to_yaml
from .schema import (CheckpointConfig, DataConfig, GengramConfig, LoggingConfig, MLAConfig, ModelConfig, MoEConfig,
                     NucleotronConfig, OptimConfig, ParallelConfig, RunConfig, ScheduleConfig, TrainConfig)
from .validate import ConfigError, config_problems, validate

__all__ = [
    "CONFIG_ROOT", "load_config", "resolve_config_path", "to_yaml", "ConfigError", "config_problems", "validate",
    "CheckpointConfig", "DataConfig", "GengramConfig", "LoggingConfig", "MLAConfig", "ModelConfig", "MoEConfig",
    "NucleotronConfig", "OptimConfig", "ParallelConfig", "RunConfig", "ScheduleConfig", "TrainConfig",
]
