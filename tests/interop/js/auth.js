// Interop suite for `--auth jwt`: the official @microsoft/signalr JavaScript
// client, unchanged, with an accessTokenFactory returning short-lived JWTs.
//
//   NEXT_CHAT_JWT_SECRET=... node tests/interop/js/auth.js https://127.0.0.1:PORT/next-chat
//
// The server must run `--auth jwt` with the same HS256 secret and
// `--jwt-leeway-secs 0`; over https, NODE_EXTRA_CA_CERTS names the test CA.
// Checks: a token's sub is the authorId of what the connection sends; when the
// token expires the server closes the connection (allowReconnect) and the
// client comes back by itself with a fresh token from the factory; a token
// signed with another secret is refused with 401. Every wait has a deadline.

import { createHmac } from "node:crypto";
import { HubConnectionBuilder, LogLevel } from "@microsoft/signalr";

const TIMEOUT_MS = Number(process.env.INTEROP_TIMEOUT_MS || 15000);
// The server closes a connection when its token expires; 2 s keeps the test short.
const TOKEN_LIFETIME_S = 2;

const url = process.argv[2];
const secret = process.env.NEXT_CHAT_JWT_SECRET;
if (!url || !secret) {
  console.error("usage: NEXT_CHAT_JWT_SECRET=... node auth.js https://127.0.0.1:PORT/next-chat");
  process.exit(2);
}
const runId = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;

function base64url(data) {
  return Buffer.from(data).toString("base64url");
}

/** An HS256 JWT, as an identity provider would mint it. */
function mint(sub, lifetimeSeconds, key = secret) {
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = base64url(
    JSON.stringify({ sub, exp: Math.floor(Date.now() / 1000) + lifetimeSeconds }),
  );
  const signature = createHmac("sha256", key).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

function deadline(promise, what, ms = TIMEOUT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** Resolves with the next OnMessage whose text is `text`. */
function nextMessage(connection, text) {
  return new Promise((resolve) => {
    const handler = (message) => {
      if (message.text === text) {
        connection.off("OnMessage", handler);
        resolve(message);
      }
    };
    connection.on("OnMessage", handler);
  });
}

const results = [];

async function scenario(name, body) {
  try {
    await body();
    results.push(true);
    console.log(`PASS ${name}`);
  } catch (error) {
    results.push(false);
    console.log(`FAIL ${name}: ${error && error.stack ? error.stack : error}`);
  }
}

await scenario("expiring tokens: sub is the author, the client comes back with a new token", async () => {
  const sub = `js-${runId}`;
  const group = `jwt-${runId}`;
  let minted = 0;
  const connection = new HubConnectionBuilder()
    .withUrl(url, {
      accessTokenFactory: () => {
        minted += 1;
        return mint(sub, TOKEN_LIFETIME_S);
      },
    })
    .withAutomaticReconnect([0, 200, 500, 1000, 2000])
    .configureLogging(LogLevel.None)
    .build();
  const reconnecting = new Promise((resolve) => connection.onreconnecting(resolve));
  const reconnected = new Promise((resolve) => connection.onreconnected(resolve));
  await deadline(connection.start(), "start");
  await deadline(connection.invoke("JoinGroup", group), "JoinGroup");
  const first = nextMessage(connection, "before expiry");
  await deadline(connection.invoke("SendMessage", group, "before expiry"), "SendMessage");
  const message = await deadline(first, "OnMessage before expiry");
  check(message.authorId === sub, `authorId ${message.authorId}, expected ${sub}`);

  const error = await deadline(reconnecting, "the server to close the connection at expiry");
  check(
    error && /expired/.test(String(error)),
    `the close names the expired token: ${error}`,
  );
  await deadline(reconnected, "the client to reconnect");
  check(minted >= 2, `the factory minted a fresh token (${minted} minted)`);
  // A new connection: groups are joined again.
  await deadline(connection.invoke("JoinGroup", group), "JoinGroup after reconnecting");
  const second = nextMessage(connection, "after reconnecting");
  await deadline(connection.invoke("SendMessage", group, "after reconnecting"), "SendMessage");
  const again = await deadline(second, "OnMessage after reconnecting");
  check(again.authorId === sub, `authorId ${again.authorId} after reconnecting`);
  await connection.stop();
});

await scenario("a forged token is refused with 401", async () => {
  const connection = new HubConnectionBuilder()
    .withUrl(url, { accessTokenFactory: () => mint("mallory", 600, "not the server's secret") })
    .configureLogging(LogLevel.None)
    .build();
  let refused = null;
  try {
    await deadline(connection.start(), "start");
  } catch (error) {
    refused = error;
  }
  check(refused !== null, "start must fail");
  check(/401/.test(String(refused)), `the error names 401: ${refused}`);
});

const failed = results.filter((ok) => !ok).length;
console.log(`${results.length - failed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
