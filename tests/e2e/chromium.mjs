// What the browser scripts of tests/e2e share: their options, their JSON-lines output,
// headless Chromium's launch and cleanup, and signing in on a development server.
//
// usage: import { opts, say, run, devSignIn, watchedPage } from "./chromium.mjs";
//        await run(async (browser, errors) => { ... });
// run() launches Chromium (opts.chromium) with a throw-away profile, prints
// {"step": "error", ...} and exits non-zero if the body throws, and always closes the
// browser and removes the profile.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import puppeteer from "puppeteer-core";

export const opts = JSON.parse(process.argv[2]);
export const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

export async function run(body) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "aiecs-chromium-"));
  const browser = await puppeteer.launch({
    executablePath: opts.chromium,
    headless: true,
    userDataDir: profile,
    args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--no-first-run"],
  });
  const errors = [];
  try {
    await body(browser, errors);
  } catch (err) {
    say({ step: "error", message: String(err && err.stack || err), errors });
    process.exitCode = 1;
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

// a new page of ``width`` x ``height`` whose page errors, and browser console errors other
// than the ``expected`` ones (a RegExp: refusals the test provokes), go to ``errors``
export async function watchedPage(browser, errors, { width, height, expected = null }) {
  const page = await browser.newPage();
  await page.setViewport({ width, height });
  page.on("pageerror", (err) => errors.push(String(err)));
  page.on("console", (msg) => {
    if (msg.type() === "error" && !(expected && expected.test(msg.text()))) {
      errors.push(msg.text());
    }
  });
  return page;
}

// the dev sign-in form as a user fills it; resolves once the socket is on and the
// services are listed
export async function devSignIn(page, user) {
  await page.waitForSelector("#dev-login:not([hidden])");
  await page.$eval("#dev-user", (el, u) => { el.value = u; }, user);
  await page.click("#dev-login-btn");
  await page.waitForSelector("#conn[data-state='on']", { timeout: 20000 });
  await page.waitForFunction(
    () => [...document.querySelectorAll("#service option")].some((o) => o.value === "test/echo"));
}
