// Takes the README's screenshots of the page (docs/web-desktop.png and
// docs/web-phone.png) against a fresh server:
//
//   cargo run --release --bin next-chat-server -- --database sqlite:///tmp/shots.db &
//   node tests/web/screenshots.js http://localhost:5000/
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const base = process.argv[2] ?? "http://localhost:5000/";
const docs = join(dirname(fileURLToPath(import.meta.url)), "../../docs");
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: ["--no-sandbox"] });

async function user(name, viewport) {
  const page = await (await browser.newContext({ viewport, deviceScaleFactor: 1 })).newPage();
  await page.goto(base);
  await page.fill("#identity", name);
  await page.click("#sign-in button[type=submit]");
  await page.waitForSelector('#status[data-state="connected"]');
  return page;
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
  await page.waitForFunction(() => document.querySelector("#text").value === "");
}

const ana = await user("ana", { width: 1200, height: 760 });
for (const group of ["design-review", "random", "release-2.0"]) {
  await ana.fill("#new-group", group);
  await ana.click("#create button[type=submit]");
  await ana.waitForFunction((g) => document.querySelector("#room-name")?.textContent === g, group);
}
const ben = await user("ben", { width: 390, height: 844 });
await ben.click("#toggle-groups");
await ben.locator('#all-groups li[data-group="release-2.0"] button').click();
await ben.waitForFunction(() => document.querySelector("#room-name")?.textContent === "release-2.0");
await say(ana, "Morning! The release branch is cut.");
await say(ben, "Great. I'll run the soak on it today.");
await say(ana, "Thanks. Notes are in the usual place:\n- limits section\n- the new web page");
await say(ben, "On it.");
// The member list follows the new author; let it settle before the pictures.
await ana.waitForFunction(() => document.querySelectorAll("#members li").length === 2);
await ana.screenshot({ path: join(docs, "web-desktop.png") });
await ben.screenshot({ path: join(docs, "web-phone.png") });
await browser.close();
console.log("wrote docs/web-desktop.png and docs/web-phone.png");
