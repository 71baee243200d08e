# -*- test-case-name: tests.test_check -*-
"""
Where a configuration's values came from, and how to show them without
their secrets: the pure half of C{llmproxy check}.

  - L{yaml_positions}: every key and list item of a YAML text, by the path
    an error names it with (C{backends.openai.api_key},
    C{model_aliases[0].pattern}), with its line and raw scalar text;
  - L{flatten}: a frozen configuration as (path, value) rows;
  - L{mask}: a secret as C{sk-…abcd} (long ones) or C{***}.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import yaml

from llmproxy.config.model import ApiKey
from llmproxy.config.reader import env_refs, shown


@dataclass(frozen=True)
class Position:
    """
    A YAML key's (or list item's) place: its line (from 1), the keys and
    indexes leading to it in the data, and its text when it is a scalar.
    """

    line: int
    keys: tuple[Any, ...]
    text: str | None


def yaml_positions(text: str) -> dict[str, Position]:
    """
    Each key path of C{text} (a YAML document that parses) and where it is.
    """
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    found: dict[str, Position] = {}
    if root is not None:
        _walk(root, "", (), found)
    return found


def _walk(node: yaml.Node, prefix: str, keys: tuple[Any, ...],
          found: dict[str, Position]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value in node.value:
            key = _key(key_node)
            path = f"{prefix}{shown(key)}"
            found[path] = Position(key_node.start_mark.line + 1, (*keys, key), _text(value))
            _walk(value, path + ".", (*keys, key), found)
    elif isinstance(node, yaml.SequenceNode):
        base = prefix.removesuffix(".")
        for i, item in enumerate(node.value):
            path = f"{base}[{i}]"
            found[path] = Position(item.start_mark.line + 1, (*keys, i), _text(item))
            _walk(item, path + ".", (*keys, i), found)


def _key(node: yaml.Node) -> Any:
    """
    A mapping key as the loaded data holds it (C{1} for C{1:}).
    """
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str":
        return node.value
    try:
        return yaml.safe_load(yaml.serialize(node))
    except yaml.YAMLError:
        return str(node.value)


def _text(node: yaml.Node) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def variables(position: Position | None) -> list[str]:
    """
    The environment variables a YAML scalar refers to.
    """
    if position is None or position.text is None:
        return []
    return env_refs(position.text)


#: Field names whose values are secrets.
_SECRET = re.compile(r"(^|_)(key|keys|token|secret|password|bearer)$", re.IGNORECASE)
#: Shown in part only when this long (never more than 7 characters).
_PARTIAL_FROM = 20


def mask(secret: str) -> str:
    """
    C{secret} as C{sk-…abcd}: its first three and last four characters,
    when it is long enough for that to say nothing useful; else C{***}.
    """
    if len(secret) < _PARTIAL_FROM:
        return "***"
    return f"{secret[:3]}…{secret[-4:]}"


def _masked_url(url: str) -> str:
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


#: Fields that say nothing a row does not: a backend's name is its key.
_UNSHOWN = ("warnings", "name")
#: Lists of structures longer than this are shown as their length.
_LISTED = 4


def flatten(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """
    Rows (path, shown value) of a frozen configuration, secrets masked:
    keys and every field named like a secret.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, (type, ApiKey)):
        for f in dataclasses.fields(value):
            if f.name in _UNSHOWN or not f.compare:
                continue
            yield from _field(f.name, getattr(value, f.name), path)
    elif isinstance(value, Mapping):
        if not value:
            yield path, "{}"
        for key, item in value.items():
            yield from _field(str(key), item, path)
    elif isinstance(value, (tuple, list)) and any(
            dataclasses.is_dataclass(v) and not isinstance(v, ApiKey) for v in value):
        if len(value) > _LISTED:
            yield path, f"({len(value)} items)"
            return
        for i, item in enumerate(value):
            yield from flatten(item, f"{path}[{i}]")
    else:
        yield path, _scalar(value)


def _field(name: str, value: Any, path: str) -> Iterator[tuple[str, str]]:
    child = f"{path}.{name}" if path else name
    if _SECRET.search(name) and not isinstance(value, (bool, int, float)) and value:
        yield child, _secret(value)
    else:
        yield from flatten(value, child)


def _secret(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_secret(v) for v in value) + "]"
    if isinstance(value, ApiKey):
        return f"{value.name}={mask(value.value)}"
    return mask(str(value))


def _scalar(value: Any) -> str:
    if isinstance(value, ApiKey):
        return _secret(value)
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return _masked_url(value)
    if value is None:
        return "null"
    if value == "":
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


__all__ = ["Position", "flatten", "mask", "variables", "yaml_positions"]
