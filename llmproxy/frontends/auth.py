# -*- test-case-name: tests.test_http_protocol -*-
"""
Client auth: whether a request's C{Authorization} header carries one of the
runtime's proxy keys.  The one place that decides it, for the channel's gate
at the end of the headers and for the handlers of requests no gate saw.
"""

from __future__ import annotations

import hmac
from typing import Sequence

from llmproxy.errors import AuthenticationFailed
from llmproxy.exchange.runtime import Runtime


def check_key(runtime: Runtime, values: Sequence[bytes] | None) -> None:
    """
    Raise L{AuthenticationFailed} unless C{values} (the request's
    C{Authorization} header lines) is one C{Bearer} token equal to one of
    C{runtime}'s proxy keys; every key is compared, in constant time.
    Nothing to check when auth is off.
    """
    if not runtime.config.auth_enabled:
        return
    if not values:
        raise AuthenticationFailed(
            "Missing proxy key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
    if len(values) > 1:
        raise AuthenticationFailed("Send one Authorization header, not several",
                                   code="invalid_api_key")
    scheme, _, token = values[0].partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        raise AuthenticationFailed(
            "Missing proxy key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
    ok = False
    for key in runtime.proxy_keys:
        ok |= hmac.compare_digest(token, key)
    if not ok:
        raise AuthenticationFailed("Incorrect proxy key provided", code="invalid_api_key")


__all__ = ["check_key"]
