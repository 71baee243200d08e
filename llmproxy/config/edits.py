# -*- test-case-name: tests.test_edit_precision -*-
"""
The C{edit_precision} section: when a coding agent's edit failed, the next
request is sent with lower sampling parameters (L{llmproxy.adapt.edits}).

The failure messages are regular expressions in a YAML file, one per agent
message, each with a name: the file shipped in this package
(C{edit_patterns.yaml}), or the one C{edit_precision.patterns_file} names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

import yaml

if TYPE_CHECKING:
    from llmproxy.config.reader import Reader

#: The patterns file shipped in this package.
SHIPPED_PATTERNS = "edit_patterns.yaml"


@dataclass(frozen=True)
class EditPattern:
    """
    One edit-failure message.

    @ivar name: what C{x-llmproxy-tuned} says matched (C{cline search-block}).
    @ivar regexes: its wordings; any one matching is a match.  (Several
        regexes, not one alternation: a regex that starts with literal
        text is searched several times faster.)
    """

    name: str
    regexes: tuple[re.Pattern[str], ...]


@dataclass(frozen=True)
class EditPrecisionConfig:
    """
    Edit precision tuning.

    @ivar target_temperature: the temperature cap of a model no entry of
        C{models} names.
    @ivar models: temperature caps by model keyword (a keyword names every
        model whose name contains it, case-insensitively; the longest wins).
    @ivar min_top_p: the C{top_p} cap (named as in the reference proxy).
    @ivar max_top_k: the C{top_k} cap, applied only to a C{top_k} the client
        sent (an OpenAI upstream rejects the field); L{None}: no cap.
    @ivar exclude_agents: clients whose C{User-Agent} it matches (C{search})
        are never tuned.
    @ivar patterns: the failure messages; none means nothing is ever tuned.
    """

    enabled: bool = True
    target_temperature: float = 0.1
    models: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    min_top_p: float = 0.3
    max_top_k: int | None = None
    exclude_agents: re.Pattern[str] | None = None
    patterns: tuple[EditPattern, ...] = ()

    @property
    def active(self) -> bool:
        """
        Whether any request can be tuned.
        """
        return self.enabled and bool(self.patterns)

    def temperature_for(self, model: str) -> float:
        """
        The temperature cap of C{model}: the longest keyword of C{models}
        its name contains, else L{target_temperature}.
        """
        lowered = model.lower()
        found = [k for k in self.models if k.lower() in lowered]
        if not found:
            return self.target_temperature
        return self.models[max(found, key=len)]


def parse_patterns(data: Any, source: str) -> tuple[EditPattern, ...]:
    """
    The patterns of a patterns file's YAML.

    @raise ValueError: a malformed file, naming C{source} and the entry.
    """
    entries = data.get("patterns") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source}: expected a non-empty list under 'patterns'")
    patterns = []
    for i, entry in enumerate(entries):
        regex = entry.get("regex") if isinstance(entry, dict) else None
        texts = [regex] if isinstance(regex, str) else regex
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or not isinstance(texts, list) or not texts \
                or not all(isinstance(text, str) for text in texts):
            raise ValueError(f"{source}: patterns[{i}]: expected a name and a regex "
                             "(or a list of them)")
        try:
            compiled = tuple(re.compile(text) for text in texts)
        except re.error as e:
            raise ValueError(f"{source}: patterns[{i}] ({entry['name']}): bad regex: {e}")
        patterns.append(EditPattern(entry["name"], compiled))
    return tuple(patterns)


def _read_patterns(reader: Reader, path: str | None) -> tuple[EditPattern, ...]:
    try:
        if path is None:
            text = resources.files("llmproxy.config").joinpath(SHIPPED_PATTERNS).read_text(
                encoding="utf-8")
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        return parse_patterns(yaml.safe_load(text), path or SHIPPED_PATTERNS)
    except (OSError, yaml.YAMLError, ValueError) as e:
        raise reader.fail("patterns_file", str(e))


def _models(reader: Reader) -> Mapping[str, float]:
    table = reader.mapping("models")
    child = reader.child("models", table)
    models = {str(key): child.number(str(key), 0.0) for key in table}
    child.finish()
    return MappingProxyType(models)


def edit_precision_config(top: Reader) -> EditPrecisionConfig:
    """
    The C{edit_precision} section (on by default, with the shipped patterns).
    """
    reader = top.child("edit_precision", top.mapping("edit_precision"))
    enabled = bool(reader.get("enabled", bool, True))
    exclude = reader.get("exclude_agents_regex", str)
    try:
        excluded = re.compile(exclude) if exclude else None
    except re.error as e:
        raise reader.fail("exclude_agents_regex", f"bad regex: {e}")
    top_k = reader.get("max_top_k", int)
    if top_k is not None and top_k < 1:
        raise reader.fail("max_top_k", "must be at least 1")
    top_p = reader.number("min_top_p", 0.3)
    if top_p > 1:
        raise reader.fail("min_top_p", "must be at most 1")
    config = EditPrecisionConfig(
        enabled=enabled,
        target_temperature=reader.number("target_temperature", 0.1),
        models=_models(reader),
        min_top_p=top_p,
        max_top_k=top_k,
        exclude_agents=excluded,
        patterns=_read_patterns(reader, reader.get("patterns_file", str)) if enabled else (),
    )
    reader.finish()
    return config


__all__ = ["EditPattern", "EditPrecisionConfig", "SHIPPED_PATTERNS", "edit_precision_config",
           "parse_patterns"]
