"""Interop suite: the Python SignalR client signalrcore (pinned in
tests/requirements.txt), unchanged, against a running Next Chat server.

    .venv/bin/python tests/interop/python/interop.py http://127.0.0.1:PORT/next-chat

With NEXT_CHAT_JWT_SECRET set, the server is taken to run `--auth jwt` with that
HS256 secret, and each client's credential is a JWT whose sub is its user.

Runs the chat scenario over WebSockets with the client's default (negotiated)
connection and handshake, once with JSON and once with MessagePack, prints one
PASS/FAIL line per combination and exits non-zero if any failed. Every wait is
an event with a deadline. signalrcore delivers callbacks on its receive thread,
so each connection keeps an ordered, lock-protected log of what arrived.
"""

import base64
import collections
import hashlib
import hmac
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

import msgpack
from signalrcore.hub_connection_builder import HubConnectionBuilder
from signalrcore.types import HttpTransportType, HubProtocolEncoding

TIMEOUT_S = float(os.environ.get("INTEROP_TIMEOUT_MS", "15000")) / 1000
TEXT_LIMIT = 16384
RUN_ID = f"{int(time.time() * 1000):x}-{uuid.uuid4().hex[:6]}"
# Set when the server runs `--auth jwt` with this HS256 secret.
JWT_SECRET = os.environ.get("NEXT_CHAT_JWT_SECRET", "").encode()


def mint_jwt(sub, lifetime_s=600):
    """An HS256 JWT for `sub`, as an identity provider would mint it."""
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"sub": sub, "exp": int(time.time()) + lifetime_s}).encode())
    signature = hmac.new(JWT_SECRET, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


class CheckError(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckError(message)


def show(value):
    text = repr(value)
    return text if len(text) <= 300 else f"{text[:300]}…({len(text)} chars)"


# signalrcore logs through one process-wide logger; keep its last lines so a
# failure can show what went over the wire.
LOG_LINES = collections.deque(maxlen=60)


class _Recorder(logging.Handler):
    def emit(self, record):
        text = record.getMessage()
        LOG_LINES.append(f"[{record.levelname}] {record.threadName}: {text[:400]}")


class Client:
    """One user's connection with an ordered log of callbacks and completions."""

    def __init__(self, url, protocol, user, identity):
        self.user = user
        self.protocol = protocol
        self.events = []
        self.cond = threading.Condition()
        self.pending = {}
        # Against `--auth jwt` the credential is a JWT whose sub is the user.
        credential = mint_jwt(user) if JWT_SECRET else user
        if identity == "header":
            # Identity in a header the application sets: `Authorization: <user>`
            # (`Bearer <jwt>` against `--auth jwt`).
            options = {"headers": {"Authorization": f"Bearer {credential}" if JWT_SECRET else user}}
        else:
            # Identity from a token factory: `Authorization: Bearer <credential>`.
            options = {"access_token_factory": lambda: credential}
        options["transport"] = HttpTransportType.web_sockets
        builder = HubConnectionBuilder().with_url(url, options=options)
        if protocol == "messagepack":
            builder = builder.with_hub_protocol(HubProtocolEncoding.binary)
        self.conn = builder.build()
        self.conn.on("OnMessage", lambda args: self.record("OnMessage", args))
        self.conn.on("OnHistory", lambda args: self.record("OnHistory", args))
        self.conn.on_open(lambda: self.record("open", []))
        self.conn.on_close(lambda: self.record("closed", []))
        self.conn.on_error(self._on_error)

    def record(self, kind, args):
        with self.cond:
            self.events.append((kind, args))
            self.cond.notify_all()

    def wait_for(self, what, match, start=0):
        """Waits for the first event at or after `start` that matches; returns its index."""
        found = []

        def test():
            for i in range(start, len(self.events)):
                if match(self.events[i]):
                    found.append(i)
                    return True
            return False

        with self.cond:
            if not self.cond.wait_for(test, timeout=TIMEOUT_S):
                kinds = [k for k, _ in self.events[start:]]
                raise CheckError(f"{self.user}: timed out after {TIMEOUT_S} s waiting for {what}; events since: {kinds}")
        return found[0]

    def start(self):
        self.conn.start()
        self.wait_for("the handshake (on_open)", lambda e: e[0] == "open")

    def _on_error(self, message):
        invocation_id = getattr(message, "invocation_id", None)
        if invocation_id in self.pending:
            self.record("completion", [invocation_id, None, message.error])
        else:
            self.record("error", [message])

    def _on_completion(self, message):
        self.record("completion", [message.invocation_id, message.result, None])

    def _invoke(self, method, args):
        invocation_id = str(uuid.uuid4())
        self.pending[invocation_id] = method
        start = len(self.events)
        self.conn.send(method, args, on_invocation=self._on_completion, invocation_id=invocation_id)
        at = self.wait_for(f"{method} completion", lambda e: e[0] == "completion" and e[1][0] == invocation_id, start)
        _, result, error = self.events[at][1]
        del self.pending[invocation_id]
        return at, result, error

    def invoke(self, method, *args):
        at, result, error = self._invoke(method, list(args))
        check(error is None, f"{self.user}: {method}{show(args)} failed: {error}")
        return result

    def invoke_expecting_error(self, method, *args):
        _, result, error = self._invoke(method, list(args))
        check(error is not None, f"{self.user}: {method}{show(args)} should have failed but returned {show(result)}")
        return error

    def messages(self):
        with self.cond:
            return [args[0] for kind, args in self.events if kind == "OnMessage"]


def check_message_shape(protocol, message, author, group, text, who):
    check(isinstance(message, dict), f"{who}: message is not a map: {show(message)}")
    keys = sorted(message.keys())
    check(keys == ["authorId", "groupId", "id", "sendTime", "text"], f"{who}: message keys are {keys}")
    check(isinstance(message["id"], str) and message["id"], f"{who}: id is not a non-empty string: {show(message['id'])}")
    check(message["authorId"] == author, f"{who}: authorId {show(message['authorId'])}, expected {show(author)}")
    check(message["groupId"] == group, f"{who}: groupId {show(message['groupId'])}, expected {show(group)}")
    check(message["text"] == text, f"{who}: text {show(message['text'])}, expected {show(text)}")
    send_time = message["sendTime"]
    if protocol == "json":
        check(isinstance(send_time, str), f"{who}: sendTime in JSON is not a string: {show(send_time)}")
        check(
            re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", send_time),
            f"{who}: sendTime {show(send_time)} is not RFC 3339",
        )
        seconds = datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", send_time).replace("Z", "+00:00")).timestamp()
    else:
        check(
            isinstance(send_time, msgpack.Timestamp),
            f"{who}: sendTime in MessagePack is not a timestamp (ext -1): {show(send_time)} ({type(send_time).__name__})",
        )
        seconds = send_time.to_unix()
    check(abs(seconds - time.time()) < 300, f"{who}: sendTime {show(send_time)} is not close to now")


def check_same_messages(actual, expected, what):
    check(isinstance(actual, list), f"{what}: not a list: {show(actual)}")
    ids = [m.get("id") for m in actual]
    expected_ids = [m["id"] for m in expected]
    check(ids == expected_ids, f"{what}: ids {ids}, expected {expected_ids}")
    for got, want in zip(actual, expected):
        check(got["text"] == want["text"], f"{what}: text of {got['id']} differs: {show(got['text'])}")
        check(got["authorId"] == want["authorId"], f"{what}: authorId of {got['id']} differs")


def check_group_list(groups, what):
    check(isinstance(groups, list), f"{what}: not a list: {show(groups)}")
    for g in groups:
        check(isinstance(g, dict) and list(g.keys()) == ["groupId"], f"{what}: not a Group {{groupId}}: {show(g)}")
    names = [g["groupId"] for g in groups]
    # Python compares str by code points, as the contract sorts.
    check(all(a < b for a, b in zip(names, names[1:])), f"{what}: not sorted: {show(names)}")


def send_and_await_delivery(sender, receivers, group, text):
    starts = [len(r.events) for r in receivers]
    result = sender.invoke("SendMessage", group, text)
    check(result is None, f"{sender.user}: SendMessage returned {show(result)}, expected no result")
    delivered = []
    for r, start in zip(receivers, starts):
        at = r.wait_for(
            f"OnMessage with text {show(text[:40])}",
            lambda e: e[0] == "OnMessage" and isinstance(e[1][0], dict) and e[1][0].get("text") == text,
            start,
        )
        args = r.events[at][1]
        check(len(args) == 1, f"{r.user}: OnMessage has {len(args)} arguments, expected 1")
        check_message_shape(sender.protocol, args[0], sender.user, group, text, f"{r.user} OnMessage")
        delivered.append(args[0])
    check(len({m["id"] for m in delivered}) == 1, f"receivers got different ids: {[m['id'] for m in delivered]}")
    return delivered[0]


def join_expecting_history(client, group):
    start = len(client.events)
    completed_at, result, error = client._invoke("JoinGroup", [group])
    check(error is None, f"{client.user}: JoinGroup failed: {error}")
    check(result == 0, f"{client.user}: JoinGroup returned {show(result)}, expected 0 (Ok)")
    history_at = next((i for i in range(start, completed_at) if client.events[i][0] == "OnHistory"), None)
    check(
        history_at is not None,
        f"{client.user}: OnHistory must arrive before the JoinGroup completion; events were "
        f"{[k for k, _ in client.events[start:]]}",
    )
    args = client.events[history_at][1]
    check(len(args) == 1 and isinstance(args[0], list), f"{client.user}: OnHistory arguments are {show(args)}")
    return args[0]


def scenario(protocol, a, b):
    g = f"interop-py-{RUN_ID}-{protocol}"
    a.start()
    b.start()

    check(a.invoke("CreateGroup", g) is None, "CreateGroup returned a result")
    check(b.invoke("CreateGroup", g) is None, "second CreateGroup of the same group returned a result")
    for suffix in ("-p0", "-p1", "-p2"):
        a.invoke("CreateGroup", g + suffix)

    groups = a.invoke("ListGroups")
    check_group_list(groups, "ListGroups")
    check({"groupId": g} in groups, f"ListGroups does not contain {g}")
    first = a.invoke("ListGroupsPage", None, 1)
    check_group_list(first, "ListGroupsPage(None, 1)")
    check(len(first) == 1, f"ListGroupsPage(None, 1) returned {len(first)} groups")
    page = b.invoke("ListGroupsPage", g + "-p0", 2)
    check(page == [{"groupId": g + "-p1"}, {"groupId": g + "-p2"}], f"ListGroupsPage({g}-p0, 2) returned {show(page)}")
    error = a.invoke_expecting_error("ListGroupsPage", None, 0)
    check("limit" in error.lower(), f"ListGroupsPage limit 0: error does not name 'limit': {show(error)}")

    check(join_expecting_history(a, g) == [], "OnHistory of a new group is not []")
    join_expecting_history(b, g)

    sent = [
        send_and_await_delivery(a, [a, b], g, f"hello from python {protocol}"),
        send_and_await_delivery(b, [a, b], g, "héllo wörld — 日本語 — 🎉👩‍👩‍👧 — Ω≈ç√ — \u0301e\u00a0\U0010FFFD"),
    ]
    # 16384 characters, at the limit. signalrcore's JSON encoder escapes every
    # non-ASCII character (12 bytes for one outside the BMP), which would put a
    # message of emoji over the 128 KiB message limit; "é" (6 bytes escaped) fits.
    at_limit = "🎉" * TEXT_LIMIT if protocol == "messagepack" else "é" * TEXT_LIMIT
    sent.append(send_and_await_delivery(a, [a, b], g, at_limit))

    error = a.invoke_expecting_error("SendMessage", g, "x" * (TEXT_LIMIT + 1))
    check("text" in error.lower() and str(TEXT_LIMIT) in error, f"text too long: error does not name 'text' and {TEXT_LIMIT}: {show(error)}")
    error = a.invoke_expecting_error("SendMessage", g + "-p1", "hi")
    check("join" in error.lower(), f"SendMessage to a group not joined: error does not say to join first: {show(error)}")
    error = a.invoke_expecting_error("GetHistory", g, None, 501)
    check("limit" in error.lower() and "500" in error, f"GetHistory limit 501: error does not name 'limit' and 500: {show(error)}")
    check(a.conn.transport.is_connected(), "connection is not connected after the errors")
    check(isinstance(a.invoke("ListGroups"), list), "ListGroups after errors failed")

    history = a.invoke("GetHistory", g, None, 500)
    check_same_messages(history, sent, "GetHistory(None, 500)")
    for m, want in zip(history, sent):
        check_message_shape(protocol, m, want["authorId"], g, want["text"], "GetHistory")
    check_same_messages(b.invoke("GetHistory", g, None, 1), sent[2:], "GetHistory(None, 1)")
    check_same_messages(b.invoke("GetHistory", g, sent[2]["id"], 1), sent[1:2], "GetHistory(before 3rd, 1)")
    check_same_messages(b.invoke("GetHistory", g, sent[1]["id"], 10), sent[:1], "GetHistory(before 2nd, 10)")
    check_same_messages(b.invoke("GetHistory", g, sent[0]["id"], 10), [], "GetHistory(before 1st, 10)")

    check_same_messages(join_expecting_history(b, g), sent, "OnHistory on a second JoinGroup")

    # LeaveGroup stops delivery; group order makes the rejoin a barrier (see the JS suite).
    check(b.invoke("LeaveGroup", g) is None, "LeaveGroup returned a result")
    check(b.invoke("LeaveGroup", g) is None, "leaving a group one is not in returned a result")
    while_out = send_and_await_delivery(a, [a], g, "while b is out")
    check(any(m["id"] == while_out["id"] for m in join_expecting_history(b, g)), "OnHistory after rejoining lacks the message sent while out")
    send_and_await_delivery(a, [a, b], g, "after b is back")
    check(all(m["id"] != while_out["id"] for m in b.messages()), "b received OnMessage for a message sent after its LeaveGroup")

    # signalrcore's stop() closes the socket and then joins its receive thread,
    # which stays blocked in recv() until the server sends something (its next
    # Ping, up to 15 s later). Stop both at once so that wait is paid once.
    starts = [len(c.events) for c in (a, b)]
    stoppers = [threading.Thread(target=c.conn.stop) for c in (a, b)]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join(timeout=TIMEOUT_S + 20)
        check(not t.is_alive(), "stop() did not return")
    for c, start in zip((a, b), starts):
        c.wait_for("on_close after stop()", lambda e: e[0] == "closed", start)
        check(not any(k == "error" for k, _ in c.events), f"{c.user}: errors reported: {[a for k, a in c.events if k == 'error']}")


def main():
    args = sys.argv[1:]
    url = next((a for a in args if re.match(r"^https?://", a)), None)
    if url is None:
        print("usage: interop.py http://127.0.0.1:PORT/next-chat", file=sys.stderr)
        return 2
    handler = _Recorder()
    logging.getLogger("SignalRCoreClient").addHandler(handler)
    logging.getLogger("SignalRCoreClient").setLevel(logging.DEBUG)
    logging.getLogger("SignalRCoreClient").propagate = False

    failed = 0
    combos = ["json", "messagepack"]
    for protocol in combos:
        name = f"{protocol}-websockets"
        LOG_LINES.clear()
        started = time.monotonic()
        clients = [
            Client(url, protocol, f"carol-{RUN_ID}", "header"),
            Client(url, protocol, f"dave {RUN_ID}", "token"),
        ]
        try:
            scenario(protocol, *clients)
            print(f"PASS {name} ({int((time.monotonic() - started) * 1000)} ms)", flush=True)
        except Exception as error:  # every failure, ours or the client's, is one FAIL line
            failed += 1
            reason = str(error) if isinstance(error, CheckError) else f"client error: {type(error).__name__}: {error}"
            print(f"FAIL {name}: {reason}", flush=True)
            print("  client log (last lines):\n" + "\n".join(f"    {line}" for line in LOG_LINES), flush=True)
        finally:
            for c in clients:
                try:
                    c.conn.stop()
                except Exception:
                    pass
    print(f"python-interop: {len(combos) - failed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
