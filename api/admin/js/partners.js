// Partners: each with its circuit, queue, outcomes today and last error; edit a partner's
// configuration (as JSON, validated by the API), enable/disable it, send it a test lead.

import { api, h, replace, table, time, num, badge, button, canEdit, toast, report, ApiError, field } from "./ui.js";

const REFRESH_MS = 3000;

export function mount(root) {
  const list = h("div", { id: "partners-list" });
  const detail = h("div", { id: "partner-detail" });
  root.append(h("p", { class: "muted" }, "Refreshes every 3 s."), list, detail);
  let open = null;

  async function refresh() {
    const partners = await api("GET", "/api/partners");
    replace(list, table([
      { label: "Partner", cell: p => button(p.partner.name, async () => show(p.partner.name), { class: "link", "data-partner": p.partner.name }) },
      { label: "Enabled", cell: p => p.partner.enabled === false ? badge("off", "open") : badge("on", "closed") },
      { label: "Circuit", cell: p => badge(circuitOf(p), circuitOf(p)), class: "circuit" },
      { label: "Queue", cell: p => stat(p, s => `${num(s.queue_depth)}${s.oldest_age_secs ? ` (oldest ${s.oldest_age_secs}s)` : ""}`), class: "num" },
      { label: "Dead letters", cell: p => stat(p, s => num(s.dlq_depth)), class: "num" },
      { label: "Today", cell: p => stat(p, s => outcomes(s.today)) },
      { label: "Caps", cell: p => stat(p, s => caps(s.caps)), class: "caps" },
      { label: "Taking leads", cell: p => stat(p, s => s.closed ? badge(closedText(s.closed), "open") : badge("yes", "closed")) },
      { label: "Last error", cell: p => stat(p, s => s.last_error ? h("span", { title: time(s.last_error.at) }, `${s.last_error.status ?? ""} ${s.last_error.error}`.trim()) : "–") },
    ], partners, { empty: "No partners configured.", rowAttrs: p => ({ "data-partner-row": p.partner.name }) }));
  }

  async function show(name) {
    open = name;
    const p = await api("GET", `/api/partners/${encodeURIComponent(name)}`);
    const config = h("textarea", { class: "json-edit", id: "partner-config", rows: 18, spellcheck: "false", readonly: !canEdit() });
    config.value = JSON.stringify(p.partner, null, 2);
    const errors = h("div", { id: "partner-errors", role: "alert" });
    const testFields = h("textarea", { id: "test-fields", rows: 5, spellcheck: "false" });
    testFields.value = JSON.stringify({
      email: "test.lead@example.com", full_name: "Test Lead", phone: "415 555 2671",
      fields: { state: "CA", age: 30, program: "nursing" },
    }, null, 2);
    const testResult = h("div", { id: "test-result" });
    replace(detail, h("div", { class: "card" },
      h("h2", {}, `Partner ${name}`),
      h("div", { class: "toolbar" },
        canEdit() ? button(p.partner.enabled === false ? "Enable" : "Disable", async () => {
          await api("POST", `/api/partners/${encodeURIComponent(name)}/${p.partner.enabled === false ? "enable" : "disable"}`);
          toast(`${name} ${p.partner.enabled === false ? "enabled" : "disabled"}.`);
          await refresh();
          await show(name);
        }, { id: "toggle-partner" }) : null),
      field("Configuration (the partners file's shape, as JSON)", config),
      errors,
      canEdit() ? button("Save configuration", async () => {
        let body;
        try { body = JSON.parse(config.value); } catch (e) { replace(errors, h("p", { class: "error" }, `Not JSON: ${e.message}`)); return; }
        try {
          await api("PUT", `/api/partners/${encodeURIComponent(name)}`, body);
          replace(errors);
          toast(`Saved ${name}.`);
          await refresh();
        } catch (error) {
          if (error instanceof ApiError && error.body.errors) {
            replace(errors, h("ul", { class: "findings" }, error.body.errors.map(e => h("li", { class: "finding sev-error" }, h("strong", {}, e.field), ": ", e.message))));
          } else replace(errors, h("p", { class: "error" }, error.message));
        }
      }, { class: "primary", id: "save-partner" }) : null,
      h("h3", {}, "Send a test lead"),
      h("p", { class: "muted" }, "Rendered with the partner's template and sent now; no lead is recorded, dedupe and the circuit are untouched."),
      field("Test lead (JSON: email, full_name, phone, fields)", testFields),
      canEdit() ? button("Send test lead", async () => {
        let lead;
        try { lead = JSON.parse(testFields.value); } catch (e) { replace(testResult, h("p", { class: "error" }, `Not JSON: ${e.message}`)); return; }
        const answer = await api("POST", `/api/partners/${encodeURIComponent(name)}/test`, lead);
        replace(testResult,
          h("h4", {}, "Request"),
          answer.request
            ? h("pre", { class: "block", id: "test-request" }, `${answer.request.method} ${answer.request.url}\n${Object.entries(answer.request.headers || {}).map(([k, v]) => `${k}: ${v}`).join("\n")}\n\n${answer.request.body}`)
            : h("p", { class: "error" }, "The templates did not render."),
          h("h4", {}, "Answer"),
          answer.response
            ? h("pre", { class: "block", id: "test-response" }, `HTTP ${answer.response.status} in ${answer.response.elapsed_ms} ms\n\n${answer.response.body_excerpt}`)
            : h("p", { class: "error" }, answer.error || "no answer"),
          h("p", { id: "test-outcome" }, "Outcome: ", badge(answer.outcome || "error")));
      }, { id: "send-test" }) : null,
      testResult));
  }

  refresh().catch(report);
  const timer = setInterval(() => refresh().catch(() => {}), REFRESH_MS);
  return () => clearInterval(timer);
}

function circuitOf(p) {
  const c = p.circuit;
  if (!c) return "closed";
  return typeof c === "string" ? c : (c.state || "closed");
}

/** A partner's caps and budget now: "daily 37/100", "monthly 12.50/500.00", per rule. */
function caps(list) {
  if (!list || !list.length) return "–";
  return h("span", { class: "caps-list" }, list.map(c => {
    const what = `${c.rule ? `${c.rule} ` : ""}${c.period}`;
    const used = c.cap !== null && c.cap !== undefined ? `${num(c.leads)}/${num(c.cap)}` : "";
    const spent = c.budget ? `${c.spend}/${c.budget}` : "";
    const full = (c.cap !== null && c.cap !== undefined && c.leads >= c.cap);
    return h("span", { class: full ? "cap full" : "cap", title: full ? "reached: leads fall through" : "" }, `${what} ${[used, spent].filter(Boolean).join(" · ")} `);
  }));
}

function closedText(closed) {
  if (closed.why === "paused") return "paused";
  if (closed.why === "schedule") return closed.opens_at ? `closed until ${time(closed.opens_at)}` : "closed";
  return closed.why;
}

function stat(p, f) {
  return p.stats ? f(p.stats) : "–";
}

function outcomes(today) {
  if (!today) return "–";
  return h("span", { class: "outcomes" }, ["accepted", "rejected", "duplicate", "failed", "pending"]
    .filter(k => today[k])
    .map(k => h("span", { class: `o-${k}`, title: k }, `${k} ${num(today[k])} `)));
}

