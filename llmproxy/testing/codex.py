"""
ChatGPT-login fixtures: unsigned JWTs with the claims Codex's tokens carry,
and C{auth.json} files as the Codex CLI writes them.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from llmproxy.backends.codex_auth import AUTH_CLAIM


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(claims: dict[str, Any]) -> str:
    """
    A JWT with C{claims} and a meaningless signature.
    """
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}.c2ln"


def auth_data(
    access: str, *, exp: float | None, account_id: str = "acct-1", plan: str = "plus",
    refresh: str = "rt-1", last_refresh: str = "2026-11-01T00:00:00Z",
) -> dict[str, Any]:
    """
    The content of a ChatGPT-login C{auth.json} whose access token is a
    JWT naming C{access} (as its C{sub}) and expiring at C{exp}.
    """
    claims: dict[str, Any] = {"sub": access}
    if exp is not None:
        claims["exp"] = int(exp)
    id_token = make_jwt({AUTH_CLAIM: {"chatgpt_account_id": account_id,
                                      "chatgpt_plan_type": plan}})
    return {
        "auth_mode": "chatgpt", "OPENAI_API_KEY": None,
        "tokens": {"id_token": id_token, "access_token": make_jwt(claims),
                   "refresh_token": refresh, "account_id": account_id},
        "last_refresh": last_refresh,
    }


def write_auth_file(path: Path, data: dict[str, Any]) -> Path:
    """
    Write C{data} to C{path} as the Codex CLI does (mode 0600).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    os.chmod(path, 0o600)
    return path


__all__ = ["auth_data", "make_jwt", "write_auth_file"]
