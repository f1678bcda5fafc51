// Drives the aiecs page in headless Chromium, as a user would.
//
// usage: node browser.mjs '{"url", "chromium", "screenshot_dir", "user"}'
// 1. sign in (dev mode), pick test/echo + echo, submit a task, watch it to COMPLETED;
// 2. submit a slow one and cancel it: CANCELLED;
// 3. submit a slow one, take the network away for a while mid-task, give it back: the page
//    catches up from the log and shows the whole streamed text and COMPLETED.
// Prints one JSON line per step; exits non-zero on the first failure.
import path from "node:path";
import { devSignIn, opts, run, say } from "./chromium.mjs";

await run(async (browser, errors) => {
  const page = await browser.newPage();
  await page.setViewport({ width: 1100, height: 1300 });
  page.on("pageerror", (err) => errors.push(String(err)));
  page.on("console", (msg) => {
    // while the network is emulated offline, the client's reconnect attempts fail: expected
    if (msg.type() === "error" && !msg.text().includes("ERR_INTERNET_DISCONNECTED")) {
      errors.push(msg.text());
    }
  });
  await page.goto(opts.url, { waitUntil: "networkidle0" });

  // sign in
  await devSignIn(page, opts.user);
  say({ step: "signed_in", whoami: await page.$eval("#whoami", (el) => el.textContent) });

  async function submit(input, op = "echo") {
    await page.select("#service", "test/echo");
    await page.select("#operation", op);
    await page.$eval("#input-json", (el, v) => { el.value = v; }, JSON.stringify(input));
    const before = await page.$$eval(".task", (els) => els.map((e) => e.dataset.taskId));
    await page.click("#submit-btn");
    const handle = await page.waitForFunction(
      (known) => [...document.querySelectorAll(".task")]
        .map((e) => e.dataset.taskId).find((id) => !known.includes(id)),
      { timeout: 20000 }, before);
    return handle.jsonValue();
  }

  async function waitStatus(taskId, status, timeout = 60000) {
    await page.waitForFunction(
      (id, st) => document.querySelector(`.task[data-task-id="${id}"]`)?.dataset.status === st,
      { timeout }, taskId, status);
    return page.$eval(`.task[data-task-id="${taskId}"]`, (el) => ({
      status: el.dataset.status,
      lastSeq: Number(el.dataset.lastSeq),
      progress: el.querySelector("progress").value,
      stream: el.querySelector(".stream").textContent,
      result: el.querySelector(".result").hidden ? null : el.querySelector(".result").textContent,
      error: el.querySelector(".task-error").hidden ? null
        : el.querySelector(".task-error").textContent,
      cancelDisabled: el.querySelector(".cancel").disabled,
      message: el.querySelector(".message").textContent,
    }));
  }

  // 1. a task to completion
  const text1 = "Progress bars and streamed text, live in the browser.";
  const t1 = await submit({ text: text1, chunks: 6, delay: 0.15 });
  const running = await waitStatus(t1, "running", 30000);
  say({ step: "running", task_id: t1, progress: running.progress });
  const done = await waitStatus(t1, "completed");
  say({ step: "completed", task_id: t1, ...done });

  // 2. a slow task, cancelled from the page
  const t2 = await submit({ text: "this one gets cancelled ".repeat(4), chunks: 40, delay: 0.25 });
  await waitStatus(t2, "running", 30000);
  await page.waitForFunction(
    (id) => document.querySelector(`.task[data-task-id="${id}"] .stream`).textContent.length > 0,
    { timeout: 20000 }, t2);
  await page.click(`.task[data-task-id="${t2}"] .cancel`);
  await page.waitForFunction(
    (id) => document.querySelector(`.task[data-task-id="${id}"]`).dataset.cancel === "sent",
    { timeout: 30000 }, t2);
  const cancelled = await waitStatus(t2, "cancelled", 30000);
  say({ step: "cancelled", task_id: t2, ...cancelled });

  // 3. the network goes away mid-task and comes back
  const text3 = "0123456789abcdefghijklmnopqrstuvwxyz".repeat(2);
  const t3 = await submit({ text: text3, chunks: 24, delay: 0.15 });
  await page.waitForFunction(
    (id) => document.querySelector(`.task[data-task-id="${id}"] .stream`).textContent.length > 6,
    { timeout: 30000 }, t3);
  const cdp = await page.createCDPSession();
  await cdp.send("Network.enable");
  await cdp.send("Network.emulateNetworkConditions",
    { offline: true, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
  // a network drop as the page sees it: the transport dies, the client goes offline
  await page.evaluate(() => window.aiecs.socket.io.engine.close());
  await page.waitForSelector("#conn:not([data-state='on'])", { timeout: 10000 });
  const seenOffline = await page.$eval(`.task[data-task-id="${t3}"]`,
    (el) => Number(el.dataset.lastSeq));
  await new Promise((r) => setTimeout(r, 2000));
  await cdp.send("Network.emulateNetworkConditions",
    { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
  const caughtUp = await waitStatus(t3, "completed");
  say({ step: "caught_up", task_id: t3, seen_offline: seenOffline, ...caughtUp,
        expected: text3 });

  const file = path.join(opts.screenshot_dir, "aiecs-page.png");
  await page.screenshot({ path: file, fullPage: true });
  say({ step: "screenshot", file, errors });
});
