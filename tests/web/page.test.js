// Browser tests of the web page, in Debian's Chromium driven by playwright-core.
//
//   node tests/web/page.test.js BASE_URL FULL_GROUP LONG_GROUP LONG_COUNT
//
// crates/server/tests/web_page.rs starts the server, fills FULL_GROUP with 20
// users and LONG_GROUP with LONG_COUNT messages (Rust client), runs this script
// and answers its requests on stdin: a line `REQUEST <what> [args]` on stdout
// is answered by a line `OK` once done (stop the server, start it again and
// send messages as another user). A failing test leaves a screenshot in
// target/web-test-failures/ and says where.

import { mkdirSync } from "node:fs";
import { createInterface } from "node:readline";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

// `--jwt BASE TOKEN USER` runs only the token sign-in test, against a server
// started with --auth jwt (TOKEN is valid for USER).
const jwt = process.argv[2] === "--jwt" ? { base: process.argv[3], token: process.argv[4], user: process.argv[5] } : null;
const [base, fullGroup, longGroup, longCountText] = jwt ? [jwt.base] : process.argv.slice(2);
const longCount = Number(longCountText);
const root = join(dirname(fileURLToPath(import.meta.url)), "../..");
const failures = join(root, "target/web-test-failures");
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const STEP_MS = 15000;

const lines = createInterface({ input: process.stdin });
const answers = [];
const waiting = [];
lines.on("line", (line) => (waiting.length ? waiting.shift()(line) : answers.push(line)));

/** Asks the Rust side to do something and waits for its `OK`. */
async function request(what) {
  console.log(`REQUEST ${what}`);
  const answer = await new Promise((resolve) => (answers.length ? resolve(answers.shift()) : waiting.push(resolve)));
  if (answer !== "OK") throw new Error(`request ${what}: ${answer}`);
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

const unique = (prefix) => `${prefix}-${Math.random().toString(36).slice(2, 8)}`;

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
const pages = [];

async function user(name, viewport = { width: 1200, height: 800 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on("dialog", (dialog) => {
    page.dialogSeen = dialog.message();
    dialog.dismiss();
  });
  pages.push({ name, page });
  await page.goto(base);
  await page.fill("#identity", name);
  await page.click("#sign-in button[type=submit]");
  await connected(page);
  return page;
}

async function connected(page) {
  await page.waitForSelector('#status[data-state="connected"]');
}

async function createAndOpen(page, group) {
  await page.fill("#new-group", group);
  await page.click("#create button[type=submit]");
  await page.waitForFunction((g) => document.querySelector("#room-name")?.textContent === g, group);
}

async function joinFromList(page, group) {
  await page.fill("#new-group", group);
  const join = page.locator(`#all-groups li[data-group="${group}"] button`);
  if ((await join.count()) === 0) {
    // Created after this page listed the groups: list them again.
    await page.reload();
    await connected(page);
    await page.fill("#new-group", group);
  }
  await page.locator(`#all-groups li[data-group="${group}"] button`).click();
}

async function send(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
  await page.waitForFunction(() => document.querySelector("#text").value === "");
}

/** The texts of the messages shown, in order. */
const texts = (page) => page.$$eval("#messages .message .text", (items) => items.map((i) => i.textContent));

async function seen(page, text, times = 1) {
  await page.waitForFunction(
    ([t, n]) => [...document.querySelectorAll("#messages .message .text")].filter((i) => i.textContent === t).length >= n,
    [text, times],
  );
}

const tests = {
  async "two users chat live and a reload shows the history"() {
    const group = unique("room");
    const alice = await user(unique("alice"));
    const bob = await user(unique("bob"));
    await createAndOpen(alice, group);
    await joinFromList(bob, group);
    await bob.waitForFunction((g) => document.querySelector("#room-name")?.textContent === g, group);
    await send(alice, "hello from alice");
    await seen(bob, "hello from alice");
    await send(bob, "hi alice\nsecond line");
    await seen(alice, "hi alice\nsecond line");
    assert((await alice.locator(".message.mine .text").first().textContent()) === "hello from alice", "own message set apart");
    assert((await bob.locator(".message.mine .text").first().textContent()) === "hi alice\nsecond line", "Shift+Enter-free text kept whole");
    await alice.waitForFunction(() => document.querySelectorAll("#members li").length === 2);
    await bob.reload();
    await connected(bob);
    await seen(bob, "hello from alice");
    const shown = await texts(bob);
    assert(JSON.stringify(shown) === JSON.stringify(["hello from alice", "hi alice\nsecond line"]), `history after reload: ${JSON.stringify(shown)}`);
  },

  async "a full group says so"() {
    const page = await user(unique("late"));
    await joinFromList(page, fullGroup);
    await page.waitForFunction(() => /is full \(20 of 20/.test(document.querySelector("#group-error").textContent));
    assert(await page.locator("#room").isHidden(), "no conversation opened for a full group");
  },

  async "markup from a user shows as text"() {
    const group = unique("xss");
    const page = await user(unique("mallory"));
    await createAndOpen(page, group);
    const payload = "<img src=x onerror=alert(1)>";
    await send(page, payload);
    await seen(page, payload);
    assert((await page.locator("#messages img").count()) === 0, "no img element in the messages");
    assert(!page.dialogSeen, `a dialog opened: ${page.dialogSeen}`);
  },

  async "the page reconnects after a server restart and shows what was sent meanwhile once"() {
    const group = unique("restart");
    const page = await user(unique("carol"));
    await createAndOpen(page, group);
    await send(page, "before the restart");
    await request("stop-server");
    await page.waitForSelector('#status[data-state="reconnecting"]');
    // More than the 100 messages of history a rejoin brings: the rest must be
    // caught up by id.
    await request(`start-server-and-send ${group} away 150`);
    await connected(page);
    await seen(page, "away 150");
    await send(page, "after the restart");
    await seen(page, "after the restart");
    const shown = await texts(page);
    const away = Array.from({ length: 150 }, (_, i) => `away ${i + 1}`);
    const expected = ["before the restart", ...away, "after the restart"];
    assert(JSON.stringify(shown) === JSON.stringify(expected), `messages: ${JSON.stringify(shown)}`);
  },

  async "scrolling up loads older messages"() {
    const page = await user(unique("reader"), { width: 390, height: 844 });
    await page.click("#toggle-groups");
    await joinFromList(page, longGroup);
    await seen(page, `message ${longCount}`);
    // Each scroll to the top loads one older page: wait for it before the next.
    for (let shown = await page.locator("#messages .message").count(); shown < longCount; ) {
      await page.locator("#messages").evaluate((list) => {
        list.scrollTop = 0;
        list.dispatchEvent(new Event("scroll"));
      });
      await page.waitForFunction((n) => document.querySelectorAll("#messages .message").length > n, shown);
      shown = await page.locator("#messages .message").count();
    }
    const shown = await texts(page);
    assert(shown.length === longCount, `${shown.length} of ${longCount} messages after scrolling up`);
    assert(shown[0] === "message 1" && shown[longCount - 1] === `message ${longCount}`, "oldest first");
  },
};

const jwtTests = {
  async "a token signs in, names its user and a bad token is refused in words"() {
    const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_MS);
    pages.push({ name: "token", page });
    await page.goto(base);
    await page.waitForFunction(() => document.querySelector("#identity-label").textContent === "Access token");
    await page.fill("#identity", "not-a-token");
    await page.click("#sign-in button[type=submit]");
    await page.waitForFunction(() => document.querySelector("#sign-in-error").textContent.length > 0);
    assert(await page.locator("#chat-view").isHidden(), "a refused token does not open the chat");
    await page.fill("#identity", jwt.token);
    await page.click("#sign-in button[type=submit]");
    await connected(page);
    assert((await page.locator("#me").textContent()) === `Signed in as ${jwt.user}`, "the token's user is shown");
    const group = unique("jwt");
    await createAndOpen(page, group);
    await send(page, "signed with a token");
    await page.waitForSelector(".message.mine .text");
    assert((await page.locator(".message.mine .author").textContent()) === jwt.user, "authorId is the token's sub");
  },
};

let failed = 0;
for (const [name, test] of Object.entries(jwt ? jwtTests : tests)) {
  const started = Date.now();
  try {
    await test();
    console.log(`ok - ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    failed += 1;
    mkdirSync(failures, { recursive: true });
    const shots = [];
    for (const [i, { name: who, page }] of pages.entries()) {
      const file = join(failures, `${name.replace(/\W+/g, "-")}-${i}-${who}.png`);
      await page.screenshot({ path: file, fullPage: true }).catch(() => {});
      shots.push(file);
    }
    console.log(`not ok - ${name}: ${error.stack ?? error}\n  screenshots: ${shots.join(", ")}`);
  }
  for (const { page } of pages.splice(0)) await page.context().close();
}
await browser.close();
lines.close();
process.exit(failed ? 1 : 0);
