"""The bearer token of the web app: required whenever it listens on a non-loopback address.

Generated once into ``<workspace>/webapp/api-token`` (mode 0600, created with O_EXCL so it never exists with
wider permissions), never printed or logged: the CLI says where the file is. A token file others can read is
refused, as Label Studio's credentials are.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.config import ConfigError
from runtime.netbind import is_loopback

__all__ = ["TokenError", "bearer_check", "ensure_token", "needs_token", "token_path"]


class TokenError(ConfigError):
    """The token file cannot be used (readable by others, empty)."""


def token_path(settings: Any) -> Path:
    return Path(settings.workspace) / "webapp" / "api-token"


def needs_token(host: str) -> bool:
    """A bearer token is required off loopback (wildcards such as 0.0.0.0 included)."""
    return not is_loopback(host)


def ensure_token(settings: Any) -> str:
    """The token of this workspace, generated on first use."""
    path = token_path(settings)
    if path.is_file():
        if path.stat().st_mode & 0o077:
            raise TokenError(f"{path}: the API token is readable by others; run `chmod 600 {path}`")
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise TokenError(f"{path}: the API token file is empty; delete it to generate a new one")
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token


def bearer_check(token: str | None) -> Callable[[str | None], bool]:
    """``check(authorization_header) -> bool``: anything goes without a token; with one, the header must be
    ``Bearer <token>`` (compared in constant time)."""

    def check(header: str | None) -> bool:
        if token is None:
            return True
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(value.strip().encode(), token.encode())

    return check
