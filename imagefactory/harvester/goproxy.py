"""Which proxy a Go program's default HTTP client uses for a URL: the rules of Go's
`golang.org/x/net/http/httpproxy` (`Config.ProxyFunc`, `useProxy`), which Harvester's controllers
follow with the proxy environment its `http-proxy` setting gives them.

- `https://` URLs use `httpsProxy`, `http://` URLs `httpProxy`; no fallback from one to the other.
- Never proxied: the host `localhost` and loopback addresses.
- `noProxy` is a comma-separated list: `*` (nothing proxied); an IP address or CIDR (matches
  addresses only); a domain name, which matches itself and every subdomain (`foo.com` matches
  `foo.com` and `bar.foo.com`), or with a leading dot only its subdomains (`.foo.com`); any entry
  may carry `:port` and then matches only that port.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass


@dataclass(frozen=True)
class ProxyConfig:
    """Harvester's `http-proxy` setting (`{"httpProxy": ..., "httpsProxy": ..., "noProxy": ...}`)."""

    http_proxy: str = ""
    https_proxy: str = ""
    no_proxy: str = ""

    @classmethod
    def from_setting(cls, value: dict[str, str] | None) -> ProxyConfig:
        v = value or {}
        return cls(v.get("httpProxy", ""), v.get("httpsProxy", ""), v.get("noProxy", ""))

    def proxy_for(self, url: str) -> str | None:
        """The proxy URL a Go client would use for `url`, or None for a direct connection."""
        parts = urllib.parse.urlsplit(url)
        secure = parts.scheme == "https"
        proxy = self.https_proxy if secure else self.http_proxy if parts.scheme == "http" else ""
        if not proxy or not _use_proxy(parts.hostname or "", parts.port or (443 if secure else 80),
                                       self.no_proxy):
            return None
        return proxy if "://" in proxy else f"http://{proxy}"


def _use_proxy(host: str, port: int, no_proxy: str) -> bool:
    host = host.lower().rstrip(".")
    if host == "localhost":
        return False
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and ip.is_loopback:
        return False
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return False
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return False
            except ValueError:
                pass
            continue
        name, _, entry_port = entry.rpartition(":") if _has_port(entry) else (entry, "", "")
        if entry_port and int(entry_port) != port:
            continue
        name = name.rstrip(".")
        if name.startswith("."):
            if host.endswith(name):
                return False
        elif host == name or host.endswith("." + name):
            return False
    return True


def _has_port(entry: str) -> bool:
    head, sep, tail = entry.rpartition(":")
    return bool(sep) and tail.isdigit() and ":" not in head
