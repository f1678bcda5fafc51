// First-hour checks of the aiecs page in headless Chromium, each backed by a screenshot.
//
// usage: node page_checks.mjs '{"dev_url", "prod_url", "chromium", "screenshot_dir", "user",
//                              "good_token", "bad_token"}'
// prod_url is a server NOT in development mode; good_token/bad_token are for it (bad: signed
// with another key). dev_url is a development server (its sign-in form, /dev/token).
// 1. prod page: the dev sign-in form is not rendered;
// 2. prod page: a refused token never shows "Signed in as ..."; an accepted one does;
// 3. dev page at 390 px: no sideways scrolling before and after signing in, with long
//    streamed text, a failed, a cancelled and a completed task (full-page screenshot width);
// 4. the cancelled card has no red in its screenshot; the failed card (control) has.
// Prints one JSON line per step; exits non-zero on the first failure.
import fs from "node:fs";
import path from "node:path";
import { devSignIn, opts, run, say, watchedPage } from "./chromium.mjs";

const shot = (name) => path.join(opts.screenshot_dir, name);

// width and height of a PNG, from its IHDR chunk
function pngSize(file) {
  const buf = fs.readFileSync(file);
  return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
}

// pixels of a screenshot that are clearly the page's red (--bad: #c0262d), counted in a
// blank page (no CSP there to refuse the data: image)
async function redPixels(browser, file) {
  const scratch = await browser.newPage();
  try {
    const b64 = fs.readFileSync(file).toString("base64");
    return await scratch.evaluate(async (data) => {
      const img = new Image();
      img.src = `data:image/png;base64,${data}`;
      await img.decode();
      const canvas = document.createElement("canvas");
      canvas.width = img.width;
      canvas.height = img.height;
      const ctx = canvas.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const px = ctx.getImageData(0, 0, img.width, img.height).data;
      let red = 0;
      for (let i = 0; i < px.length; i += 4) {
        if (px[i] > 150 && px[i + 1] < 80 && px[i + 2] < 80) red += 1;
      }
      return red;
    }, b64);
  } finally {
    await scratch.close();
  }
}

// a refused Socket.IO connection is logged by the browser: expected in step 2
const newPage = (browser, errors, width, height) =>
  watchedPage(browser, errors, { width, height, expected: /401|refused|unauthori/i });

async function ready(page, url) {
  await page.goto(url, { waitUntil: "networkidle0" });
  await page.waitForSelector("body[data-ready='true']", { timeout: 20000 });
}

const overflow = (page) => page.evaluate(() => ({
  scrollWidth: document.documentElement.scrollWidth,
  clientWidth: document.documentElement.clientWidth,
}));

await run(async (browser, errors) => {
  // 1. a production server's page: no dev sign-in form
  const prod = await newPage(browser, errors, 1100, 900);
  await ready(prod, opts.prod_url);
  const devForm = await prod.$eval("#dev-login", (el) => ({
    hidden: el.hidden, rendered: el.getClientRects().length > 0,
    display: getComputedStyle(el).display,
  }));
  await prod.screenshot({ path: shot("prod-no-dev-form.png"), fullPage: true });
  say({ step: "prod_page", devForm, file: shot("prod-no-dev-form.png") });

  // 2. a refused token, then an accepted one: record every text #whoami ever shows
  await prod.evaluate(() => {
    window.whoamiSeen = [];
    const el = document.getElementById("whoami");
    new MutationObserver(() => window.whoamiSeen.push(el.textContent))
      .observe(el, { childList: true, characterData: true, subtree: true });
  });
  await prod.$eval("#token-input", (el, v) => { el.value = v; }, opts.bad_token);
  await prod.click("#token-btn");
  await prod.waitForSelector("#whoami[data-state='signed-out']", { timeout: 20000 });
  await new Promise((r) => setTimeout(r, 500)); // nothing else flips it afterwards
  const refused = await prod.evaluate(() => ({
    seen: window.whoamiSeen,
    whoami: document.getElementById("whoami").textContent,
    authError: document.getElementById("auth-error").textContent,
    submitHidden: document.getElementById("submit").hidden,
    storedToken: sessionStorage.getItem("aiecs.token"),
  }));
  await prod.screenshot({ path: shot("refused-token.png"), fullPage: true });
  say({ step: "refused_token", ...refused, file: shot("refused-token.png") });

  await prod.evaluate(() => { window.whoamiSeen = []; });
  await prod.$eval("#token-input", (el, v) => { el.value = v; }, opts.good_token);
  await prod.click("#token-btn");
  await prod.waitForSelector("#whoami[data-state='signed-in']", { timeout: 20000 });
  const accepted = await prod.evaluate(() => ({
    seen: window.whoamiSeen,
    whoami: document.getElementById("whoami").textContent,
    submitHidden: document.getElementById("submit").hidden,
    authError: document.getElementById("auth-error").textContent,
  }));
  say({ step: "accepted_token", ...accepted });
  await prod.close();

  // 3. a phone: 390 px wide, on the dev server
  const phone = await newPage(browser, errors, 390, 844);
  const widths = {};
  await ready(phone, opts.dev_url);
  widths.start = await overflow(phone);
  await devSignIn(phone, opts.user);
  widths.signedIn = await overflow(phone);

  async function submit(input) {
    await phone.select("#service", "test/echo");
    await phone.select("#operation", "echo");
    await phone.$eval("#input-json", (el, v) => { el.value = v; }, JSON.stringify(input));
    const before = await phone.$$eval(".task", (els) => els.map((e) => e.dataset.taskId));
    await phone.click("#submit-btn");
    const handle = await phone.waitForFunction(
      (known) => [...document.querySelectorAll(".task")]
        .map((e) => e.dataset.taskId).find((id) => !known.includes(id)),
      { timeout: 20000 }, before);
    return handle.jsonValue();
  }
  const waitStatus = (id, status, timeout = 60000) => phone.waitForFunction(
    (i, st) => document.querySelector(`.task[data-task-id="${i}"]`)?.dataset.status === st,
    { timeout }, id, status);
  const card = (id) => phone.$eval(`.task[data-task-id="${id}"]`, (el) => ({
    status: el.dataset.status,
    badge: el.querySelector(".status").textContent,
    message: el.querySelector(".message").textContent,
    error: el.querySelector(".task-error").hidden ? null
      : el.querySelector(".task-error").textContent,
    visibleErrors: [...el.querySelectorAll(".error")]
      .filter((e) => e.getClientRects().length > 0).map((e) => e.textContent),
  }));

  const longWord = "x".repeat(300); // no break opportunity: must still wrap
  const done = await submit({ text: `${longWord} and some words after it`, chunks: 4,
                              delay: 0.05 });
  await waitStatus(done, "completed");
  const failed = await submit({ text: "this one fails", fail: "invalid" });
  await waitStatus(failed, "failed");
  const slow = await submit({ text: "this one gets cancelled ".repeat(4), chunks: 40,
                              delay: 0.25 });
  await waitStatus(slow, "running", 30000);
  await phone.waitForFunction(
    (id) => document.querySelector(`.task[data-task-id="${id}"] .stream`).textContent.length > 0,
    { timeout: 20000 }, slow);
  await phone.click(`.task[data-task-id="${slow}"] .cancel`);
  await waitStatus(slow, "cancelled", 30000);
  await new Promise((r) => setTimeout(r, 300)); // the DELETE's answer is in too
  widths.tasks = await overflow(phone);

  await phone.screenshot({ path: shot("phone-390.png"), fullPage: true });
  say({ step: "phone", widths, png: pngSize(shot("phone-390.png")),
        file: shot("phone-390.png") });

  // 4. the cancelled card is not an error; the failed one (control) is
  const cards = {};
  for (const [name, id] of [["cancelled", slow], ["failed", failed]]) {
    const el = await phone.$(`.task[data-task-id="${id}"]`);
    await el.screenshot({ path: shot(`${name}-card.png`) });
    const file = shot(`${name}-card.png`);
    cards[name] = { ...(await card(id)), red: await redPixels(browser, file), file };
  }
  say({ step: "cards", ...cards });
  say({ step: "done", errors });
});
