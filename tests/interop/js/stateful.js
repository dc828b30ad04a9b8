// Stateful reconnect with the official @microsoft/signalr client, unchanged:
// a receiver built with `.withStatefulReconnect()` connects through a TCP proxy
// that the test runner (crates/server/tests/interop.rs) resets several times
// while a sender, connected directly, sends N messages at about 100 a second.
// The receiver must get every message exactly once, in order, and never see
// `onclose`.
//
//   node tests/interop/js/stateful.js PROXIED_URL DIRECT_URL N PROTOCOL
//
// Prints `ready` once both are in the group, `sent K` after every 50 sends (the
// runner cuts the proxy on those lines), then `PASS ...` or `FAIL ...`.

import { HubConnectionBuilder, HubConnectionState, LogLevel } from "@microsoft/signalr";
import { MessagePackHubProtocol } from "@microsoft/signalr-protocol-msgpack";

const TIMEOUT_MS = Number(process.env.INTEROP_TIMEOUT_MS || 30000);
const [proxiedUrl, directUrl, countText, protocol = "json"] = process.argv.slice(2);
const count = Number(countText);
if (!proxiedUrl || !directUrl || !(count > 0)) {
  console.error("usage: node stateful.js PROXIED_URL DIRECT_URL N [json|messagepack]");
  process.exit(2);
}
const runId = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
const group = `stateful-${protocol}-${runId}`;

const logLines = [];
const logger = {
  log(level, message) {
    logLines.push(`[${LogLevel[level]}] ${String(message).slice(0, 300)}`);
    if (logLines.length > 300) logLines.shift();
  },
};

function build(url, user, stateful) {
  let builder = new HubConnectionBuilder()
    .withUrl(url, { accessTokenFactory: () => user, transport: 1 /* WebSockets */ })
    .configureLogging(logger);
  if (stateful) builder = builder.withStatefulReconnect();
  if (protocol === "messagepack") builder = builder.withHubProtocol(new MessagePackHubProtocol());
  return builder.build();
}

function fail(message) {
  console.log(`FAIL stateful-${protocol}: ${message}`);
  console.log(logLines.slice(-60).map((l) => `    ${l}`).join("\n"));
  process.exit(1);
}

const deadline = (promise, what) =>
  Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), TIMEOUT_MS)),
  ]);

const receiver = build(proxiedUrl, `reader-${runId}`, true);
const sender = build(directUrl, `writer-${runId}`, false);
const received = [];
let closed = null;
let allArrived;
const arrived = new Promise((resolve) => (allArrived = resolve));
let markerArrived;
const marker = new Promise((resolve) => (markerArrived = resolve));
receiver.on("OnMessage", (message) => {
  if (message.text === "end") return markerArrived();
  received.push(message.text);
  if (received.length >= count) allArrived();
});
receiver.on("OnHistory", () => {});
receiver.onclose((error) => {
  closed = error ?? new Error("closed without an error");
  allArrived();
});

try {
  await deadline(Promise.all([receiver.start(), sender.start()]), "start");
  await deadline(receiver.invoke("JoinGroup", group), "receiver JoinGroup");
  await deadline(sender.invoke("JoinGroup", group), "sender JoinGroup");
  console.log("ready");
  const started = Date.now();
  for (let i = 1; i <= count; i++) {
    await deadline(sender.invoke("SendMessage", group, `m${i}`), `SendMessage m${i}`);
    if (i % 50 === 0) console.log(`sent ${i}`);
    // About 100 messages a second: the pace of the load, not a wait for an event.
    const due = started + i * 10;
    if (Date.now() < due) await new Promise((resolve) => setTimeout(resolve, due - Date.now()));
  }
  await deadline(arrived, `${count} messages at the receiver (got ${received.length})`);
  // Anything repeated would come before a message sent after all of them.
  await deadline(sender.invoke("SendMessage", group, "end"), "SendMessage end");
  await deadline(marker, "the end marker at the receiver");
} catch (error) {
  fail(`${error?.message ?? error}; the receiver has ${received.length} messages`);
}
if (closed) fail(`the receiver's connection closed: ${closed.message}`);
if (receiver.state !== HubConnectionState.Connected) fail(`the receiver is ${receiver.state}`);
// Exactly once and in order: m1 .. mN, nothing else.
const expected = Array.from({ length: count }, (_, i) => `m${i + 1}`);
const firstWrong = expected.findIndex((text, i) => received[i] !== text);
if (received.length !== count || firstWrong !== -1) {
  fail(`received ${received.length} messages; first difference at ${firstWrong}: ${JSON.stringify(received.slice(Math.max(0, firstWrong - 2), firstWrong + 3))}`);
}
console.log(`PASS stateful-${protocol}: ${count} messages exactly once, in order, no onclose`);
await Promise.all([receiver.stop(), sender.stop()]);
process.exit(0);
