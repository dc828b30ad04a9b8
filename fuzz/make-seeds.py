#!/usr/bin/env python3
"""Writes the seed corpus in corpus/<target>/: real hub records as the tests and
stock clients send them. Rerun after changing the input format of a target; the
files are committed, what libFuzzer adds goes to grown/ (not committed)."""

import os
import struct

RS = b"\x1e"
HERE = os.path.dirname(os.path.abspath(__file__))


def mp(v):
    """A minimal MessagePack encoder for the seeds (no dependency needed)."""
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack("b", v)
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        return (bytes([0xA0 | len(b)]) if len(b) < 32 else b"\xd9" + bytes([len(b)])) + b
    if isinstance(v, bytes):
        return b"\xc4" + bytes([len(v)]) + v
    if isinstance(v, list):
        return bytes([0x90 | len(v)]) + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        return bytes([0x80 | len(v)]) + b"".join(mp(k) + mp(x) for k, x in v.items())
    if isinstance(v, tuple) and v[0] == "ts":  # timestamp extension, 64-bit form
        return b"\xd7\xff" + struct.pack(">Q", (v[2] << 34) | v[1])
    raise TypeError(v)


def framed(message):
    body = mp(message)
    n, prefix = len(body), b""
    while True:
        low = n & 0x7F
        n >>= 7
        prefix += bytes([low | (0x80 if n else 0)])
        if not n:
            return prefix + body


JSON = [
    b'{"type":1,"invocationId":"1","target":"SendMessage","arguments":["room","hello"]}',
    b'{"type":1,"target":"JoinGroup","arguments":["room"]}',
    b'{"type":1,"invocationId":"2","target":"GetHistory","arguments":["room",null,50]}',
    b'{"type":1,"invocationId":"3","target":"Echo","arguments":[{"a":[1,2.5,-3e10,true,false,null],"b":"\\u00e9\\ud83d\\ude00\\n"}],"streamIds":[]}',
    b'{"type":2,"invocationId":"4","item":18446744073709551615}',
    b'{"type":3,"invocationId":"1","result":{"id":"m1","sentAt":"2026-11-28T06:17:54.123Z"}}',
    b'{"type":3,"invocationId":"1","error":"failed on purpose"}',
    b'{"type":3,"invocationId":"1"}',
    b'{"type":4,"invocationId":"5","target":"Counter","arguments":[10],"streamIds":["s1"]}',
    b'{"type":5,"invocationId":"5"}',
    b'{"type":6}',
    b'{"type":7,"error":"Connection closed with an error.","allowReconnect":true}',
    b'{"type":8,"sequenceId":1394}',
    b'{"type":9,"sequenceId":1}',
    b'{"type":1,"headers":{"k":"v"},"target":"x","arguments":[],"extra":{"ignored":[1]}}',
]

MSGPACK = [
    [1, {}, "1", "SendMessage", ["room", "hello"], []],
    [1, {}, None, "JoinGroup", ["room"]],
    [1, {"k": "v"}, "3", "Echo", [{"a": [1, 2.5, -7, True, None], "b": b"\x00\x01", "t": ("ts", 1764310674, 123000000)}], []],
    [2, {}, "4", 2**40],
    [3, {}, "1", 3, {"id": "m1"}],
    [3, {}, "1", 1, "failed on purpose"],
    [3, {}, "1", 2],
    [4, {}, "5", "Counter", [10], ["s1"]],
    [5, {}, "5"],
    [6],
    [7, "Connection closed with an error.", True],
    [8, 1394],
    [9, 1],
]


def write(target, name, data):
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


# Decoder inputs: [split, limit] then the stream (see src/lib.rs, Stream::split).
for i, record in enumerate(JSON):
    write("json_decoder", f"record-{i:02}", bytes([(i * 37) % 256, 255]) + record + RS)
write("json_decoder", "several", b"\x05\xff" + b"".join(r + RS for r in JSON[:6]))
write("json_decoder", "too-large", b"\x03\x01" + JSON[3] + RS)
write("json_decoder", "unfinished", b"\x07\xff" + JSON[0] + RS + JSON[1][:20])
for i, message in enumerate(MSGPACK):
    write("msgpack_decoder", f"record-{i:02}", bytes([(i * 37) % 256, 255]) + framed(message))
write("msgpack_decoder", "several", b"\x05\xff" + b"".join(framed(m) for m in MSGPACK[:6]))
write("msgpack_decoder", "too-large", b"\x03\x01" + framed(MSGPACK[2]))
write("msgpack_decoder", "unfinished", b"\x07\xff" + framed(MSGPACK[0]) + framed(MSGPACK[1])[:9])

HANDSHAKES = {
    "json-v1": b'{"protocol":"json","version":1}' + RS + JSON[0] + RS,
    "json-v2": b'{"protocol":"json","version":2}' + RS,
    "messagepack": b'{"protocol":"messagepack","version":1}' + RS + framed(MSGPACK[0]),
    "unknown-protocol": b'{"protocol":"xml\\n","version":1}' + RS,
    "bad-version": b'{"protocol":"json","version":99}' + RS,
    "response-ok": b"{}" + RS,
    "response-error": b'{"error":"The protocol \'xml\' is not supported."}' + RS,
    "no-separator": b'{"protocol":"json","version":1}',
}
for i, (name, stream) in enumerate(HANDSHAKES.items()):
    write("handshake", name, bytes([(i * 53) % 256, 255]) + stream)

# negotiate: requests separated by "\n===\n" (see fuzz_targets/negotiate.rs).
def requests(*items):
    return b"\n===\n".join(items)

NEGOTIATE = b"POST /hub/negotiate?negotiateVersion=1\nAuthorization: Bearer alice\n\n"
HS = b'{"protocol":"json","version":1}' + RS
CALL = JSON[2] + RS + JSON[0] + RS
write("negotiate", "negotiate-v1", NEGOTIATE)
write("negotiate", "negotiate-v0-query", b"POST /hub/negotiate?access_token=bob\n\n")
write("negotiate", "negotiate-bad-version", b"POST /hub/negotiate?negotiateVersion=x&access_token=a\n\n")
write("negotiate", "no-identity", b"POST /hub/negotiate?negotiateVersion=1\n\n")
write("negotiate", "long-polling", requests(
    NEGOTIATE,
    b"GET /hub?id={id}&access_token=alice\n\n",
    b"POST /hub?id={id}\nAuthorization: Bearer alice\nContent-Type: text/plain\n\n" + HS,
    b"GET /hub?id={id}&access_token=alice\n\n",
    b"POST /hub?id={id}&access_token=alice\n\n" + CALL,
    b"GET /hub?id={id}&access_token=alice\n\n",
    b"DELETE /hub?id={id}&access_token=alice\n\n",
))
write("negotiate", "sse", requests(
    NEGOTIATE,
    b"GET /hub?id={id}\nAuthorization: Bearer alice\nAccept: text/event-stream\n\n",
    b"POST /hub?id={id}\nAuthorization: Bearer alice\n\n" + HS + CALL,
    b"POST /hub?id={id}\nAuthorization: Bearer alice\n\n" + b'{"type":7}' + RS,
))
write("negotiate", "messagepack-long-polling", requests(
    NEGOTIATE,
    b"GET /hub?id={id}&access_token=alice\n\n",
    b"POST /hub?id={id}&access_token=alice\n\n" + b'{"protocol":"messagepack","version":1}' + RS
    + framed(MSGPACK[0]) + framed(MSGPACK[1]),
    b"GET /hub?id={id}&access_token=alice\n\n",
))
write("negotiate", "websocket", requests(
    NEGOTIATE,
    b"GET /hub?id={id}&access_token=alice\nConnection: Upgrade\nUpgrade: websocket\n"
    b"Sec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\n",
))
write("negotiate", "other-user", requests(
    NEGOTIATE,
    b"GET /hub?id={id}&access_token=mallory\n\n",
    b"POST /hub?id=unknown&access_token=alice\n\n" + HS,
    b"DELETE /hub?access_token=alice\n\n",
))
