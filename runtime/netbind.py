"""Where our servers listen: loopback, unless someone asked explicitly for another address.

Label Studio, the webhook receiver, the Prefect server and the model server all take their address from the
one ``bind_host`` setting (default 127.0.0.1). None of them has authentication worth the name for the
open network (Label Studio's admin token sits in the workspace, Prefect has none), so a non-loopback address
is refused before anything starts unless ``allow_remote_bind`` is true (``--allow-remote`` on the command
line).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from runtime.config import ConfigError

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class RemoteBindRefused(ConfigError):
    """A server was asked to listen on a non-loopback address without ``allow_remote_bind``."""


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and the usual names for them. Wildcards (0.0.0.0, ::) are not loopback."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere, so it counts as remote


def bind_host(settings: Any, server: str) -> str:
    """The address ``server`` may listen on: ``settings.bind_host`` when it is loopback or remote binding is
    allowed; otherwise :class:`RemoteBindRefused`, naming the setting to change."""
    host = str(getattr(settings, "bind_host", None) or "127.0.0.1").strip().strip("[]")
    if not is_loopback(host) and not getattr(settings, "allow_remote_bind", False):
        raise RemoteBindRefused(
            f"refusing to start {server} on {host}: bind_host is not a loopback address (127.0.0.1, ::1,"
            " localhost), which would expose it to the network; set allow_remote_bind = true"
            " (SLM_ALLOW_REMOTE_BIND=1, or --allow-remote) if that is really meant"
        )
    return host


def connect_host(host: str) -> str:
    """The address a client on this machine uses to reach a server bound to ``host`` (wildcards -> loopback)."""
    host = host.strip().strip("[]")
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def url_host(host: str) -> str:
    """``host`` as it goes into a URL (IPv6 literals in brackets)."""
    host = connect_host(host)
    return f"[{host}]" if ":" in host else host


def family(host: str) -> socket.AddressFamily:
    """The socket family to bind ``host`` with."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host.strip("[]")).version == 6 else socket.AF_INET
    except ValueError:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return infos[0][0] if infos else socket.AF_INET
