from .loader import ConfigError, load_config, parse_config, resolve_path
from .schema import Config, PlanConfig, RouteConfig
from .units import Rate, RateLimit, format_duration, parse_duration, parse_rate, parse_rate_limit

__all__ = [
    "Config",
    "ConfigError",
    "PlanConfig",
    "Rate",
    "RateLimit",
    "RouteConfig",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_rate",
    "parse_rate_limit",
    "resolve_path",
]
