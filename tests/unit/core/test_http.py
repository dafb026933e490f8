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
        ("ht\0tp", "h", "/a", ""),  # a NUL in a part: the self-delimiting form
        ("http", "h\0", "/a", ""),
        ("\0", "\0", "\0", "\0"),
    ],
)
def test_text_fingerprint_is_fingerprint_of_the_encoded_parts(parts: tuple[str, ...]) -> None:
    assert text_fingerprint(parts) == fingerprint([p.encode() for p in parts])


def test_parts_never_shift_into_each_other() -> None:
    assert text_fingerprint(("a\0b", "c")) != text_fingerprint(("a", "b\0c"))
    assert text_fingerprint(("ab", "c")) != text_fingerprint(("a", "bc"))
