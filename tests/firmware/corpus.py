# Runs a corpus of decoding cases and reports each outcome as plain JSON data.
#
# The same source runs on CPython (imported) and on MicroPython (sent as a
# snippet by test_micropython_parity.py), so it keeps to the common subset:
# no imports beyond struct and json, no annotations, no CPython-only methods.
#
# A case is a list whose first item names it:
#   ["mqtt", max_size, [hex chunk, ...]]   Decoder(max_size).feed() each chunk
#   ["proto", kind, hex payload]           proto.decode(kind, payload)
#   ["topic", hex UTF-8 topic]             proto.parse_topic(topic)
#   ["valid_id", hex UTF-8 text]           proto.valid_id(text)
#   ["utf8", hex bytes]                    mqtt.decode_utf8(bytes)
#   ["length", n]                          decode_length(encode_length(n), 0)
# An outcome is ["ok", value], ["err", code(, packets so far)] for a
# ProtocolError, or ["crash", exception type, message] for anything else.
import json
import struct


def _key(k):
    return (type(k).__name__, str(k))


def canon(v):
    """v as JSON data that keeps every distinction Python makes (bool and
    int, int and float, tuple and list, a float's exact bits, code points),
    so outcomes from two interpreters are equal only if the values are."""
    if v is None:
        return None
    if isinstance(v, bool):  # first: on CPython a bool is also an int
        return ["bool", v]
    if isinstance(v, int):
        return ["int", str(v)]
    if isinstance(v, float):
        return ["float", struct.pack(">d", v).hex()]
    if isinstance(v, str):
        return ["str", [ord(c) for c in v]]
    if isinstance(v, (bytes, bytearray)):
        return ["bytes", bytes(v).hex()]
    if isinstance(v, tuple):
        return ["tuple", [canon(x) for x in v]]
    if isinstance(v, list):
        return ["list", [canon(x) for x in v]]
    if isinstance(v, dict):
        return ["dict", [[canon(k), canon(v[k])] for k in sorted(v.keys(), key=_key)]]
    return ["other", type(v).__name__]


def _text(hexed):
    return bytes.fromhex(hexed).decode("utf-8")


def _call(case, mqtt, proto):
    what = case[0]
    if what == "proto":
        return proto.decode(case[1], bytes.fromhex(case[2]))
    if what == "topic":
        return proto.parse_topic(_text(case[1]))
    if what == "valid_id":
        return proto.valid_id(_text(case[1]))
    if what == "utf8":
        return mqtt.decode_utf8(bytes.fromhex(case[1]))
    if what == "length":
        return mqtt.decode_length(mqtt.encode_length(case[1]), 0)
    raise KeyError(what)


def run_case(case, mqtt, proto, errors):
    """The outcome of one case."""
    got = []
    try:
        if case[0] == "mqtt":
            decoder = mqtt.decoder(case[1])
            for chunk in case[2]:
                got.extend(decoder.feed(bytes.fromhex(chunk)))
            return ["ok", canon(got)]
        return ["ok", canon(_call(case, mqtt, proto))]
    except errors.ProtocolError as exc:
        if case[0] == "mqtt":
            return ["err", exc.code, canon(got)]
        return ["err", exc.code]
    except Exception as exc:  # noqa: BLE001 - a crash is an outcome to compare, not to hide
        if case[0] == "utf8" and isinstance(exc, UnicodeError):
            return ["err", "UnicodeError"]
        return ["crash", type(exc).__name__, str(exc)]


def run_corpus(cases, mqtt, proto, errors):
    return [run_case(case, mqtt, proto, errors) for case in cases]


# The MicroPython entry point (test_micropython_parity.py appends a call to
# it): one case per line in, one outcome per line out, so memory stays flat
# however large the corpus.
def micropython_main(path):
    import pb.errors
    import pb.peer.mqtt_broker
    import pb.peer.protocol

    with open(path) as f:
        while True:
            line = f.readline()
            if not line:
                break
            print(json.dumps(run_case(json.loads(line), pb.peer.mqtt_broker, pb.peer.protocol, pb.errors)))
