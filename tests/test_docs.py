"""The documentation holds to the code: the documented defaults are the ones the
configuration loader produces, and every relative link in the docs leads somewhere.

docs/configuration.md carries YAML blocks marked ``<!-- defaults: NAME -->``; each is
loaded and compared, setting by setting, with what ``gateway.config`` produces when
only the block's required fields are given. A setting missing from the page, extra on
it, or with another value fails the test naming its path.
"""

from __future__ import annotations

import atexit
import functools
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from realparts import self_signed

from gateway.config import ConfigError, load_config, parse_config
from gateway.config.schema import (
    CircuitBreakerConfig,
    ClusterConfig,
    Config,
    CorsConfig,
    RedisTLSConfig,
    RouteConfig,
    SentinelConfig,
    TLSConfig,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIG_PAGE = ROOT / "docs" / "configuration.md"
LINKED_PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "deploy" / "README.md",
    ROOT / "bench" / "README.md",
]

DEFAULTS_BLOCK = re.compile(r"<!-- defaults: ([\w.]+) -->\s*\n```yaml\n(.*?)\n```", re.S)


@functools.cache
def usable_tls_files() -> dict[str, str]:
    """A certificate and key the loader accepts, made once per run, removed at its end."""
    directory = Path(tempfile.mkdtemp(prefix="docs-tls-"))
    atexit.register(shutil.rmtree, directory, True)
    cert, key = self_signed(directory)
    return {"cert_file": str(cert), "key_file": str(key)}


def _route(**extra: Any) -> dict[str, Any]:
    return {"name": "r", "match": "/r", "upstream": "http://127.0.0.1:8000", **extra}


# Each documented block: the model it describes, and how the loader produces that model
# from a file naming only the given fields (the block's required ones).
PRODUCERS: dict[str, tuple[type[BaseModel], Callable[[dict[str, Any]], BaseModel]]] = {
    "config": (Config, lambda given: parse_config(given)),
    # The loader checks that the certificate files are a usable pair: a self-signed one.
    "server.tls": (
        TLSConfig,
        lambda given: (
            parse_config({"server": {"tls": {k: usable_tls_files()[k] for k in given}}}).server.tls
        ),
    ),
    "route": (RouteConfig, lambda given: parse_config({"routes": [given]}).routes[0]),
    "circuit_breaker": (
        CircuitBreakerConfig,
        lambda given: (
            parse_config({"routes": [_route(circuit_breaker=given)]}).routes[0].circuit_breaker
        ),
    ),
    "cors": (
        CorsConfig,
        lambda given: parse_config({"routes": [_route(cors=given)]}).routes[0].cors,
    ),
    "redis.tls": (
        RedisTLSConfig,
        lambda given: (
            parse_config({"redis": {"url": "rediss://127.0.0.1:6380/0", "tls": given}}).redis.tls
        ),
    ),
    "redis.sentinel": (
        SentinelConfig,
        lambda given: parse_config({"redis": {"sentinel": given}}).redis.sentinel,
    ),
    "redis.cluster": (
        ClusterConfig,
        lambda given: parse_config({"redis": {"cluster": given}}).redis.cluster,
    ),
}


def documented_blocks(text: str) -> dict[str, Any]:
    blocks: dict[str, Any] = {}
    for name, body in DEFAULTS_BLOCK.findall(text):
        assert name not in blocks, f"docs/configuration.md: two defaults blocks named {name!r}"
        blocks[name] = yaml.safe_load(body)
    return blocks


def drift(documented: Any, produced: Any, path: str = "") -> list[str]:
    """Every difference between a documented and a produced settings tree, by path."""
    if isinstance(produced, dict) and isinstance(documented, dict):
        problems = []
        for key in produced.keys() - documented.keys():
            problems.append(
                f"{path}{key}: the code has it (default {produced[key]!r}), the docs do not"
            )
        for key in documented.keys() - produced.keys():
            problems.append(f"{path}{key}: documented, but the code has no such setting")
        for key in sorted(produced.keys() & documented.keys()):
            problems.extend(drift(documented[key], produced[key], f"{path}{key}."))
        return problems
    if documented != produced:
        return [
            f"{path.rstrip('.')}: the code's default is {produced!r}, the docs say {documented!r}"
        ]
    return []


def key_drift(documented: Any, produced: Any, path: str) -> list[str]:
    """Settings the page names that the code lacks, and the reverse, at every depth."""
    if not (isinstance(documented, dict) and isinstance(produced, dict)):
        return []
    problems = []
    for key in sorted(produced.keys() - documented.keys()):
        problems.append(
            f"{path}{key}: the code has it (default {produced[key]!r}), the docs do not"
        )
    for key in sorted(documented.keys() - produced.keys()):
        problems.append(f"{path}{key}: documented, but the code has no such setting")
    for key in sorted(produced.keys() & documented.keys()):
        problems.extend(key_drift(documented[key], produced[key], f"{path}{key}."))
    return problems


def compare_block(name: str, block: Any) -> list[str]:
    """The block's drift from the code: its settings against the model's, at every depth,
    then its values (loaded by the gateway's own loader) against the loader's defaults."""
    model, produce = PRODUCERS[name]
    if not isinstance(block, dict):
        return [f"{name}: the documented block is not a mapping"]
    required = sorted(f for f, info in model.model_fields.items() if info.is_required())
    missing = [
        f"{name}.{f}: required, and missing from the documented block"
        for f in required
        if f not in block
    ]
    if missing:
        return missing
    produced = produce({f: block[f] for f in required}).model_dump()
    problems = key_drift(block, produced, f"{name}.")
    if problems:
        return problems
    return drift(produce(block).model_dump(), produced, f"{name}.")


def config_blocks() -> dict[str, Any]:
    return documented_blocks(CONFIG_PAGE.read_text())


def test_every_documented_default_is_the_codes() -> None:
    blocks = config_blocks()
    assert sorted(blocks) == sorted(PRODUCERS), (
        f"docs/configuration.md has defaults blocks {sorted(blocks)}, the test knows {sorted(PRODUCERS)}"
    )
    problems = [p for name, block in blocks.items() for p in compare_block(name, block)]
    assert problems == [], "docs/configuration.md drifted from gateway.config:\n" + "\n".join(
        problems
    )


def test_the_config_block_is_what_an_empty_file_loads(tmp_path: Path) -> None:
    documented = tmp_path / "documented.yaml"
    documented.write_text(yaml.safe_dump(config_blocks()["config"]))
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    assert load_config(documented) == load_config(empty)


def _models_in(value: Any, found: set[type[BaseModel]]) -> None:
    if isinstance(value, BaseModel):
        found.add(type(value))
        for field in type(value).model_fields:
            _models_in(getattr(value, field), found)
    elif isinstance(value, dict):
        for item in value.values():
            _models_in(item, found)
    elif isinstance(value, (tuple, list)):
        for item in value:
            _models_in(item, found)


def _model_args(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _model_args(arg)]


def test_every_settings_block_is_documented() -> None:
    """A settings block an empty file does not hold in full (an optional one, or a route)
    must have its own defaults block: a new one added to the code fails here by name."""
    reachable: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [Config]
    while todo:
        model = todo.pop()
        if model not in reachable:
            reachable.add(model)
            for info in model.model_fields.values():
                todo.extend(_model_args(info.annotation))
    in_config_block: set[type[BaseModel]] = set()
    _models_in(parse_config({}), in_config_block)
    documented = {PRODUCERS[name][0] for name in config_blocks()}
    undocumented = sorted(m.__name__ for m in reachable - in_config_block - documented)
    assert undocumented == [], (
        f"settings with no defaults block in docs/configuration.md: {undocumented}"
    )


def test_drift_is_named_in_both_directions() -> None:
    """The comparison itself: a changed, a missing and an extra setting are each named."""
    block = config_blocks()["config"]
    changed = {**block, "server": {**block["server"], "port": 8081}}
    assert compare_block("config", changed) == [
        "config.server.port: the code's default is 8080, the docs say 8081"
    ]
    missing = {**block, "keys": {k: v for k, v in block["keys"].items() if k != "cache_ttl"}}
    assert compare_block("config", missing) == [
        "config.keys.cache_ttl: the code has it (default 30.0), the docs do not"
    ]
    without_section = {k: v for k, v in block.items() if k != "rate_limits"}
    assert compare_block("config", without_section) == [
        "config.rate_limits: the code has it (default {'on_store_error': 'local'}), the docs do not"
    ]
    extra = {**block, "server": {**block["server"], "colour": "blue"}}
    assert compare_block("config", extra) == [
        "config.server.colour: documented, but the code has no such setting"
    ]
    route = config_blocks()["route"]
    without_required = {k: v for k, v in route.items() if k != "upstream"}
    assert compare_block("route", without_required) == [
        "route.upstream: required, and missing from the documented block"
    ]


FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, with inline code removed, numbered from 1."""
    out, fenced = [], False
    for number, line in enumerate(text.split("\n"), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, re.sub(r"`[^`]*`", "", line)))
    return out


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    out, fenced = [], False
    for line in path.read_text().split("\n"):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)):
            out.append(m.group(2))
    for heading in out:
        base = slug(heading)
        n = counts.get(base, 0)
        counts[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for number, line in prose_lines(page.read_text()):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: …
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            where = f"{page.relative_to(root)}:{number}: {target}"
            if not dest.exists():
                problems.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where}: no heading with anchor #{anchor} in {dest.name}")
    return problems


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_somewhere(page: Path) -> None:
    assert broken_links(page) == []


def test_docs_pages_are_all_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    unlinked = [
        p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"](docs/{p.name})" not in readme
    ]
    assert unlinked == [], f"docs pages the README does not link: {unlinked}"


def test_the_link_check_finds_a_broken_file_and_anchor(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# Top\n\n## Protect your own service in five minutes\n")
    (tmp_path / "docs" / "other.md").write_text("# Other\n")
    page = tmp_path / "docs" / "probe.md"
    page.write_text(
        "# Probe\n\n## Two words: here\n\n"
        "[ok](#two-words-here) [ok](../README.md#protect-your-own-service-in-five-minutes)\n"
        "[gone](missing.md) [no anchor](other.md#no-such-heading) [ok](other.md#other)\n"
        "```\n[in code](missing-too.md)\n```\n`[inline](missing-three.md)`\n"
    )
    assert broken_links(page, tmp_path) == [
        "docs/probe.md:6: missing.md: no such file",
        "docs/probe.md:6: other.md#no-such-heading: no heading with anchor #no-such-heading in other.md",
    ]


YAML_BLOCK = re.compile(r"```yaml\n(.*?)\n```", re.S)
# Examples name certificate files of the reader's machine; that they are absent here is
# the one refusal an example may get.
ABSENT_FILE = re.compile(r"^[\w.\[\]]+: (cert_file|key_file|ca_file) \S+ does not exist$")


def config_examples() -> list[tuple[str, Any]]:
    """Every YAML block in the README and docs/ that is a configuration file (or part of
    one): its top-level keys are all sections of the configuration."""
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        for match in YAML_BLOCK.finditer(text):
            data = yaml.safe_load(match.group(1))
            if isinstance(data, dict) and data.keys() <= Config.model_fields.keys():
                line = text[: match.start()].count("\n") + 1
                found.append((f"{page.relative_to(ROOT)}:{line}", data))
    return found


def test_every_configuration_example_loads() -> None:
    examples = config_examples()
    assert len(examples) >= 8, f"expected the docs' configuration examples, found {len(examples)}"
    problems = []
    for where, data in examples:
        try:
            parse_config(data)
        except ConfigError as exc:
            problems += [f"{where}: {e}" for e in exc.errors if not ABSENT_FILE.match(e)]
    assert problems == [], "configuration examples the gateway refuses:\n" + "\n".join(problems)


def test_the_readme_opens_with_the_run_and_test_commands() -> None:
    """The README's first two commands are the demo and the whole suite, and they are the
    scripts that do that: CI runs the second."""
    readme = (ROOT / "README.md").read_text()
    first_blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)[:2]
    assert first_blocks == ["scripts/demo.sh", "scripts/test.sh"]
    assert readme.index("scripts/test.sh") < readme.index("\n## ")
    assert "exec .venv/bin/gateway demo" in (ROOT / "scripts" / "demo.sh").read_text()
    assert "-m pytest" in (ROOT / "scripts" / "test.sh").read_text()
    assert "exec scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
