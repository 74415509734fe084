"""Which upstream calls go through a forward proxy: `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY`.

The variables are read once, by the standard library's own rules (`urllib.request.getproxies`: the
lower-case name wins over the upper-case one, and `HTTP_PROXY` is ignored inside a CGI request);
`NO_PROXY` is matched by `urllib.request.proxy_bypass_environment` (`*`, exact hosts, domain suffixes
with or without a leading dot, `host:port`), plus CIDR blocks such as `10.0.0.0/8`, which many
deployments put there and the standard library does not understand.

Only `http://` proxies are supported (plain HTTP to the proxy; https upstreams go through a `CONNECT`
tunnel, so TLS stays end to end). Credentials in the proxy URL become a `Proxy-Authorization: Basic`
header; they never appear in an error message or a `repr`.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class ForwardProxy:
    """An http forward proxy; `authorization` is the `Proxy-Authorization` value, if any."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> ForwardProxy:
        """Raises ValueError with a message that never repeats the URL (it may hold a password)."""
        if "://" not in url:
            url = "http://" + url  # `proxy:3128`, as curl and httpx read it
        try:
            parts = urlsplit(url)
            port = parts.port or 80
        except ValueError:
            raise ValueError("the forward proxy URL is not a valid URL") from None
        if parts.scheme != "http":
            raise ValueError(
                f"forward proxy scheme {parts.scheme!r} is not supported (only http:// proxies are)"
            )
        if not parts.hostname:
            raise ValueError("the forward proxy URL has no host")
        authorization = None
        if parts.username is not None or parts.password is not None:
            credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")
        return cls(parts.hostname, port, authorization)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"  # never the credentials


class Egress:
    """The forward proxy (if any) for each upstream, decided from the proxy settings."""

    def __init__(self, proxies: Mapping[str, str]) -> None:
        """`proxies` in `urllib.request.getproxies()`'s shape: {"http": url, "https": url, "no": list}."""
        self._by_scheme = {
            scheme: ForwardProxy.parse(proxies[scheme]) for scheme in ("http", "https") if proxies.get(scheme)
        }
        self._no_proxy = proxies.get("no", "") or ""
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in self._no_proxy.split(","):
            if "/" in entry:
                with contextlib.suppress(ValueError):  # not a network: proxy_bypass_environment's entry
                    self._networks.append(ipaddress.ip_network(entry.strip(), strict=False))

    @classmethod
    def from_environment(cls) -> Egress | None:
        """None when no proxy is configured: the common case costs nothing per request."""
        egress = cls(urllib.request.getproxies())
        return egress if egress._by_scheme else None

    def proxy_for(self, host: str, port: int, tls: bool) -> ForwardProxy | None:
        proxy = self._by_scheme.get("https" if tls else "http")
        if proxy is None or self.bypass(host, port):
            return None
        return proxy

    def bypass(self, host: str, port: int) -> bool:
        """True when `NO_PROXY` names this host (or host:port, or a network holding its address)."""
        if not self._no_proxy:
            return False
        settings = {"no": self._no_proxy}
        matches = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # not in typeshed
        bracketed = f"[{host}]" if ":" in host else host
        if matches(host, settings) or matches(f"{bracketed}:{port}", settings):
            return True
        if self._networks:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                return False
            return any(address in network for network in self._networks)
        return False
