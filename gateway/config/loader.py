"""Read a YAML file into a frozen :class:`Config`, or a list of every problem in it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .reserved import route_conflicts
from .schema import Config

DEFAULT_PATH = "config/gateway.yaml"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The configuration cannot be used; ``errors`` lists each problem as ``path: reason``."""

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(errors))


def resolve_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get("GATEWAY_CONFIG") or DEFAULT_PATH)


def format_location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "json-or-python")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _expand_env(node: Any, path: str, errors: list[str]) -> Any:
    """Replace ``${VAR}`` (or ``${VAR:-default}``) in every string value."""
    if isinstance(node, dict):
        return {
            k: _expand_env(v, f"{path}.{k}" if path else str(k), errors) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_expand_env(v, f"{path}[{i}]", errors) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = os.environ.get(name)
            if value is None:
                if default is not None:
                    return default
                errors.append(f"{path}: environment variable {name} is not set")
                return ""
            return value

        whole = _ENV_REF.fullmatch(node)
        expanded = _ENV_REF.sub(substitute, node)
        if whole and expanded.strip() != "":
            # A value that is only a reference may become a number or boolean.
            try:
                parsed = yaml.safe_load(expanded)
            except yaml.YAMLError:
                return expanded
            return parsed if isinstance(parsed, int | float | bool) else expanded
        return expanded
    return node


def parse_config(data: Any, source: str = "<config>") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): expected a mapping of sections"])
    env_errors: list[str] = []
    data = _expand_env(data, "", env_errors)
    # Report every problem at once: unset variables, duplicate names, then the schema's.
    env_paths = {e.split(": ", 1)[0] for e in env_errors}
    errors = env_errors + _duplicate_route_names(data)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            where = format_location(err["loc"])
            if where in env_paths:
                continue  # already reported as the unset variable it came from
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown field"
            elif err["type"] == "missing":
                message = "required field is missing"
            if not where and ": " in message:
                errors.append(message)
            else:
                errors.append(f"{where or '(top level)'}: {message}")
    else:
        errors += route_conflicts(config)
    if errors:
        raise ConfigError(source, list(dict.fromkeys(errors)))
    return config


def _duplicate_route_names(data: dict[str, Any]) -> list[str]:
    """Checked on the raw data too, so it is reported even when a route has other errors."""
    routes = data.get("routes")
    if not isinstance(routes, list):
        return []
    seen: dict[str, int] = {}
    errors = []
    for index, route in enumerate(routes):
        name = route.get("name") if isinstance(route, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            errors.append(
                f"routes[{index}].name: duplicate route name {name!r} "
                f"(first used by routes[{seen[name]}])"
            )
        else:
            seen[name] = index
    return errors


def load_config(path: str | os.PathLike[str]) -> Config:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from None
    return parse_config(data, source)
