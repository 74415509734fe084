"""`redact_url`: what the proxy logs of an upstream URL."""

from __future__ import annotations

import pytest

from proxy.logging import redact_url


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        ("https://api.anthropic.com", "https://api.anthropic.com"),
        ("http://user:secret@10.0.0.1:8080/base", "http://10.0.0.1:8080/base"),
        ("http://only-user@host", "http://host"),
        ("http://u:p@[::1]:9000", "http://[::1]:9000"),
        ("https://h/p?api_key=s1&x=1", "https://h/p?api_key=***&x=1"),
        ("https://h/?token=s2&sig=s3&Key=s4", "https://h/?token=***&sig=***&Key=***"),
        ("https://h/p#frag-with-secret", "https://h/p"),
        ("http://h:notaport", "<invalid url>"),
    ],
)
def test_credentials_are_removed(url: str, logged: str) -> None:
    assert redact_url(url) == logged
