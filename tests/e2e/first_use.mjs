// What a new user tripped over on the page (issue 18), checked in headless Chromium at
// 1280 px, then again at 390 px, each stage backed by a screenshot.
//
// usage: node first_use.mjs '{"url", "chromium", "screenshot_dir", "user", "workflow",
//                             "batch", "slow_batch", "unknown_id", "width"}'
// workflow: a POST /workflows body whose step 2 streams slowly while steps 3 (fails) and
// 4 (waits for 3: cancelled) end first; batch: a POST /batches body; slow_batch: one
// whose items run long enough to be cancelled from the card. The page submits
// them with its own token (as any API client of the user's would), then follows them.
// Prints one JSON line per step; exits non-zero on the first failure.
// 1. the default form (the first service and operation) is accepted on Submit;
// 2. signed in: the sign-in panel is gone, the user's name and "Sign out" are shown;
// 3. the workflow's card says running (Cancel enabled) and shows step 2's stream while
//    step 2 runs, and ends "failed" as GET /workflows/{id} says;
// 4. a failed task: the title names the service, the error shows once;
// 5. the batch's card: "batch · n of m items", never "step 0"; its Cancel cancels it;
// 6. an unknown id: "not found", Cancel disabled;
// 7. sign out: the sign-in panel is back, no cards, no token kept.
import path from "node:path";
import { opts, run, say, watchedPage } from "./chromium.mjs";

const width = opts.width || 1280;

// one check: its failure is reported as {step, failed} and the next check still runs (so
// a page lacking one fix shows every other check's outcome)
async function stage(name, body) {
  try {
    await body();
  } catch (err) {
    say({ step: name, failed: String(err && err.message || err) });
  }
}
const shot = (name) => path.join(opts.screenshot_dir, `${width}-${name}.png`);

await run(async (browser, errors) => {
  // the unknown id's lookups and the sign-out's refused reconnects are 404 / 401
  const page = await watchedPage(browser, errors, { width, height: 900, expected: /404|401/ });
  await page.goto(opts.url, { waitUntil: "networkidle0" });
  await page.waitForSelector("body[data-ready='true']", { timeout: 20000 });
  const overflow = () => page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    clientWidth: document.documentElement.clientWidth,
  }));
  const widths = { start: await overflow() };
  // a POST of the user's own, as any API client of theirs would send it
  const submitted = (route, body) => page.evaluate(async (r, b) => {
    const resp = await fetch(r, { method: "POST", body: JSON.stringify(b), headers: {
      "Content-Type": "application/json",
      Authorization: `Bearer ${sessionStorage.getItem("aiecs.token")}` } });
    return resp.json();
  }, route, body);

  // sign in (dev mode) as a user does
  await page.$eval("#dev-user", (el, u) => { el.value = u; }, opts.user);
  await page.click("#dev-login-btn");
  await page.waitForSelector("#conn[data-state='on']", { timeout: 20000 });
  await page.waitForFunction(() => document.querySelectorAll("#service option").length > 0
    && document.getElementById("input-json").value.length > 2, { timeout: 20000 });
  const signedIn = await page.evaluate(() => ({
    authRendered: document.getElementById("auth").getClientRects().length > 0,
    user: document.getElementById("user-name")?.textContent ?? null,
    signOutRendered: (document.getElementById("sign-out")?.getClientRects().length ?? 0) > 0,
  }));
  widths.signedIn = await overflow();
  await page.screenshot({ path: shot("signed-in"), fullPage: true });
  say({ step: "signed_in", ...signedIn, file: shot("signed-in") });

  // 1. the default form, submitted as it is
  let before;
  const cards = () => page.$$eval(".task", (els) => els.map((e) => e.dataset.taskId));
  await stage("default_form", async () => {
    const defaults = await page.evaluate(() => ({
      service: document.getElementById("service").value,
      operation: document.getElementById("operation").value,
      input: JSON.parse(document.getElementById("input-json").value),
    }));
    before = await cards();
    await page.click("#submit-btn");
    const accepted = await page.waitForFunction(
      (known) => {
        const err = document.getElementById("submit-error").textContent;
        if (err) return { error: err };
        const id = [...document.querySelectorAll(".task")].map((e) => e.dataset.taskId)
          .find((i) => !known.includes(i));
        return id ? { task_id: id } : null;
      }, { timeout: 20000 }, before).then((h) => h.jsonValue());
    say({ step: "default_form", ...defaults, ...accepted });
  });

  // 3. the workflow, followed while its step 2 streams
  async function follow(id) {
    await page.$eval("#follow-id", (el, v) => { el.value = v; }, id);
    await page.click("#follow-form button[type='submit']");
    await page.waitForSelector(`.task[data-task-id="${id}"]`, { timeout: 10000 });
  }
  const card = (id) => page.$eval(`.task[data-task-id="${id}"]`, (el) => ({
    status: el.dataset.status,
    kind: el.dataset.kind,
    badge: el.querySelector(".status").textContent,
    title: el.querySelector(".task-name").textContent,
    message: el.querySelector(".message").textContent,
    stream: el.querySelector(".stream").textContent,
    streamLabel: el.querySelector(".stream-label:not([hidden])")?.textContent ?? null,
    error: el.querySelector(".task-error").hidden ? null
      : el.querySelector(".task-error").textContent,
    text: el.innerText,
    cancelDisabled: el.querySelector(".cancel").disabled,
    steps: [...el.querySelectorAll(".steps li")].map((li) => [Number(li.dataset.step),
                                                             li.dataset.status]),
  }));
  await stage("workflow_running", async () => {
    const wf = (await submitted("/workflows", opts.workflow)).task_id;
    await follow(wf);
    // step 2 running with some text streamed, steps 3 and 4 already ended
    await page.waitForFunction((id) => {
      const el = document.querySelector(`.task[data-task-id="${id}"]`);
      const st = (n) => el.querySelector(`.steps li[data-step="${n}"]`)?.dataset.status;
      return st(2) === "running" && st(4) === "cancelled" && st(3) === "failed"
        && el.querySelector(".stream").textContent.length > 0;
    }, { timeout: 30000, polling: 50 }, wf);
    const running = await card(wf);
    const el = await page.$(`.task[data-task-id="${wf}"]`);
    await el.screenshot({ path: shot("workflow-running") });
    say({ step: "workflow_running", ...running, file: shot("workflow-running") });
    await page.waitForFunction((id) => {
      const items = [...document.querySelectorAll(`.task[data-task-id="${id}"] .steps li`)];
      return items.length === 4 && items.every((li) => li.dataset.status !== "running"
        && li.dataset.status !== "pending");
    }, { timeout: 30000, polling: 100 }, wf);
    say({ step: "workflow_ended", task_id: wf, ...(await card(wf)) });
  });

  // 4. a failed task, from the form
  await stage("failed", async () => {
    await page.select("#service", "test/echo");
    await page.select("#operation", "echo");
    await page.$eval("#input-json", (e) => {
      e.value = JSON.stringify({ text: "this one fails", fail: "invalid" });
  });
  before = await cards();
  await page.click("#submit-btn");
  const failedId = await page.waitForFunction(
    (known) => [...document.querySelectorAll(".task")].map((e) => e.dataset.taskId)
      .find((i) => !known.includes(i)), { timeout: 20000 }, before).then((h) => h.jsonValue());
  await page.waitForFunction(
    (id) => document.querySelector(`.task[data-task-id="${id}"]`)?.dataset.status === "failed",
    { timeout: 30000 }, failedId);
  // its events can arrive on the socket before the POST's answer (one round trip to
  // submit): the card is named from the answer when it comes; the check reads the card
  // once it names its service, or after 10 s as it stands
  await page.waitForFunction(
    (id) => document.querySelector(`.task[data-task-id="${id}"] .task-name`)
      ?.textContent.startsWith("test/echo"), { timeout: 10000 }, failedId).catch(() => {});
  const failed = await card(failedId);
  await (await page.$(`.task[data-task-id="${failedId}"]`))
    .screenshot({ path: shot("failed-card") });
  say({ step: "failed", task_id: failedId, ...failed, file: shot("failed-card") });
  });

  // 5. the batch
  await stage("batch", async () => {
    const batchId = (await submitted("/batches", opts.batch)).batch_id;
    await follow(batchId);
    await page.waitForFunction(
      (id) => ["completed", "failed"].includes(
        document.querySelector(`.task[data-task-id="${id}"]`)?.dataset.status),
      { timeout: 30000 }, batchId);
    say({ step: "batch", batch_id: batchId, ...(await card(batchId)) });
  });

  // 5b. a batch cancelled from its card (DELETE /batches/{id}: a batch is no task)
  await stage("batch_cancel", async () => {
    const batchId = (await submitted("/batches", opts.slow_batch)).batch_id;
    await follow(batchId);
    const sel = `.task[data-task-id="${batchId}"]`;
    await page.waitForFunction((s) => document.querySelector(s)?.dataset.kind === "batch"
      && !document.querySelector(`${s} .cancel`).disabled, { timeout: 20000 }, sel);
    await page.click(`${sel} .cancel`);
    await page.waitForFunction((s) => document.querySelector(s).dataset.cancel === "sent",
      { timeout: 20000 }, sel);
    const answered = await card(batchId);
    await page.waitForFunction(
      (s) => ["cancelled", "failed", "completed"].includes(document.querySelector(s).dataset.status),
      { timeout: 30000 }, sel);
    say({ step: "batch_cancel", batch_id: batchId, answered: answered.message,
          ...(await card(batchId)) });
  });

  // 6. an id nobody has
  await stage("unknown", async () => {
    await follow(opts.unknown_id);
    const unknownAtOnce = await card(opts.unknown_id); // before the server answered
    await page.waitForFunction(
      (id) => document.querySelector(`.task[data-task-id="${id}"]`)?.dataset.status === "unknown",
      { timeout: 10000 }, opts.unknown_id);
    say({ step: "unknown", atOnce: unknownAtOnce, ...(await card(opts.unknown_id)) });
  });

  widths.tasks = await overflow();
  await page.screenshot({ path: shot("tasks"), fullPage: true });

  // 7. sign out
  await stage("signed_out", async () => {
    await page.click("#sign-out");
    await page.waitForSelector("#auth:not([hidden])", { timeout: 5000 });
    const out = await page.evaluate(() => ({
      authRendered: document.getElementById("auth").getClientRects().length > 0,
      whoami: document.getElementById("whoami").textContent,
      chipHidden: document.getElementById("user-chip").hidden,
      cards: document.querySelectorAll(".task").length,
      token: sessionStorage.getItem("aiecs.token"),
      submitHidden: document.getElementById("submit").hidden,
    }));
    await page.screenshot({ path: shot("signed-out"), fullPage: true });
    say({ step: "signed_out", ...out, file: shot("signed-out") });
  });
  say({ step: "done", widths, errors });
});
