"""Properties of the sans-I/O MQTT 3.1.1 codec (firmware/pb/net/mqtt.py), run on
CPython; test_micropython_parity.py checks MicroPython decodes the same."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from firmware.pb.errors import ProtocolError
from firmware.pb.net import mqtt
from firmware.pb.peer import mqtt_broker as mqtt_peer

from .strategies import mutated, packets, publish_packets, raw_publish, split, utf8ish

# Every code the decoder may give (see mqtt.parse and Decoder.feed).
DECODE_CODES = {"malformed", "too_large", "unsupported_qos", "bad_topic", "unsupported_version"}
MAX_SIZES = st.sampled_from((4, 32, 256, 8192))


def feed_all(chunks: list[bytes], max_size: int = 8192) -> list[Any]:
    decoder = mqtt_peer.decoder(max_size)
    out: list[Any] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def decode_or_error(chunks: list[bytes], max_size: int) -> list[Any] | ProtocolError:
    """The packets, or the ProtocolError; any other exception escapes."""
    try:
        return feed_all(chunks, max_size)
    except ProtocolError as exc:
        assert isinstance(exc.code, str) and exc.code in DECODE_CODES, exc.code
        assert isinstance(exc.message, str) and exc.message
        return exc


def raises_code(code: str, data: bytes, max_size: int = 8192) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        feed_all([data], max_size)
    assert info.value.code == code, info.value.message
    return info.value


# ---- round trips ------------------------------------------------------------


@given(packets)
def test_every_packet_round_trips(packet: tuple[Any, ...]) -> None:
    assert feed_all([mqtt_peer.encode(packet)]) == [packet]


@given(packets)
def test_parse_is_the_inverse_of_encode(packet: tuple[Any, ...]) -> None:
    data = mqtt_peer.encode(packet)
    length, used = mqtt.decode_length(data)
    assert 1 + used + length == len(data)
    assert mqtt_peer.parse(data[0], data[1 + used :]) == packet


@settings(deadline=None)
@given(st.lists(packets, min_size=1, max_size=6), st.data())
def test_concatenated_packets_split_anywhere_decode_in_order(
    packet_list: list[Any], data: st.DataObject
) -> None:
    stream = b"".join(mqtt_peer.encode(p) for p in packet_list)
    chunks = data.draw(split(stream))
    assert feed_all(chunks) == packet_list


@given(st.lists(packets, min_size=1, max_size=4))
def test_packets_fed_one_byte_at_a_time_decode(packet_list: list[Any]) -> None:
    stream = b"".join(mqtt_peer.encode(p) for p in packet_list)
    assert feed_all([stream[i : i + 1] for i in range(len(stream))]) == packet_list


@given(publish_packets(), st.integers(0, 300))
def test_publish_header_then_payload_equals_publish(packet: tuple[Any, ...], extra: int) -> None:
    _, topic, payload, qos, retain, dup, pid = packet
    payload += bytes(extra)
    header = mqtt.publish_header(topic, len(payload), qos, retain, dup, pid)
    assert header + payload == mqtt_peer.publish(topic, payload, qos, retain, dup, pid)
    assert feed_all([header, payload]) == [(mqtt.PUBLISH, topic, payload, qos, retain, dup, pid)]


# ---- remaining length -------------------------------------------------------


@example(0)
@example(127)
@example(128)
@example(16383)
@example(16384)
@example(2097151)
@example(2097152)
@example(mqtt.MAX_REMAINING)
@given(st.integers(0, mqtt.MAX_REMAINING))
def test_remaining_length_round_trips(n: int) -> None:
    encoded = mqtt.encode_length(n)
    assert len(encoded) == 1 + (n > 127) + (n > 16383) + (n > 2097151)  # the shortest form
    assert mqtt.decode_length(encoded, 0) == (n, len(encoded))
    assert mqtt.decode_length(b"\x30" + encoded) == (n, len(encoded))
    for cut in range(len(encoded)):
        assert mqtt.decode_length(encoded[:cut], 0) is None


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=mqtt.MAX_REMAINING + 1)))
def test_remaining_length_out_of_range_is_refused(n: int) -> None:
    with pytest.raises(ProtocolError) as info:
        mqtt.encode_length(n)
    assert info.value.code == "too_large"


def test_five_byte_remaining_length_raises() -> None:
    with pytest.raises(ProtocolError) as info:
        mqtt.decode_length(b"\xff\xff\xff\xff\x01", 0)
    assert info.value.code == "malformed"
    raises_code("malformed", b"\x30\xff\xff\xff\xff\x7f")
    with pytest.raises(ProtocolError):
        feed_all([b"\x30", b"\x80", b"\x80\x80", b"\x80"])


# ---- garbage in: packets or ProtocolError, nothing else ----------------------


@settings(deadline=None)
@given(st.binary(max_size=300), MAX_SIZES, st.data())
def test_arbitrary_bytes_give_packets_or_protocol_error(
    garbage: bytes, max_size: int, data: st.DataObject
) -> None:
    got = decode_or_error(data.draw(split(garbage)), max_size)
    if not isinstance(got, ProtocolError):
        assert_reencodable(got)


@settings(deadline=None)
@given(st.lists(packets, min_size=1, max_size=4), MAX_SIZES, st.data())
def test_mutated_packets_give_packets_or_protocol_error(
    packet_list: list[Any], max_size: int, data: st.DataObject
) -> None:
    stream = data.draw(mutated(b"".join(mqtt_peer.encode(p) for p in packet_list)))
    got = decode_or_error(data.draw(split(stream)), max_size)
    if not isinstance(got, ProtocolError):
        assert_reencodable(got)


def assert_reencodable(got: list[Any]) -> None:
    """Whatever the decoder accepts, the encoder can write back."""
    for packet in got:
        if packet[0] != mqtt.SKIPPED:
            assert feed_all([mqtt_peer.encode(packet)]) == [packet]


# ---- strings ----------------------------------------------------------------


def strict_utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeError:
        return None


@given(utf8ish | st.binary(max_size=12))
def test_valid_utf8_agrees_with_cpython(data: bytes) -> None:
    assert mqtt.valid_utf8(data) == (strict_utf8(data) is not None)


@given(utf8ish)
def test_decode_utf8_is_strict(data: bytes) -> None:
    expected = strict_utf8(data)
    if expected is None:
        with pytest.raises(UnicodeError):
            mqtt.decode_utf8(data)
    else:
        assert mqtt.decode_utf8(data) == expected


@pytest.mark.parametrize(
    "topic",
    [
        b"\xff",
        b"a/\xc3",  # cut short
        b"\xc0\xaf",  # an overlong "/"
        b"\xe0\x80\xaf",  # a longer overlong "/"
        b"\xc0\x80",  # an overlong NUL
        b"\xed\xa0\x80",  # U+D800, a surrogate
        b"\xed\xbf\xbf",  # U+DFFF
        b"\xf4\x90\x80\x80",  # U+110000, past the last code point
        b"\xf8\x88\x80\x80\x80",  # a five-byte form
    ],
)
def test_invalid_utf8_topic_raises(topic: bytes) -> None:
    raises_code("malformed", raw_publish(topic, b"payload"))


@pytest.mark.parametrize("topic", [b"a/+/c", b"+", b"a/#", b"#", b"sport+"])
def test_wildcard_in_publish_topic_raises_bad_topic(topic: bytes) -> None:
    raises_code("bad_topic", raw_publish(topic))
    with pytest.raises(ProtocolError) as info:
        mqtt_peer.publish(topic.decode(), b"")
    assert info.value.code == "bad_topic"


def test_empty_publish_topic_raises_bad_topic() -> None:
    raises_code("bad_topic", raw_publish(b""))


def test_nul_in_topic_raises() -> None:
    raises_code("malformed", raw_publish(b"a\x00b"))


def test_utf8_topic_decodes() -> None:
    topic = "pb/dév/😀"
    assert feed_all([raw_publish(topic.encode(), b"x")]) == [(mqtt.PUBLISH, topic, b"x", 0, False, False, 0)]


# ---- size limits ------------------------------------------------------------


@settings(deadline=None)
@given(publish_packets(st.binary(min_size=600, max_size=3000)), st.lists(packets, max_size=3), st.data())
def test_oversized_publish_is_skipped_and_the_next_packet_decodes(
    big: tuple[Any, ...], after: list[Any], data: st.DataObject
) -> None:
    encoded = mqtt_peer.encode(big)
    remaining, _ = mqtt.decode_length(encoded)
    rest = b"".join(mqtt_peer.encode(p) for p in after) + mqtt_peer.pingresp()
    assert len(rest) < 512 < remaining
    chunks = data.draw(split(encoded + rest))
    _, topic, _, qos, _, _, pid = big
    head = (topic, qos, pid) if len(topic.encode()) <= 255 else (None, 0, 0)
    skipped = (mqtt.SKIPPED, remaining, *head)
    assert feed_all(chunks, max_size=512) == [skipped, *after, (mqtt.PINGRESP,)]


def test_publish_of_exactly_max_size_is_kept() -> None:
    packet = (mqtt.PUBLISH, "t", bytes(61), 0, False, False, 0)  # 2 + 1 + 61 = 64 bytes of body
    assert feed_all([mqtt_peer.encode(packet)], max_size=64) == [packet]
    assert feed_all([mqtt_peer.encode(packet)], max_size=63) == [(mqtt.SKIPPED, 64, "t", 0, 0)]


def test_oversized_qos1_publish_reports_its_packet_id_for_the_ack() -> None:
    packet = (mqtt.PUBLISH, "pb/d/cmd", bytes(100), 1, False, False, 513)
    assert feed_all([mqtt_peer.encode(packet)], max_size=50) == [(mqtt.SKIPPED, 112, "pb/d/cmd", 1, 513)]


def test_oversized_non_publish_raises_too_large() -> None:
    sub = mqtt.subscribe(7, [("a/very/long/filter/" + "x" * 100, 1)])
    raises_code("too_large", sub, max_size=64)
    # refused from the header alone, before any of the body arrives
    with pytest.raises(ProtocolError) as info:
        mqtt_peer.decoder(64).feed(sub[:3])
    assert info.value.code == "too_large"


def test_huge_remaining_length_of_a_non_publish_raises_too_large() -> None:
    raises_code("too_large", b"\x90" + mqtt.encode_length(mqtt.MAX_REMAINING))


# ---- malformed headers and fields -------------------------------------------


def test_qos2_publish_raises_unsupported_qos() -> None:
    raises_code("unsupported_qos", raw_publish(b"t", b"\x00\x01payload", first=0x34))


def test_qos3_publish_is_malformed() -> None:
    raises_code("malformed", raw_publish(b"t", b"\x00\x01", first=0x36))


def test_dup_on_a_qos0_publish_is_malformed() -> None:
    raises_code("malformed", raw_publish(b"t", b"", first=0x38))


def test_packet_id_zero_is_malformed() -> None:
    raises_code("malformed", raw_publish(b"t", b"\x00\x00", first=0x32))
    raises_code("malformed", b"\x40\x02\x00\x00")


@pytest.mark.parametrize(
    "data", [b"\x41\x02\x00\x01", b"\x80\x05\x00\x01\x00\x01a", b"\xc1\x00", b"\x21\x02\x00\x00"]
)
def test_wrong_fixed_header_flags_are_malformed(data: bytes) -> None:
    raises_code("malformed", data)


@pytest.mark.parametrize("first", [0x00, 0x50, 0x60, 0x70, 0xF0])
def test_unknown_packet_types_are_malformed(first: int) -> None:
    raises_code("malformed", bytes((first, 0)))


def test_trailing_bytes_are_malformed() -> None:
    raises_code("malformed", b"\xc0\x01\x00")
    raises_code("malformed", b"\x40\x03\x00\x01\x00")


def test_connect_of_another_protocol_level_is_unsupported_version() -> None:
    data = bytearray(mqtt.connect("dev", 30))
    data[8] = 3  # the protocol level byte
    raises_code("unsupported_version", bytes(data))


def test_subscribe_asking_for_qos2_is_unsupported_qos() -> None:
    raises_code("unsupported_qos", b"\x82\x06\x00\x01\x00\x01a\x02")
    raises_code("malformed", b"\x82\x06\x00\x01\x00\x01a\x03")


def test_connack_reasons_cover_every_refusal() -> None:
    for code in range(1, 6):
        assert feed_all([mqtt_peer.connack(False, code)]) == [(mqtt.CONNACK, False, code)]
        assert code in mqtt.CONNACK_REASONS
    raises_code("malformed", mqtt_peer.connack(False, 6))
