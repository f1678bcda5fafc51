// The page's History and Usage views in headless Chromium.
//
// usage: node history_page.mjs '{"url", "chromium", "screenshot_dir", "user", "width",
//                                "mode", "answers", "expect"}'
// mode "unavailable": the page's requests to /executions, /usage and /budget are answered
//   with the statuses in `answers` ({"/executions": 503, ...}): the views must say the
//   history is not available, and the rest of the page must keep working.
// mode "live": the server has the history routes and the user's executions in it
//   (expect: {"total", "failed"}): the list pages (50 a page) down to all of them, the
//   status filter keeps only failed ones, a row opens its detail with its events, the Usage
//   view draws the day and model charts and the budget.
// Prints one JSON line per step; exits non-zero on the first failure.
import path from "node:path";
import { devSignIn, opts, run, say, watchedPage } from "./chromium.mjs";

const width = opts.width || 1280;
const shot = (name) => path.join(opts.screenshot_dir, `${width}-${name}.png`);

await run(async (browser, errors) => {
  // the refused history requests are logged by the browser: expected in this mode
  const page = await watchedPage(browser, errors, { width, height: 900, expected: /40[0-9]|50[0-9]/ });
  if (opts.mode === "unavailable") {
    await page.setRequestInterception(true);
    page.on("request", (req) => {
      const url = new URL(req.url());
      const status = Object.entries(opts.answers)
        .find(([prefix]) => url.pathname.startsWith(prefix))?.[1];
      if (!status) return req.continue();
      return req.respond({ status, contentType: "application/json", body: JSON.stringify(
        { error: { type: status === 503 ? "unavailable" : "not_found",
                   message: status === 503 ? "the history database is not reachable"
                     : "Not Found" } }) });
    });
  }
  await page.goto(opts.url, { waitUntil: "networkidle0" });
  await devSignIn(page, opts.user);
  const overflow = () => page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    clientWidth: document.documentElement.clientWidth,
  }));
  const widths = {};

  // ---- History ----
  await page.click("#nav a[data-view='history']");
  await page.waitForFunction(() => ["loaded", "unavailable"]
    .includes(document.getElementById("view-history").dataset.state), { timeout: 20000 });
  const rows = () => page.$$eval("#history-rows tr", (trs) => trs.map((tr) => ({
    task_id: tr.dataset.taskId, step: Number(tr.dataset.step), status: tr.dataset.status,
    rendered: tr.getClientRects().length > 0,
  })));
  const historyState = () => page.evaluate(() => ({
    state: document.getElementById("view-history").dataset.state,
    note: document.getElementById("history-note").hidden ? null
      : document.getElementById("history-note").textContent,
    tableHidden: document.getElementById("history-table").hidden,
    moreHidden: document.getElementById("history-more").hidden,
    runReachable: Boolean(document.querySelector("#nav a[data-view='run']")),
  }));

  if (opts.mode === "unavailable") {
    say({ step: "history", ...(await historyState()), rows: await rows() });
    widths.history = await overflow();
    await page.screenshot({ path: shot("history-unavailable"), fullPage: true });
    await page.click("#nav a[data-view='usage']");
    await page.waitForFunction(() => document.getElementById("view-usage").dataset.state
      && !document.getElementById("budget-note").hidden, { timeout: 20000 });
    say({ step: "usage", ...(await page.evaluate(() => ({
      state: document.getElementById("view-usage").dataset.state,
      usageNote: document.getElementById("usage-note").textContent,
      budgetNote: document.getElementById("budget-note").textContent,
      charts: document.querySelectorAll(".chart svg").length,
    }))) });
    widths.usage = await overflow();
    await page.screenshot({ path: shot("usage-unavailable"), fullPage: true });
    // the rest of the page still works: a task runs on the Run view
    await page.click("#nav a[data-view='run']");
    await page.select("#service", "test/echo");
    await page.select("#operation", "echo");
    await page.$eval("#input-json", (el) => { el.value = '{"text": "still here", "chunks": 2}'; });
    await page.click("#submit-btn");
    await page.waitForSelector(".task[data-status='completed']", { timeout: 30000 });
    say({ step: "run_still_works" });
    say({ step: "done", widths, errors });
    return;
  }

  // live: the first page, then the older ones
  const first = await rows();
  say({ step: "first_page", ...(await historyState()), rows: first.length });
  let pages = 1;
  while (!(await historyState()).moreHidden && pages < 20) {
    const before = (await rows()).length;
    await page.click("#history-more");
    await page.waitForFunction((n) => document.querySelectorAll("#history-rows tr").length > n,
      { timeout: 20000 }, before);
    pages += 1;
  }
  const all = await rows();
  say({ step: "all_pages", pages, rows: all, ...(await historyState()) });
  widths.history = await overflow();
  await page.screenshot({ path: shot("history"), fullPage: false });

  // the status filter
  await page.select("#history-filters select[name='status']", "failed");
  await page.click("#history-apply");
  await page.waitForFunction((n) => {
    const trs = [...document.querySelectorAll("#history-rows tr")];
    return trs.length > 0 && trs.length < n && trs.every((tr) => tr.dataset.status === "failed");
  }, { timeout: 20000 }, all.length);
  const failedRows = await rows();
  say({ step: "filtered", rows: failedRows });

  // a row's detail and its events
  await page.click("#history-rows tr");
  await page.waitForFunction(() => ["loaded", "error"]
    .includes(document.getElementById("detail").dataset.state), { timeout: 20000 });
  const detail = await page.evaluate(() => ({
    state: document.getElementById("detail").dataset.state,
    taskId: document.getElementById("detail").dataset.taskId,
    title: document.getElementById("detail-title").textContent,
    source: document.getElementById("detail-source").textContent,
    fields: Object.fromEntries([...document.querySelectorAll("#detail-fields dt")]
      .map((dt) => [dt.textContent, dt.nextElementSibling.textContent])),
    events: [...document.querySelectorAll("#detail-events li")]
      .map((li) => ({ type: li.dataset.type, status: li.dataset.status, text: li.textContent })),
    note: document.getElementById("detail-note").hidden ? null
      : document.getElementById("detail-note").textContent,
  }));
  say({ step: "detail", ...detail });
  await page.screenshot({ path: shot("history-detail"), fullPage: true });

  // ---- Usage ----
  await page.click("#nav a[data-view='usage']");
  await page.waitForFunction(() => ["loaded", "unavailable"]
    .includes(document.getElementById("view-usage").dataset.state)
    && document.querySelector("#budgets .budget, #budget-note:not([hidden])"),
  { timeout: 20000 });
  const usage = await page.evaluate(() => ({
    state: document.getElementById("view-usage").dataset.state,
    total: document.getElementById("usage-note").textContent,
    dayBars: [...document.querySelectorAll("#chart-day rect.bar")].map((r) => ({
      key: r.dataset.key, height: Number(r.getAttribute("height")) })),
    modelBars: [...document.querySelectorAll("#chart-model rect.bar")].map((r) => r.dataset.key),
    budgets: [...document.querySelectorAll("#budgets .budget")].map((b) => ({
      period: b.dataset.period, kind: b.dataset.kind,
      line: b.querySelector(".budget-line").textContent,
      remaining: b.querySelector(".remaining").textContent })),
    budgetNote: document.getElementById("budget-note").hidden ? null
      : document.getElementById("budget-note").textContent,
  }));
  say({ step: "usage", ...usage });
  widths.usage = await overflow();
  await page.screenshot({ path: shot("usage"), fullPage: true });
  say({ step: "done", widths, errors });
});
