from .loader import ConfigError, load_config, parse_config, resolve_path
from .schema import Config, PlanConfig, RouteConfig
from .units import Rate, format_duration, parse_duration, parse_rate

__all__ = [
    "Config",
    "ConfigError",
    "PlanConfig",
    "Rate",
    "RouteConfig",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_rate",
    "resolve_path",
]
