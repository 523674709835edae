"""The stream parser is pure: tested here without any network."""

from __future__ import annotations

import json
import random
import time

import pytest

from gptalk._stream import DONE, DeltaDecoder, LineSplitter, StreamDecoder, parse_data_line
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


@pytest.mark.parametrize(
    "line",
    [b'data: {"content": "my secret diagnosis"', b'data: {"content": ["my secret diagnosis"]}'],
)
def test_the_answer_stays_out_of_the_error_message(line: bytes) -> None:
    # str(exc) is what gets logged; the answer may be private. The excerpt stays on the
    # exception for debugging.
    with pytest.raises(ProtocolError) as caught:
        StreamDecoder().feed(line)
    assert "my secret diagnosis" in caught.value.excerpt
    assert "secret" not in str(caught.value)
    assert "secret" not in repr(caught.value)


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


# --- StreamDecoder: decodes only what each cumulative line adds ---------------------------


def old_decoder() -> object:
    """The reference: every line parsed in full, then the new suffix taken."""
    decoder = DeltaDecoder()

    def feed(raw: bytes) -> object:
        item = parse_data_line(raw)
        return decoder.delta(item) if isinstance(item, str) else item

    return feed


def outcomes(feed: object, lines: list[bytes]) -> list[object]:
    results: list[object] = []
    for raw in lines:
        try:
            results.append(feed(raw))  # type: ignore[operator]
        except ProtocolError as exc:
            results.append(("error", str(exc), exc.excerpt))
    return results


def test_surrogate_pair_escaped_across_two_lines() -> None:
    # A server counting UTF-16 units may cut between the halves of an emoji.
    lines = [
        b'data: {"content": "a\\ud83d"}',
        b'data: {"content": "a\\ud83d\\ude00b"}',
        b'data: {"content": "a\\ud83d\\ude00b\\ud83d"}',
        b'data: {"content": "a\\ud83d\\ude00b\\ud83d\\ude00"}',
    ]
    new = StreamDecoder()
    assert [new.feed(line) for line in lines] == ["a\ud83d", "b", "\ud83d", ""]
    assert outcomes(StreamDecoder().feed, lines) == outcomes(old_decoder(), lines)


def test_backslash_at_the_end_of_a_line() -> None:
    lines = [b'data: {"content": "a\\\\"}', b'data: {"content": "a\\\\\\"b"}']
    decoder = StreamDecoder()
    assert [decoder.feed(line) for line in lines] == ["a\\", '"b']


ALPHABET = [*"abc xyz", '"', "\\", "\n", "\t", "\x01", "/", "é", "Ж", "\u2028", "🍂", "😀"]


def utf16_units(text: str) -> list[str]:
    """The text as UTF-16 code units (lone surrogates for astral characters)."""
    units: list[str] = []
    for char in text:
        if ord(char) > 0xFFFF:
            code = ord(char) - 0x10000
            units += [chr(0xD800 + (code >> 10)), chr(0xDC00 + (code & 0x3FF))]
        else:
            units.append(char)
    return units


def random_stream(rng: random.Random) -> list[bytes]:
    """Lines of one answer as a server might send them, mostly well-formed."""
    text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 60)))
    ascii_only = rng.random() < 0.5
    units = utf16_units(text) if ascii_only and rng.random() < 0.5 else list(text)
    compact = rng.random() < 0.3
    lines: list[bytes] = []
    end = 0
    while end < len(units):
        end = min(len(units), end + rng.randint(1, 6))
        content = "".join(units[:end])
        roll = rng.random()
        if roll < 0.03:  # not cumulative: an earlier character changed
            content = "Z" + content[1:]
        elif roll < 0.05:
            content = content[: len(content) // 2]
        payload: object = {"content": content}
        if roll > 0.97:
            payload = {"content": content, "extra": 1}
        elif roll > 0.96:
            payload = {"other": 1, "content": content}
        separators = (",", ":") if compact else (", ", ": ")
        body = json.dumps(payload, ensure_ascii=ascii_only, separators=separators)
        if roll > 0.95 and roll <= 0.96:
            body = body[:-1]  # malformed: cut
        elif 0.94 < roll <= 0.95:
            body = body + "  "
        lines.append(b"data: " + body.encode("utf-8", "surrogatepass"))
        if rng.random() < 0.1:
            lines.append(rng.choice([b"", b": keep-alive", b"event: message", b"data: [DONE]"]))
    lines.append(b"data: [DONE]")
    return lines


@pytest.mark.parametrize("seed", range(40))
def test_stream_decoder_matches_the_full_parse(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(100):
        lines = random_stream(rng)
        assert outcomes(StreamDecoder().feed, lines) == outcomes(old_decoder(), lines), lines


def test_stream_decoder_work_follows_the_answer_not_the_wire() -> None:
    # 20k characters in 8-character steps: 2,500 lines, 27 MB, of which the full parse
    # decodes every byte and the stream decoder only compares most.
    text = ("Autumn leaves, «золото» 🍂 fall.\n" * 700)[:20_000]
    lines = [
        b"data: " + json.dumps({"content": text[:end]}, ensure_ascii=False).encode()
        for end in range(8, len(text) + 8, 8)
    ]

    def cpu(feed: object) -> float:
        started = time.process_time()
        outcomes(feed, lines)
        return time.process_time() - started

    assert "".join(outcomes(StreamDecoder().feed, lines)) == text  # type: ignore[arg-type]
    old, new = cpu(old_decoder()), cpu(StreamDecoder().feed)
    assert old > 3 * new, (old, new)
