"""The config of a run: sections (config.sections), presets as changes to a
parent (config.presets), config.json (config.tree) and the command-line flags
built from the same declarations (config.flags)."""
from ..ncp.contract import SamplerConfig
from .flags import add_config_flags, given_values, in_flag_terms, section_values
from .presets import PRESETS, check_preset, preset_changes, resolve_config
from .sections import (
                       DEFAULT_PRESET,
                       NCP_BASES,
                       Config,
                       DataConfig,
                       EvaluationConfig,
                       HierarchyConfig,
                       LoggingConfig,
                       MLPConfig,
                       ModelConfig,
                       RunConfig,
                       Stage1Config,
                       Stage2Config,
)
from .tree import from_dotted, load_config, save_config, to_dotted, with_changes

__all__ = ["DEFAULT_PRESET", "NCP_BASES", "PRESETS", "Config", "DataConfig", "EvaluationConfig", "LoggingConfig",
           "MLPConfig", "ModelConfig", "HierarchyConfig", "RunConfig", "SamplerConfig", "Stage1Config", "Stage2Config",
           "add_config_flags", "check_preset", "from_dotted", "given_values", "in_flag_terms", "load_config",
           "preset_changes", "resolve_config", "save_config", "section_values", "to_dotted", "with_changes"]
