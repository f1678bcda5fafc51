// Submitting by template from the page, in headless Chromium.
//
// usage: node template_page.mjs '{"url", "chromium", "screenshot_dir", "user", "width",
//                                 "template"}'
// "By template": the template is listed, its labels and versions offered; the production
// label's version builds the variables form (defaults filled in); a missing variable and
// one over its maximum are refused by the server (422), the reason shown and the field
// marked, nothing queued; a good submission by label runs version 1, one by version 2
// runs version 2; each card names its template@version.
// Prints one JSON line per step; exits non-zero on the first failure.
import path from "node:path";
import { devSignIn, opts, run, say, watchedPage } from "./chromium.mjs";

const width = opts.width || 1280;
const shot = (name) => path.join(opts.screenshot_dir, `${width}-${name}.png`);

await run(async (browser, errors) => {
  // the refused submissions are logged by the browser (422): expected
  const page = await watchedPage(browser, errors, { width, height: 900, expected: /422/ });
  await page.goto(opts.url, { waitUntil: "networkidle0" });
  await devSignIn(page, opts.user);
  const overflow = () => page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    clientWidth: document.documentElement.clientWidth,
  }));
  const widths = {};
  const form = () => page.evaluate(() => ({
    state: document.getElementById("template-form").dataset.state,
    version: document.getElementById("template-form").dataset.version,
    templates: [...document.querySelectorAll("#template-name option")].map((o) => o.value),
    refs: [...document.querySelectorAll("#template-ref option")]
      .map((o) => ({ value: o.value, text: o.textContent })),
    ref: document.getElementById("template-ref").value,
    description: document.getElementById("template-description").textContent,
    fields: [...document.querySelectorAll("#template-fields [data-var]")].map((el) => ({
      name: el.dataset.var, kind: el.dataset.kind, tag: el.tagName.toLowerCase(),
      value: el.type === "checkbox" ? el.checked : el.value,
      invalid: el.getAttribute("aria-invalid") === "true",
      label: el.closest("label").textContent })),
    error: document.getElementById("template-error").textContent,
    operationFormHidden: document.getElementById("submit-form").hidden,
    cards: document.querySelectorAll(".task").length,
  }));
  const setVar = (name, value) => page.$eval(`#template-fields [data-var='${name}']`,
    (el, v) => { el.value = v; }, value);
  const refused = async (before) => {
    await page.click("#template-submit");
    await page.waitForFunction(
      (b) => !["", b].includes(document.getElementById("template-error").textContent),
      { timeout: 20000 }, before);
    return form();
  };

  await page.click("#by-template");
  await page.waitForFunction(() => document.getElementById("template-form").dataset.state
    === "ready", { timeout: 20000 });
  await page.select("#template-name", opts.template);
  await page.waitForFunction((t) => document.getElementById("template-form").dataset.state
    === "ready" && document.getElementById("template-description").textContent.length
    && document.getElementById("template-ref").options[0]?.value === "label:production"
    && document.getElementById("template-name").value === t, { timeout: 20000 }, opts.template);
  say({ step: "form", ...(await form()) });
  widths.form = await overflow();
  await page.screenshot({ path: shot("template-form"), fullPage: true });

  // the server refuses: a missing variable, then one over its maximum
  say({ step: "missing", ...(await refused("")) });
  await setVar("who", "Ada");
  await setVar("chunks", "9");
  const over = await refused((await form()).error);
  say({ step: "over_max", ...over });
  widths.refused = await overflow();
  await page.screenshot({ path: shot("template-refused"), fullPage: true });

  // by label (production -> version 1)
  await setVar("chunks", "3");
  await page.click("#template-submit");
  await page.waitForSelector(".task[data-status='completed']", { timeout: 30000 });
  // by version 2
  await page.select("#template-ref", "version:2");
  await page.waitForFunction(() => document.getElementById("template-form").dataset.version
    === "2", { timeout: 20000 });
  const v2 = await form();
  await page.click("#template-submit");
  await page.waitForFunction(() => document.querySelectorAll(".task[data-status='completed']")
    .length === 2, { timeout: 30000 });
  const cards = await page.$$eval(".task", (els) => els.map((el) => ({
    id: el.dataset.taskId, status: el.dataset.status, template: el.dataset.template,
    chip: el.querySelector(".task-template").textContent,
    chipShown: el.querySelector(".task-template").getClientRects().length > 0,
    name: el.querySelector(".task-name").textContent,
    stream: el.querySelector(".stream").textContent,
  })));
  say({ step: "submitted", v2, cards, after: await form() });
  widths.cards = await overflow();
  await page.screenshot({ path: shot("template-cards"), fullPage: true });
  say({ step: "done", widths, errors });
});
