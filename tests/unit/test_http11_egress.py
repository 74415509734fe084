"""Which calls go through the forward proxy: the proxy URL's forms and `NO_PROXY`'s entries, read the way
the standard library reads them (tests/e2e/test_forward_proxy.py sends real traffic through tinyproxy)."""

from __future__ import annotations

import base64

import pytest

from proxy.upstream.egress import Egress, ForwardProxy
from proxy.upstream.http11 import ConnectionPool, Target


def test_proxy_urls() -> None:
    assert ForwardProxy.parse("proxy.internal:3128") == ForwardProxy("proxy.internal", 3128)
    assert ForwardProxy.parse("http://proxy.internal") == ForwardProxy("proxy.internal", 80)
    secret = ForwardProxy.parse("http://us%40er:p%3Ass@[::1]:3128")
    assert (secret.host, secret.port) == ("::1", 3128)
    assert secret.authorization == "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    assert "p%3Ass" not in repr(secret) and "p:ss" not in repr(secret) and str(secret) == "http://[::1]:3128"


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypassed"),
    [
        ("", "api.anthropic.com", 443, False),
        ("*", "api.anthropic.com", 443, True),
        ("anthropic.com", "api.anthropic.com", 443, True),
        (".anthropic.com", "api.anthropic.com", 443, True),
        ("thropic.com", "api.anthropic.com", 443, False),
        ("api.anthropic.com:8443", "api.anthropic.com", 443, False),
        ("api.anthropic.com:8443", "api.anthropic.com", 8443, True),
        ("localhost, 127.0.0.1", "127.0.0.1", 80, True),
        ("10.0.0.0/8", "10.1.2.3", 80, True),
        ("10.0.0.0/8", "11.1.2.3", 80, False),
        ("::1", "::1", 80, True),
        ("fd00::/8", "fd12::1", 80, True),
    ],
)
def test_no_proxy(no_proxy: str, host: str, port: int, bypassed: bool) -> None:
    egress = Egress({"http": "http://proxy:3128", "https": "http://proxy:3128", "no": no_proxy})
    assert (egress.proxy_for(host, port, tls=port == 443) is None) is bypassed


def test_the_environment_is_read_once_with_lower_case_names_first(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "REQUEST_METHOD",
    ):
        monkeypatch.delenv(name, raising=False)
    assert ConnectionPool(1, 1).proxy_for(Target.parse("https://api.anthropic.com/v1/complete")) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://upper:3128")
    monkeypatch.setenv("https_proxy", "http://lower:3128")
    pool = ConnectionPool(1, 1)
    proxy = pool.proxy_for(Target.parse("https://api.anthropic.com/v1/complete"))
    assert proxy is not None and proxy.host == "lower"
    assert pool.proxy_for(Target.parse("http://api.anthropic.com/v1/complete")) is None  # no HTTP_PROXY
    monkeypatch.setenv("https_proxy", "http://changed:3128")
    assert pool.proxy_for(Target.parse("https://api.anthropic.com/v1/complete")) == proxy  # read once
    assert ConnectionPool(1, 1, proxies={}).proxy_for(Target.parse("https://api.anthropic.com/x")) is None
