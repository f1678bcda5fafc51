// A workflow's steps and their states on the aiecs page, in headless Chromium.
//
// usage: node workflow_page.mjs '{"url", "chromium", "screenshot_dir", "user", "task_id"}'
// task_id is a workflow of the user's, already submitted. Signs in (dev mode), follows the
// id with the page's "follow an id" box, waits until the card lists every step in a
// terminal state, and prints what the card shows, then a screenshot.
// Prints one JSON line per step; exits non-zero on the first failure.
import path from "node:path";
import { devSignIn, opts, run, say } from "./chromium.mjs";

const TERMINAL = ["completed", "failed", "timed_out", "cancelled"];

await run(async (browser, errors) => {
  const page = await browser.newPage();
  await page.setViewport({ width: 1100, height: 900 });
  page.on("pageerror", (err) => errors.push(String(err)));
  page.on("console", (msg) => { if (msg.type() === "error") errors.push(msg.text()); });
  await page.goto(opts.url, { waitUntil: "networkidle0" });
  await devSignIn(page, opts.user);
  say({ step: "signed_in", whoami: await page.$eval("#whoami", (el) => el.textContent) });

  await page.$eval("#follow-id", (el, v) => { el.value = v; }, opts.task_id);
  await page.click("#follow-form button[type='submit']");
  const card = `.task[data-task-id="${opts.task_id}"]`;
  await page.waitForSelector(card, { timeout: 10000 });
  say({ step: "following", task_id: opts.task_id });

  const snapshot = () => page.$eval(card, (el) => {
    const list = el.querySelector(".steps");
    return {
      listHidden: list.hidden,
      listRendered: list.getClientRects().length > 0,
      steps: [...list.querySelectorAll("li")].map((li) => ({
        step: Number(li.dataset.step), status: li.dataset.status, text: li.textContent,
        rendered: li.getClientRects().length > 0,
      })),
      status: el.dataset.status,
      name: el.querySelector(".task-name").textContent,
    };
  });

  // every step listed, each in a terminal state (polled in the page, with a deadline)
  await page.waitForFunction(
    (sel, count, terminal) => {
      const items = [...document.querySelectorAll(`${sel} .steps li`)];
      return items.length === count && items.every((li) => terminal.includes(li.dataset.status));
    },
    { timeout: 20000, polling: 100 }, card, opts.steps, TERMINAL,
  ).catch(async (err) => {
    say({ step: "not_all_ended", ...(await snapshot()) }); // what the card showed instead
    throw err;
  });
  say({ step: "steps", ...(await snapshot()) });

  const file = path.join(opts.screenshot_dir, "workflow-steps.png");
  await page.screenshot({ path: file, fullPage: true });
  say({ step: "done", file, errors });
});
