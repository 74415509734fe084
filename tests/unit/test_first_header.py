"""`proxy.http.context.first_header` answers what Starlette's `request.headers.get(name, "")` answers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import Headers

from proxy.http.context import first_header

NAMES = st.sampled_from([b"content-length", b"content-type", b"x-api-key", b"authorization", b"host"])
#: Names as a server may hand them over: mostly lowercase (ASGI), some not, some unrelated.
RAW_NAMES = NAMES | st.binary(min_size=0, max_size=16) | NAMES.map(bytes.upper)
VALUES = st.binary(max_size=24)  # any bytes: latin-1 decodes them all


@given(fields=st.lists(st.tuples(RAW_NAMES, VALUES), max_size=8), name=NAMES)
def test_first_header_matches_starlette(fields: list[tuple[bytes, bytes]], name: bytes) -> None:
    expected = Headers(scope={"headers": list(fields)}).get(name.decode("latin-1"), "")
    assert (first_header({"headers": fields}, name) or "") == expected


def test_first_of_repeated_fields_and_missing() -> None:
    scope = {"headers": [(b"content-length", b"12"), (b"content-length", b"99")]}
    assert first_header(scope, b"content-length") == "12"
    assert first_header(scope, b"x-api-key") is None
