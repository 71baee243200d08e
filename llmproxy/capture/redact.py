# -*- test-case-name: tests.test_capture_redact -*-
"""
Secrets out of captured data: every configured key value, proxy key and
inbound bearer token becomes C{[REDACTED]} wherever it appears, inside
strings, object keys and raw bytes, recursively; the JSON structure is
kept.  Credential headers are redacted whatever they hold.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

REDACTED = "[REDACTED]"

#: Headers whose value is always redacted (lower-case names).
SECRET_HEADERS = frozenset({
    "authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "set-cookie",
    "chatgpt-account-id",
})


class Redactor:
    """
    Replaces a fixed set of secrets.  The longest secrets are replaced
    first, so that a secret holding another leaves no part of itself.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
        self._raw = tuple(s.encode("utf-8") for s in self.secrets)
        #: The secrets as UTF-8 bytes.
        self.raw = self._raw
        self._any = re.compile(b"|".join(re.escape(s) for s in self._raw)) if self._raw \
            else None
        #: Whether no secret holds a character JSON must escape, so that a
        #: secret inside JSON text without C{\\u} escapes shows in its bytes.
        self.plain = not any(c in '"\\' or c < " " for s in self.secrets for c in s)

    def text(self, text: str) -> str:
        """
        C{text} with every secret replaced.
        """
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def data(self, data: bytes) -> bytes:
        """
        C{data} with every secret's UTF-8 bytes replaced.
        """
        if self._any is None or self._any.search(data) is None:
            return data
        for secret in self._raw:
            if secret in data:
                data = data.replace(secret, REDACTED.encode())
        return data

    def found(self, data: bytes) -> bool:
        """
        Whether C{data} holds a secret.
        """
        return self._any is not None and self._any.search(data) is not None

    def value(self, value: Any) -> Any:
        """
        A JSON value with every secret replaced in its strings and object
        keys; two keys that become one are told apart by a C{#N} suffix.
        """
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                name = self.text(key) if isinstance(key, str) else key
                n = 1
                while name in out:
                    n += 1
                    name = f"{self.text(key)}#{n}"
                out[name] = self.value(item)
            return out
        return value

    def headers(self, headers: Iterable[tuple[bytes, bytes]]) -> dict[str, Any]:
        """
        Raw headers as a mapping of lower-case name to value (a list when
        repeated), credential headers wholly redacted.
        """
        out: dict[str, Any] = {}
        for raw_name, raw_value in headers:
            name = raw_name.decode("latin-1").lower()
            value = REDACTED if name in SECRET_HEADERS \
                else self.text(raw_value.decode("latin-1"))
            if name in out:
                previous = out[name]
                out[name] = (previous if isinstance(previous, list) else [previous]) + [value]
            else:
                out[name] = value
        return out


__all__ = ["REDACTED", "SECRET_HEADERS", "Redactor"]
