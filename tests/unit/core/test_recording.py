from __future__ import annotations

from typing import Any

from asgi_perf._core.recording import RecordedResponse, ResponseRecorder, encode_response


def test_round_trip_keeps_headers_exactly() -> None:
    headers = [(b"content-type", b"text/plain"), (b"set-x", b"1"), (b"set-x", b"2"), (b"e", b"")]
    original = RecordedResponse(203, headers, b"\x00body\xff", created=1234.5)
    decoded = RecordedResponse.decode(original.encode())
    assert decoded is not None
    assert (decoded.status, decoded.headers, decoded.body, decoded.created) == (
        203,
        headers,
        b"\x00body\xff",
        1234.5,
    )


def test_fields_seen_before_encode_the_same() -> None:
    """The encoded fields remembered between responses change nothing in a record, and a
    field that is not remembered (a bytearray value, a large one) is encoded all the same."""
    headers = [(b"content-type", b"text/plain"), (b"x", bytearray(b"y")), (b"big", b"z" * 300)]
    first = encode_response(200, headers, b"body", 1.0)
    assert encode_response(200, headers, b"body", 1.0) == first
    decoded = RecordedResponse.decode(first)
    assert decoded is not None
    assert decoded.headers == [(b"content-type", b"text/plain"), (b"x", b"y"), (b"big", b"z" * 300)]


def test_garbage_decodes_to_none() -> None:
    assert RecordedResponse.decode(b"") is None
    assert RecordedResponse.decode(b"not a record at all") is None
    good = RecordedResponse(200, [(b"a", b"b" * 100)], b"x").encode()
    assert RecordedResponse.decode(good[:20]) is None


async def test_recorder_forwards_and_bounds() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    rec = ResponseRecorder(send, max_body=10)
    await rec({"type": "http.response.start", "status": 200, "headers": []})
    await rec({"type": "http.response.body", "body": b"12345", "more_body": True})
    assert rec.result() is None and not rec.complete
    await rec({"type": "http.response.body", "body": b"678"})
    assert len(sent) == 3
    result = rec.result()
    assert result is not None and result.body == b"12345678"

    big = ResponseRecorder(send, max_body=4)
    await big({"type": "http.response.start", "status": 200, "headers": []})
    await big({"type": "http.response.body", "body": b"12345"})
    assert big.complete and big.overflow and big.result() is None
