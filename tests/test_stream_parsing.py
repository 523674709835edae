"""The stream parser is pure: tested here without any network."""

from __future__ import annotations

import json

import pytest

from gptalk._stream import DONE, DeltaDecoder, LineSplitter, parse_data_line
from gptalk.errors import ProtocolError


def split_all(chunks: list[bytes]) -> list[bytes]:
    splitter = LineSplitter()
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    tail = splitter.flush()
    return [*lines, tail] if tail is not None else lines


def test_lines_split_across_chunks_and_crlf() -> None:
    assert split_all([b"da", b"ta: 1\r", b"\n\nevent: x\ndata: [DO", b"NE]"]) == [
        b"data: 1",
        b"",
        b"event: x",
        b"data: [DONE]",
    ]


def test_multibyte_utf8_split_inside_a_character_survives() -> None:
    line = 'data: {"content": "Осень 🍂 листья"}\n'.encode()
    chunks = [line[i : i + 1] for i in range(len(line))]  # one byte at a time
    [raw] = split_all(chunks)
    assert parse_data_line(raw) == "Осень 🍂 листья"


def test_very_long_line_fed_in_small_chunks() -> None:
    text = "x" * 300_000
    line = f"data: {json.dumps({'content': text})}\n".encode()
    chunks = [line[i : i + 1000] for i in range(0, len(line), 1000)]
    [raw] = split_all(chunks)
    assert parse_data_line(raw) == text


def test_parse_data_line_kinds() -> None:
    assert parse_data_line(b"") is None
    assert parse_data_line(b"event: message") is None
    assert parse_data_line(b": keep-alive") is None
    assert parse_data_line(b"data: [DONE]") is DONE
    assert parse_data_line(b'data: {"content": ""}') == ""
    assert parse_data_line(b'data: {"content": "a\\nb", "extra": 1}') == "a\nb"


@pytest.mark.parametrize(
    "line",
    [
        b"data: {not json",
        b'data: {"text": "no content key"}',
        b"data: []",
        b'data: "just a string"',
        b'data: {"content": 42}',
        b"data: \xff\xfe",
    ],
)
def test_malformed_data_lines_raise_protocol_error_with_excerpt(line: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_data_line(line)
    assert caught.value.endpoint == "stream"
    assert caught.value.excerpt
    assert len(caught.value.excerpt) < 300


def test_protocol_error_excerpt_is_trimmed_for_huge_lines() -> None:
    line = b"data: {" + b"y" * 100_000
    with pytest.raises(ProtocolError) as caught:
        parse_data_line(line)
    assert len(str(caught.value)) < 400
    assert "100007 chars" in caught.value.excerpt


def test_delta_decoder_yields_new_suffixes() -> None:
    decoder = DeltaDecoder()
    assert [decoder.delta(c) for c in ["", "Hel", "Hello", "Hello", "Hello 🌍!"]] == [
        "",
        "Hel",
        "lo",
        "",
        " 🌍!",
    ]
    assert decoder.text == "Hello 🌍!"
