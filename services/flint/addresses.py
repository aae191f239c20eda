"""Network addresses as users write them: `host:port`, `[v6]:port`, a bare host or a URL."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def split_host(address: str) -> str:
    """Host part of 'host:port', '[v6]:port', 'dns:///host:port' or 'http://host:port/...'."""
    address = address.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    if "://" in address:
        return urlsplit(address).hostname or ""
    if address.startswith("["):
        return address[1:address.index("]")] if "]" in address else address
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


def is_loopback(address: str) -> bool:
    host = split_host(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
