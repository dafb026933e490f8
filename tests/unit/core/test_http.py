"""The request fingerprints every layer keys on."""

from __future__ import annotations

import pytest

from asgi_perf._core.http import fingerprint, text_fingerprint


@pytest.mark.parametrize(
    "parts",
    [
        ("http", "example.com", "/a", "q=1"),
        ("https", "", "/", ""),
        ("http", "h", "/caf\u00e9", ""),  # UTF-8, as fingerprint's callers encode it
        ("http", "h:8080", "/a%20b", "x=1&y=2"),
    ],
)
def test_text_fingerprint_is_fingerprint_of_the_encoded_parts(parts: tuple[str, ...]) -> None:
    """Tags written before (``fingerprint`` of the encoded parts) stay the tags written now."""
    assert text_fingerprint("\0".join(parts)) == fingerprint([p.encode() for p in parts])
