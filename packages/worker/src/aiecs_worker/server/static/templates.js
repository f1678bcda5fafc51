// aiecs page: submit by template (docs/templates.md; app.js: sign-in, cards).
//
// "By template" on the Run view: GET /templates lists them; a template's versions and
// labels (GET /templates/{name}) fill the second list (a label first: the server reads it
// at submission); the chosen version's variables JSON Schema (GET
// /templates/{name}/versions/{n}) becomes a form, one field per property (text, number,
// checkbox, a list for an enum, JSON for anything else), its defaults filled in.
// Submit sends POST /tasks {template: {name, label | version}, variables}; the server
// checks the variables (the form does not: one judge, one message) and a refusal's
// reason is shown as it says it, the variables it names marked. The card shows
// "template name@version" from the execution's events.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const api = (...args) => window.aiecs.api(...args);
  const tpl = { list: [], detail: null, version: null, loaded: false };

  function note(text) {
    $("template-note").textContent = text || "";
    $("template-note").hidden = !text;
  }

  function setMode(byTemplate) {
    $("by-template").setAttribute("aria-pressed", String(byTemplate));
    $("by-operation").setAttribute("aria-pressed", String(!byTemplate));
    $("submit-form").hidden = byTemplate;
    $("template-form").hidden = !byTemplate || !tpl.list.length;
    if (!byTemplate) note("");
    if (byTemplate) loadTemplates();
  }

  function why(e, what) {
    if (e.status === 404 || e.status === 503) {
      return `Templates are not available: ${e.status === 503
        ? "the server cannot reach its history database right now"
        : "this server does not offer them"} (${what} answered ${e.status}).`;
    }
    return `Could not load ${what}: ${e.message}`;
  }

  async function loadTemplates() {
    const form = $("template-form");
    form.dataset.state = "loading";
    try {
      const out = await api("GET", "/templates");
      tpl.list = out.templates || [];
    } catch (e) {
      tpl.list = [];
      form.hidden = true;
      form.dataset.state = "unavailable";
      note(why(e, "GET /templates"));
      return;
    }
    if (!tpl.list.length) {
      form.hidden = true;
      form.dataset.state = "empty";
      note("No templates are published yet (an operator publishes them: "
        + "aiecs template import FILE, or POST /templates).");
      return;
    }
    note("");
    form.hidden = false;
    const select = $("template-name");
    const before = select.value;
    select.replaceChildren(...tpl.list.map((t) => new Option(
      t.description ? `${t.name} — ${t.description}` : t.name, t.name)));
    if (tpl.list.some((t) => t.name === before)) select.value = before;
    await onTemplateChange();
  }

  async function onTemplateChange() {
    const name = $("template-name").value;
    $("template-error").textContent = "";
    try {
      tpl.detail = await api("GET", `/templates/${encodeURIComponent(name)}`);
    } catch (e) {
      $("template-error").textContent = why(e, `GET /templates/${name}`);
      return;
    }
    const labels = Object.entries(tpl.detail.labels || {});
    const versions = (tpl.detail.versions || []).map((v) => v.version);
    const newest = Math.max(...versions);
    const refs = $("template-ref");
    refs.replaceChildren(
      ...labels.map(([label, v]) => new Option(`label ${label} (now v${v})`, `label:${label}`)),
      ...versions.map((v) => new Option(`version ${v}${v === newest ? " (newest)" : ""}`,
                                        `version:${v}`)));
    refs.value = labels.some(([l]) => l === "production") ? "label:production"
      : `version:${newest}`;
    await onRefChange();
  }

  // the reference chosen: {name, label} or {name, version}; and the version it means now
  function reference() {
    const [kind, value] = $("template-ref").value.split(/:(.*)/s);
    const name = tpl.detail.name;
    if (kind === "label") {
      return { ref: { name, label: value }, version: (tpl.detail.labels || {})[value] };
    }
    return { ref: { name, version: Number(value) }, version: Number(value) };
  }

  async function onRefChange() {
    const { version } = reference();
    const form = $("template-form");
    $("template-error").textContent = "";
    try {
      tpl.version = await api(
        "GET", `/templates/${encodeURIComponent(tpl.detail.name)}/versions/${version}`);
    } catch (e) {
      $("template-error").textContent = why(e, "the version");
      return;
    }
    const v = tpl.version;
    $("template-description").textContent = `Runs ${v.mode}/${v.service} ${v.operation}`
      + ` (version ${v.version})${v.description ? `: ${v.description}` : ""}`;
    buildFields(v.variables_schema || {});
    form.dataset.state = "ready";
    form.dataset.version = String(v.version);
  }

  // ---- the variables form, from the JSON Schema --------------------------------------
  function resolve(schema, root, depth = 0) {
    if (!schema || depth > 8) return {};
    if (schema.$ref) {
      const def = schema.$ref.split("/").pop();
      return resolve(((root.$defs || root.definitions) || {})[def], root, depth + 1);
    }
    const options = schema.anyOf || schema.oneOf;
    if (options) return resolve(options.find((o) => o.type !== "null") || options[0], root, depth + 1);
    return schema;
  }

  function kindOf(s) {
    if (Array.isArray(s.enum)) return "enum";
    if (s.type === "boolean") return "boolean";
    if (s.type === "integer" || s.type === "number") return "number";
    if (s.type === "string") return "string";
    return "json";
  }

  function buildFields(schema) {
    const box = $("template-fields");
    const kept = collectRaw(); // what the user typed stays when the version changes
    const props = schema.properties && typeof schema.properties === "object"
      ? schema.properties : null;
    const fields = [];
    if (!props) {
      // a schema without properties: the variables as one JSON object
      fields.push(field("(variables)", { type: "object" }, false, "json-all"));
    } else {
      const required = new Set(schema.required || []);
      for (const [name, raw] of Object.entries(props)) {
        fields.push(field(name, resolve(raw, schema), required.has(name)));
      }
    }
    box.replaceChildren(...fields);
    for (const el of box.querySelectorAll("[data-var]")) {
      const old = kept[el.dataset.var];
      if (old && old.kind === el.dataset.kind) setRaw(el, old.value);
    }
  }

  function field(name, s, required, kind = kindOf(s)) {
    const label = document.createElement("label");
    const title = document.createElement("span");
    title.textContent = kind === "json-all" ? "Variables (JSON object)" : name;
    if (required) {
      const star = document.createElement("span");
      star.className = "req";
      star.textContent = " *";
      star.title = "required";
      title.append(star);
    }
    let input;
    const initial = "default" in s ? s.default
      : Array.isArray(s.examples) && s.examples.length ? s.examples[0] : undefined;
    if (kind === "enum") {
      input = document.createElement("select");
      if (!required || !("default" in s)) input.append(new Option("(not set)", ""));
      for (const v of s.enum) input.append(new Option(String(v), JSON.stringify(v)));
      input.value = initial === undefined ? "" : JSON.stringify(initial);
    } else if (kind === "boolean") {
      label.className = "check";
      input = document.createElement("input");
      input.type = "checkbox";
      input.checked = initial === true;
    } else if (kind === "number") {
      input = document.createElement("input");
      input.type = "number";
      input.step = s.type === "integer" ? "1" : "any";
      if (initial !== undefined) input.value = String(initial);
    } else if (kind === "string" && (s.maxLength || 1000) <= 200) {
      input = document.createElement("input");
      input.autocomplete = "off";
      if (initial !== undefined) input.value = String(initial);
    } else {
      input = document.createElement("textarea");
      input.rows = kind === "string" ? 3 : 4;
      input.spellcheck = kind === "string";
      if (kind === "json-all") input.value = "{}";
      else if (initial !== undefined) {
        input.value = kind === "string" ? String(initial) : JSON.stringify(initial, null, 2);
      }
    }
    input.dataset.var = name;
    input.dataset.kind = kind;
    if (s.description) label.title = s.description;
    const hint = [s.description, s.minimum !== undefined && `≥ ${s.minimum}`,
                  s.maximum !== undefined && `≤ ${s.maximum}`,
                  s.maxLength !== undefined && `at most ${s.maxLength} characters`,
                  kind === "json" && "JSON"].filter(Boolean).join(", ");
    if (kind === "boolean") label.append(input, title);
    else label.append(title, input);
    if (hint) {
      const small = document.createElement("span");
      small.className = "hint";
      small.textContent = hint;
      label.append(small);
    }
    return label;
  }

  function collectRaw() {
    const out = {};
    for (const el of document.querySelectorAll("#template-fields [data-var]")) {
      out[el.dataset.var] = { kind: el.dataset.kind,
                              value: el.type === "checkbox" ? el.checked : el.value };
    }
    return out;
  }

  function setRaw(el, value) {
    if (el.type === "checkbox") el.checked = Boolean(value);
    else el.value = value;
  }

  // the variables object; an empty field is left out (its default applies, or the server
  // says it is missing); a JSON field that does not parse is refused here, naming it
  function variables() {
    let out = {};
    for (const el of document.querySelectorAll("#template-fields [data-var]")) {
      const name = el.dataset.var;
      const kind = el.dataset.kind;
      if (kind === "boolean") {
        out[name] = el.checked;
        continue;
      }
      const raw = el.value;
      if (raw === "") continue;
      if (kind === "string") out[name] = raw;
      else if (kind === "number") out[name] = Number(raw);
      else {
        let value;
        try {
          value = JSON.parse(raw);
        } catch (e) {
          const err = new Error(`${kind === "json-all" ? "the variables" : `variable ${name}`}`
            + ` is not valid JSON: ${e.message}`);
          err.fields = [name];
          throw err;
        }
        if (kind === "json-all") out = value;
        else out[name] = value;
      }
    }
    return out;
  }

  // the variables a refusal names ("variable words: ...", "missing variables: a, b",
  // "unknown variable x: ...")
  function named(message) {
    const m = /(?:missing|unknown) variables?:? ([^:]+)/.exec(message)
      || /variable ([A-Za-z0-9_]+)/.exec(message);
    return m ? m[1].split(/,\s*/).map((s) => s.trim().split(/[.[\s]/)[0]) : [];
  }

  function mark(names) {
    for (const el of document.querySelectorAll("#template-fields [data-var]")) {
      if (names.includes(el.dataset.var)) el.setAttribute("aria-invalid", "true");
      else el.removeAttribute("aria-invalid");
    }
  }

  async function onSubmit(ev) {
    ev.preventDefault();
    const error = $("template-error");
    error.textContent = "";
    mark([]);
    if (!tpl.version) return;
    const { ref } = reference();
    let vars;
    try {
      vars = variables();
    } catch (e) {
      error.textContent = `Not sent: ${e.message}`;
      mark(e.fields || []);
      return;
    }
    const v = tpl.version;
    const shown = ref.label ? `${ref.name}:${ref.label}` : `${ref.name}@${ref.version}`;
    const button = $("template-submit");
    button.disabled = true;
    try {
      const out = await api("POST", "/tasks", { template: ref, variables: vars });
      window.aiecs.trackTask(out.task_id, {
        title: `${v.mode}/${v.service} ${v.operation}`, kind: "task", submitted: true,
        template: out.template ? `${out.template.name}@${out.template.version}` : shown });
    } catch (e) {
      const what = e.type ? `${e.status} ${e.type}` : String(e.status || "");
      error.textContent = `Refused${what ? ` (${what})` : ""}: ${e.message}`;
      error.dataset.status = String(e.status || "");
      mark(named(e.message));
      const s = window.aiecs.state;
      if (e.status === 401 && s.config.dev && s.user) await window.aiecs.devLogin(s.user);
    } finally {
      button.disabled = false;
    }
  }

  function start() {
    $("by-operation").addEventListener("click", () => setMode(false));
    $("by-template").addEventListener("click", () => setMode(true));
    $("template-name").addEventListener("change", onTemplateChange);
    $("template-ref").addEventListener("change", onRefChange);
    $("template-form").addEventListener("submit", onSubmit);
  }

  window.aiecsTemplates = {
    // signed in: the list is read when "By template" is (again) chosen
    signedIn() {
      if ($("by-template").getAttribute("aria-pressed") === "true") loadTemplates();
    },
    reset() {
      tpl.list = [];
      tpl.detail = tpl.version = null;
      $("template-fields").replaceChildren();
      $("template-error").textContent = "";
      setMode(false);
    },
  };
  document.addEventListener("DOMContentLoaded", start);
})();
