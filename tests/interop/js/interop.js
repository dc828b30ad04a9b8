// Interop suite: the official @microsoft/signalr JavaScript client, unchanged,
// against a running Next Chat server.
//
//   node tests/interop/js/interop.js http://127.0.0.1:PORT/next-chat [--no-idle] [--only NAME]
//
// Runs the same chat scenario for every protocol × transport combination a
// stock client can be told to use, prints one PASS/FAIL line per combination,
// and exits non-zero if any failed. Every wait is an event with a deadline;
// the only deliberate waits are the idle checks, which exist to prove the
// server keeps quiet connections open (keep-alive) for longer than its 30 s
// client timeout.

import { HubConnectionBuilder, HttpTransportType, LogLevel, HubConnectionState } from "@microsoft/signalr";
import { MessagePackHubProtocol } from "@microsoft/signalr-protocol-msgpack";
import WebSocket from "ws";

const TIMEOUT_MS = Number(process.env.INTEROP_TIMEOUT_MS || 15000);
// Longer than the server's 30 s client timeout and two of its 15 s keep-alive periods.
const IDLE_MS = Number(process.env.INTEROP_IDLE_MS || 40000);
const TEXT_LIMIT = 16384;

const args = process.argv.slice(2);
const url = args.find((a) => /^https?:\/\//.test(a));
if (!url) {
  console.error("usage: node interop.js http://127.0.0.1:PORT/next-chat [--no-idle] [--only NAME]");
  process.exit(2);
}
const withIdle = !args.includes("--no-idle");
const only = args.includes("--only") ? args[args.indexOf("--only") + 1] : null;
const runId = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;

// ---------------------------------------------------------------- helpers

class CheckError extends Error {}

function check(condition, message) {
  if (!condition) throw new CheckError(message);
}

function show(value) {
  const text = JSON.stringify(value, (_k, v) => (v instanceof Date ? `Date(${v.toISOString()})` : v));
  return text && text.length > 300 ? `${text.slice(0, 300)}…(${text.length} chars)` : text;
}

/** Resolves with `promise`, or rejects after `ms` naming what was awaited. */
function deadline(promise, what, ms = TIMEOUT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CheckError(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Keeps the client's log (Trace level) so that a failure can show what went over the wire. */
class RecordingLogger {
  constructor(name) {
    this.name = name;
    this.lines = [];
  }
  log(level, message) {
    const text = String(message);
    this.lines.push(`[${LogLevel[level]}] ${this.name}: ${text.length > 400 ? `${text.slice(0, 400)}…` : text}`);
    if (this.lines.length > 200) this.lines.shift();
  }
}

/**
 * A connection for one user with a log of every callback and completion, in
 * arrival order, so the suite can assert on order (OnHistory before the
 * JoinGroup completion) and wait for events with deadlines.
 */
class Client {
  constructor(combo, user, { tokenInQuery = false } = {}) {
    this.user = user;
    this.combo = combo;
    this.events = [];
    this.waiters = [];
    this.closed = null;
    this.logger = new RecordingLogger(user);
    const options = {
      transport: combo.transport,
      skipNegotiation: combo.skipNegotiation,
      logMessageContent: true,
    };
    if (user !== null) options.accessTokenFactory = () => user;
    if (tokenInQuery) {
      // What a browser does: it cannot set headers on a WebSocket, so the
      // client puts the token in `access_token` instead.
      options.WebSocket = class BrowserLikeWebSocket extends WebSocket {
        constructor(address, protocols, wsOptions) {
          const headers = { ...(wsOptions?.headers || {}) };
          const auth = headers.Authorization;
          delete headers.Authorization;
          let target = address;
          if (auth) {
            const token = auth.replace(/^Bearer /, "");
            target += `${target.includes("?") ? "&" : "?"}access_token=${encodeURIComponent(token)}`;
          }
          super(target, protocols, { ...wsOptions, headers });
        }
      };
    }
    let builder = new HubConnectionBuilder().withUrl(url, options).configureLogging(this.logger);
    if (combo.protocol === "messagepack") builder = builder.withHubProtocol(new MessagePackHubProtocol());
    this.connection = builder.build();
    this.connection.on("OnMessage", (...a) => this.record("OnMessage", a));
    this.connection.on("OnHistory", (...a) => this.record("OnHistory", a));
    this.closedPromise = new Promise((resolve) => {
      this.connection.onclose((error) => {
        this.closed = { error };
        this.record("closed", [error]);
        resolve({ error });
      });
    });
  }

  record(kind, args) {
    this.events.push({ kind, args });
    for (const waiter of [...this.waiters]) waiter();
  }

  /** Waits for the first event from index `from` on that `match`es; returns its index. */
  waitFor(what, match, from = 0) {
    return deadline(
      new Promise((resolve) => {
        const test = () => {
          for (let i = from; i < this.events.length; i++) {
            if (match(this.events[i])) {
              this.waiters = this.waiters.filter((w) => w !== test);
              resolve(i);
              return true;
            }
          }
          return false;
        };
        if (!test()) this.waiters.push(test);
      }),
      `${this.user}: ${what}`,
    );
  }

  messages() {
    return this.events.filter((e) => e.kind === "OnMessage").map((e) => e.args[0]);
  }

  async start() {
    await deadline(this.connection.start(), `${this.user}: connection.start()`);
    check(this.connection.state === HubConnectionState.Connected, `${this.user}: state after start is ${this.connection.state}`);
  }

  /** Invokes a hub method, records its completion in the event log, and returns the result. */
  async invoke(method, ...args) {
    try {
      const result = await deadline(this.connection.invoke(method, ...args), `${this.user}: ${method} completion`);
      this.record(`${method}:completed`, [result]);
      return result;
    } catch (error) {
      this.record(`${method}:failed`, [error]);
      throw error;
    }
  }

  /** Invokes a method that must fail; returns the error message. */
  async invokeExpectingError(method, ...args) {
    let result;
    try {
      result = await this.invoke(method, ...args);
    } catch (error) {
      if (error instanceof CheckError) throw error;
      return String(error?.message ?? error);
    }
    throw new CheckError(`${this.user}: ${method}(${show(args)}) should have failed but returned ${show(result)}`);
  }
}

function checkMessageShape(combo, message, expected, who) {
  check(message && typeof message === "object" && !Array.isArray(message), `${who}: message is not an object: ${show(message)}`);
  const keys = Object.keys(message).sort();
  check(
    show(keys) === show(["authorId", "groupId", "id", "sendTime", "text"]),
    `${who}: message keys are ${show(keys)}, expected exactly authorId, groupId, id, sendTime, text`,
  );
  check(typeof message.id === "string" && message.id.length > 0, `${who}: id is not a non-empty string: ${show(message.id)}`);
  check(message.authorId === expected.authorId, `${who}: authorId ${show(message.authorId)}, expected ${show(expected.authorId)}`);
  check(message.groupId === expected.groupId, `${who}: groupId ${show(message.groupId)}, expected ${show(expected.groupId)}`);
  check(message.text === expected.text, `${who}: text ${show(message.text)}, expected ${show(expected.text)}`);
  let time;
  if (combo.protocol === "json") {
    check(typeof message.sendTime === "string", `${who}: sendTime in JSON is not a string: ${show(message.sendTime)}`);
    check(
      /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.test(message.sendTime),
      `${who}: sendTime ${show(message.sendTime)} is not RFC 3339`,
    );
    time = new Date(message.sendTime);
  } else {
    check(message.sendTime instanceof Date, `${who}: sendTime in MessagePack is not a timestamp (ext -1) decoded as Date: ${show(message.sendTime)} (${typeof message.sendTime})`);
    time = message.sendTime;
  }
  check(!Number.isNaN(time.getTime()), `${who}: sendTime ${show(message.sendTime)} is not a valid time`);
  check(Math.abs(time.getTime() - Date.now()) < 5 * 60 * 1000, `${who}: sendTime ${time.toISOString()} is not close to now`);
}

function checkSameMessages(actual, expected, what) {
  const ids = (list) => list.map((m) => m.id);
  check(Array.isArray(actual), `${what}: not an array: ${show(actual)}`);
  check(show(ids(actual)) === show(ids(expected)), `${what}: ids ${show(ids(actual))}, expected ${show(ids(expected))}`);
  for (let i = 0; i < actual.length; i++) {
    check(actual[i].text === expected[i].text, `${what}: text of ${actual[i].id} differs: ${show(actual[i].text)}`);
    check(actual[i].authorId === expected[i].authorId, `${what}: authorId of ${actual[i].id} differs`);
  }
}

function checkGroupList(list, what) {
  check(Array.isArray(list), `${what}: not an array: ${show(list)}`);
  for (const g of list) {
    check(g && typeof g.groupId === "string" && Object.keys(g).length === 1, `${what}: not a Group {groupId}: ${show(g)}`);
  }
  for (let i = 1; i < list.length; i++) {
    // Ordinal by code points: compare as arrays of code points, not UTF-16 units.
    const a = [...list[i - 1].groupId].map((c) => c.codePointAt(0));
    const b = [...list[i].groupId].map((c) => c.codePointAt(0));
    let cmp = 0;
    for (let j = 0; j < Math.min(a.length, b.length) && cmp === 0; j++) cmp = a[j] - b[j];
    if (cmp === 0) cmp = a.length - b.length;
    check(cmp < 0, `${what}: not sorted at ${show(list[i - 1].groupId)}, ${show(list[i].groupId)}`);
  }
}

// ---------------------------------------------------------------- the scenario

async function sendAndAwaitDelivery(sender, receivers, groupId, text) {
  const starts = receivers.map((r) => r.events.length);
  const result = await sender.invoke("SendMessage", groupId, text);
  check(result === null || result === undefined, `${sender.user}: SendMessage returned ${show(result)}, expected no result`);
  const delivered = [];
  for (let i = 0; i < receivers.length; i++) {
    const r = receivers[i];
    const at = await r.waitFor(
      `OnMessage with text ${show(text.slice(0, 40))} in ${groupId}`,
      (e) => e.kind === "OnMessage" && e.args[0]?.groupId === groupId && e.args[0]?.text === text,
      starts[i],
    );
    const event = r.events[at];
    check(event.args.length === 1, `${r.user}: OnMessage has ${event.args.length} arguments, expected 1`);
    checkMessageShape(sender.combo, event.args[0], { authorId: sender.user, groupId, text }, `${r.user} OnMessage`);
    delivered.push(event.args[0]);
  }
  const [first, ...rest] = delivered;
  for (const m of rest) check(m.id === first.id, `receivers got different ids for one message: ${first.id}, ${m.id}`);
  return first;
}

async function joinExpectingHistory(client, groupId) {
  const from = client.events.length;
  const result = await client.invoke("JoinGroup", groupId);
  check(result === 0, `${client.user}: JoinGroup returned ${show(result)}, expected 0 (Ok)`);
  const completedAt = client.events.findIndex((e, i) => i >= from && e.kind === "JoinGroup:completed");
  const historyAt = client.events.findIndex((e, i) => i >= from && e.kind === "OnHistory");
  check(
    historyAt !== -1 && historyAt < completedAt,
    `${client.user}: OnHistory must arrive before the JoinGroup completion; events were ${show(client.events.slice(from).map((e) => e.kind))}`,
  );
  const history = client.events[historyAt].args;
  check(history.length === 1 && Array.isArray(history[0]), `${client.user}: OnHistory arguments are ${show(history)}, expected one array`);
  return history[0];
}

async function scenario(combo, a, b) {
  const g = `interop-js-${runId}-${combos.concat(idleCombos).indexOf(combo)}`;
  await Promise.all([a.start(), b.start()]);

  // CreateGroup: no result; creating again is not an error.
  check((await a.invoke("CreateGroup", g)) == null, "CreateGroup returned a result");
  check((await b.invoke("CreateGroup", g)) == null, "second CreateGroup of the same group returned a result");
  for (const suffix of ["-p0", "-p1", "-p2"]) await a.invoke("CreateGroup", g + suffix);

  const groups = await a.invoke("ListGroups");
  checkGroupList(groups, "ListGroups");
  check(groups.some((x) => x.groupId === g), `ListGroups does not contain ${g}: ${show(groups)}`);

  const first = await a.invoke("ListGroupsPage", null, 1);
  checkGroupList(first, "ListGroupsPage(null, 1)");
  check(first.length === 1, `ListGroupsPage(null, 1) returned ${first.length} groups`);
  const page = await b.invoke("ListGroupsPage", g + "-p0", 2);
  check(
    show(page) === show([{ groupId: g + "-p1" }, { groupId: g + "-p2" }]),
    `ListGroupsPage(${g}-p0, 2) returned ${show(page)}, expected ${g}-p1, ${g}-p2`,
  );
  const pageError = await a.invokeExpectingError("ListGroupsPage", null, 0);
  check(/limit/i.test(pageError), `ListGroupsPage limit 0: error does not name the field 'limit': ${show(pageError)}`);

  // JoinGroup: Ok, with the (empty) history before the completion.
  const emptyHistory = await joinExpectingHistory(a, g);
  check(emptyHistory.length === 0, `OnHistory of a new group is ${show(emptyHistory)}, expected []`);
  await joinExpectingHistory(b, g);

  // Messages: shape, both members, the sender included; non-ASCII text; the text limit in code points.
  const sent = [];
  sent.push(await sendAndAwaitDelivery(a, [a, b], g, `hello from ${combo.name}`));
  sent.push(await sendAndAwaitDelivery(b, [a, b], g, "héllo wörld — 日本語 — 🎉👩‍👩‍👧 — Ω≈ç√ — \u0301e\u00a0\u{10FFFD}"));
  // 16384 characters that are each two UTF-16 units and four UTF-8 bytes: at the limit, so accepted.
  sent.push(await sendAndAwaitDelivery(a, [a, b], g, "🎉".repeat(TEXT_LIMIT)));
  for (let i = 1; i < sent.length; i++) check(sent[i].id !== sent[i - 1].id, "two messages have the same id");

  // Errors: a person can act on them, and the connection stays usable.
  const tooLong = await a.invokeExpectingError("SendMessage", g, "x".repeat(TEXT_LIMIT + 1));
  check(/text/i.test(tooLong) && tooLong.includes(String(TEXT_LIMIT)), `text too long: error does not name 'text' and ${TEXT_LIMIT}: ${show(tooLong)}`);
  const notJoined = await a.invokeExpectingError("SendMessage", g + "-p1", "hi");
  check(/join/i.test(notJoined), `SendMessage to a group not joined: error does not say to join first: ${show(notJoined)}`);
  const badLimit = await a.invokeExpectingError("GetHistory", g, null, 501);
  check(/limit/i.test(badLimit) && badLimit.includes("500"), `GetHistory limit 501: error does not name 'limit' and 500: ${show(badLimit)}`);
  check(a.connection.state === HubConnectionState.Connected, `state after errors is ${a.connection.state}`);
  check(Array.isArray(await a.invoke("ListGroups")), "ListGroups after errors failed");

  // History: oldest first, and paging with `before`.
  const all = await a.invoke("GetHistory", g, null, 500);
  checkSameMessages(all, sent, "GetHistory(null, 500)");
  all.forEach((m, i) => checkMessageShape(combo, m, { authorId: sent[i].authorId, groupId: g, text: sent[i].text }, "GetHistory"));
  checkSameMessages(await b.invoke("GetHistory", g, null, 1), sent.slice(2), "GetHistory(null, 1)");
  checkSameMessages(await b.invoke("GetHistory", g, sent[2].id, 1), sent.slice(1, 2), "GetHistory(before 3rd, 1)");
  checkSameMessages(await b.invoke("GetHistory", g, sent[1].id, 10), sent.slice(0, 1), "GetHistory(before 2nd, 10)");
  checkSameMessages(await b.invoke("GetHistory", g, sent[0].id, 10), [], "GetHistory(before 1st, 10)");

  // Joining again sends the history again, oldest first.
  checkSameMessages(await joinExpectingHistory(b, g), sent, "OnHistory on a second JoinGroup");

  // LeaveGroup stops delivery. Messages of a group arrive in order, so once
  // b (joined again) has the message sent after its rejoin, it would already
  // have any message that leaked while it was out.
  check((await b.invoke("LeaveGroup", g)) == null, "LeaveGroup returned a result");
  check((await b.invoke("LeaveGroup", g)) == null, "leaving a group one is not in returned a result");
  const whileOut = await sendAndAwaitDelivery(a, [a], g, "while b is out");
  const historyOnRejoin = await joinExpectingHistory(b, g);
  check(historyOnRejoin.some((m) => m.id === whileOut.id), "OnHistory after rejoining lacks the message sent while out");
  await sendAndAwaitDelivery(a, [a, b], g, "after b is back");
  check(!b.messages().some((m) => m.id === whileOut.id), "b received OnMessage for a message sent after its LeaveGroup");

  // A clean stop: no error on close.
  await Promise.all([a, b].map((c) => deadline(c.connection.stop(), `${c.user}: connection.stop()`)));
  for (const c of [a, b]) {
    const { error } = await deadline(c.closedPromise, `${c.user}: onclose`);
    check(!error, `${c.user}: closed with error ${error}`);
    check(c.connection.state === HubConnectionState.Disconnected, `${c.user}: state after stop is ${c.connection.state}`);
  }
}

/** A connection that sends nothing for IDLE_MS must still be open and usable afterwards. */
async function idleScenario(combo, a) {
  const g = `interop-js-${runId}-${combos.concat(idleCombos).indexOf(combo)}`;
  await a.start();
  await joinExpectingHistory(a, g);
  let timer;
  const idle = new Promise((resolve) => {
    timer = setTimeout(() => resolve(null), IDLE_MS);
  });
  const closed = await Promise.race([idle, a.closedPromise]);
  clearTimeout(timer);
  check(closed === null, `connection closed while idle: ${closed?.error ?? "no error"}`);
  check(a.connection.state === HubConnectionState.Connected, `state after ${IDLE_MS} ms idle is ${a.connection.state}`);
  await sendAndAwaitDelivery(a, [a], g, "still here");
  await deadline(a.connection.stop(), "connection.stop()");
}

/** Without an identity the server answers 401, and start() fails. */
async function noIdentityScenario(combo) {
  const anonymous = new Client(combo, null);
  let error;
  try {
    await deadline(anonymous.connection.start(), "connection.start() without identity");
  } catch (e) {
    error = e;
  }
  check(error && !(error instanceof CheckError), `start() without an identity should fail; got ${error ?? "success"}`);
  check(/401/.test(String(error.message)), `start() without an identity failed without naming 401: ${error.message}`);
  return [anonymous];
}

// ---------------------------------------------------------------- combinations

const { WebSockets, ServerSentEvents, LongPolling } = HttpTransportType;
const combos = [
  { name: "json-websockets", protocol: "json", transport: WebSockets },
  { name: "json-sse", protocol: "json", transport: ServerSentEvents },
  { name: "json-longpolling", protocol: "json", transport: LongPolling },
  { name: "messagepack-websockets", protocol: "messagepack", transport: WebSockets },
  { name: "messagepack-longpolling", protocol: "messagepack", transport: LongPolling },
  { name: "json-websockets-skipnegotiation", protocol: "json", transport: WebSockets, skipNegotiation: true },
  { name: "messagepack-websockets-skipnegotiation", protocol: "messagepack", transport: WebSockets, skipNegotiation: true },
  { name: "json-websockets-access_token-query", protocol: "json", transport: WebSockets, tokenInQuery: true },
  { name: "json-longpolling-no-identity-401", protocol: "json", transport: LongPolling, kind: "no-identity" },
];
const idleCombos = [
  { name: "json-longpolling-idle", protocol: "json", transport: LongPolling, kind: "idle" },
  { name: "messagepack-websockets-idle", protocol: "messagepack", transport: WebSockets, kind: "idle" },
  { name: "json-sse-idle", protocol: "json", transport: ServerSentEvents, kind: "idle" },
];

async function runCombo(combo) {
  const started = Date.now();
  let clients = [];
  try {
    if (combo.kind === "no-identity") {
      clients = await noIdentityScenario(combo);
    } else if (combo.kind === "idle") {
      clients = [new Client(combo, `idle-${runId}-${combo.name}`)];
      await idleScenario(combo, clients[0]);
    } else {
      // User ids with a space and non-ASCII letters, as the header carries them.
      const options = { tokenInQuery: combo.tokenInQuery };
      clients = [new Client(combo, `alice-${runId}`, options), new Client(combo, `bob ${runId}`, options)];
      await scenario(combo, ...clients);
    }
    return { combo, ok: true, line: `PASS ${combo.name} (${Date.now() - started} ms)` };
  } catch (error) {
    const reason = error instanceof CheckError ? error.message : `client error: ${error?.message ?? error}`;
    const log = clients.flatMap((c) => c.logger.lines.slice(-25)).map((l) => `    ${l}`).join("\n");
    return { combo, ok: false, line: `FAIL ${combo.name}: ${reason}`, log };
  } finally {
    await Promise.all(clients.map((c) => c.connection.stop().catch(() => {})));
  }
}

const selected = (list) => list.filter((c) => !only || c.name === only);
// The idle checks run alongside the others so that they add their wait only once.
const idleRuns = withIdle ? selected(idleCombos).map(runCombo) : [];
const results = [];
for (const combo of selected(combos)) {
  const result = await runCombo(combo);
  console.log(result.line);
  if (!result.ok && result.log) console.log(`  client log (last lines):\n${result.log}`);
  results.push(result);
}
for (const result of await Promise.all(idleRuns)) {
  console.log(result.line);
  if (!result.ok && result.log) console.log(`  client log (last lines):\n${result.log}`);
  results.push(result);
}
const failed = results.filter((r) => !r.ok).length;
console.log(`js-interop: ${results.length - failed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
