// Leads: search by submission id, site, partner, state and time (never by personal data in
// the URL: the filters are sent as query parameters of the API call only), and a lead's whole
// story: submission, person and alias, the routing decision with its explanation, and every
// delivery attempt.

import { api, h, replace, table, time, badge, json, report, field } from "./ui.js";

const STATES = ["", "pending", "accepted", "rejected", "duplicate", "failed", "unmatched"];

export function mount(root, [submission]) {
  if (submission) return story(root, submission);
  const input = (name, attrs = {}) => h("input", { name, id: `search-${name}`, ...attrs });
  const controls = {
    submission_id: input("submission_id", { placeholder: "uuid" }),
    site: input("site"),
    partner: input("partner"),
    state: h("select", { name: "state", id: "search-state" }, STATES.map(s => h("option", { value: s }, s || "any"))),
    from: input("from", { type: "datetime-local" }),
    to: input("to", { type: "datetime-local" }),
  };
  const results = h("div", { id: "lead-results" });
  const more = h("div");
  const form = h("form", { class: "search", id: "lead-search" },
    field("Submission id", controls.submission_id), field("Site", controls.site), field("Partner", controls.partner),
    field("State", controls.state), field("From", controls.from), field("To", controls.to),
    h("button", { type: "submit", class: "primary" }, "Search"));
  root.append(form, results, more);
  let rows = [];

  async function search(before) {
    const params = new URLSearchParams();
    for (const [key, el] of Object.entries(controls)) {
      const value = el.value.trim();
      if (!value) continue;
      params.set(key, key === "from" || key === "to" ? new Date(value).toISOString() : value);
    }
    params.set("limit", "50");
    if (before) params.set("before", before);
    const answer = await api("GET", `/api/leads?${params}`);
    rows = before ? rows.concat(answer.leads) : answer.leads;
    replace(results, table([
      { label: "Submission", cell: l => h("a", { href: `#/leads/${l.submission_id}`, class: "mono" }, l.submission_id) },
      { label: "Site", cell: l => l.site ?? "–" },
      { label: "Partner", cell: l => l.partner ?? "–" },
      { label: "State", cell: l => badge(l.state) },
      { label: "Rule", cell: l => l.rule ?? "–" },
      { label: "Tree", cell: l => l.tree_version ?? "–", class: "num" },
      { label: "Attempts", cell: l => l.attempts, class: "num" },
      { label: "Created", cell: l => time(l.created_at) },
    ], rows, { empty: "No lead matches." }));
    replace(more, answer.next ? h("button", { type: "button", onclick: () => search(answer.next).catch(report) }, "More") : null);
  }

  form.addEventListener("submit", event => { event.preventDefault(); search().catch(report); });
  search().catch(report);
}

function story(root, id) {
  const box = h("div", { id: "lead-story" }, "Loading…");
  root.append(h("p", {}, h("a", { href: "#/leads" }, "← All leads")), box);
  (async () => {
    const s = await api("GET", `/api/leads/${encodeURIComponent(id)}`);
    const person = p => p ? h("dl", { class: "facts" },
      h("dt", {}, "Person"), h("dd", {}, `#${p.id}`),
      h("dt", {}, "Email"), h("dd", {}, p.email ?? "–"),
      h("dt", {}, "Name"), h("dd", {}, p.full_name ?? "–"),
      h("dt", {}, "Phone"), h("dd", {}, p.phone ?? "–")) : h("p", { class: "muted" }, "none");
    const d = s.decision;
    const explain = s.explain || {};
    const then = explain.then || {};
    replace(box,
      h("div", { class: "card" },
        h("h2", {}, "Submission"),
        h("dl", { class: "facts" },
          h("dt", {}, "Id"), h("dd", { class: "mono" }, s.submission_id),
          h("dt", {}, "Site"), h("dd", {}, s.site ?? "–"),
          h("dt", {}, "Submitted"), h("dd", {}, time(s.submitted_at))),
        s.fields ? h("div", {}, "Routing fields: ", json(s.fields)) : null),
      h("div", { class: "grid2" },
        h("div", { class: "card" }, h("h2", {}, "Person"), person(s.person)),
        h("div", { class: "card" }, h("h2", {}, "Alias"), person(s.alias))),
      h("div", { class: "card", id: "lead-decision" },
        h("h2", {}, "Routing decision"),
        s.unmatched ? h("p", {}, badge("unmatched"), " No rule matched and there is no default route.") : null,
        d && d.route ? h("p", {}, "Rule ", h("strong", {}, d.rule ?? "default route"), " sent it to ", h("strong", {}, d.route ?? "–"),
          ` (tree v${d.tree_version ?? "?"}, rules v${d.rules_version ?? "?"}).`) : null,
        then.reproduced !== undefined ? h("p", {}, then.reproduced ? "Replaying it under that rules version gives the same decision." : badge("replay differs", "failed")) : null,
        explanationOf(then.explanation),
        explain.now ? h("p", { class: "muted" }, nowText(explain.now)) : null),
      h("div", { class: "card", id: "lead-deliveries" },
        h("h2", {}, "Deliveries"),
        (s.deliveries || []).length ? s.deliveries.map(del => h("div", { class: "delivery", "data-delivery": del.partner },
          h("h3", {}, del.partner, " ", badge(del.state)),
          h("p", { class: "muted" }, `${del.attempts} ${del.attempts === 1 ? "call" : "calls"} · claimed ${time(del.request_date)} · updated ${time(del.updated_at)}`),
          routingOf(del.routing),
          table([
            { label: "Call", cell: a => a.attempt, class: "num" },
            { label: "At", cell: a => time(a.at) },
            { label: "Status", cell: a => a.status ?? "–", class: "num" },
            { label: "Outcome", cell: a => badge(a.verdict) },
            { label: "Took", cell: a => `${a.elapsed_ms} ms`, class: "num" },
            { label: "Answer", cell: a => h("code", { class: "excerpt" }, a.error || a.response_excerpt || "–") },
          ], del.calls || [], { empty: del.state === "duplicate" ? "Not sent: the partner already had this person within its dedupe window." : "No call yet." }))) : h("p", { class: "empty" }, "Not delivered to any partner.")),
      h("div", { class: "card", id: "lead-finals" },
        h("h2", {}, "Where it ended"),
        table([
          { label: "State", cell: f => badge(f.state) },
          { label: "Partner", cell: f => f.partner ?? "–" },
          { label: "At", cell: f => time(f.at) },
          { label: "Dead-letter queue", cell: f => f.queue ? h("a", { href: `#/dlq/${encodeURIComponent(f.queue)}` }, f.queue) : "–" },
          { label: "Error", cell: f => f.error ?? "–" },
        ], s.finals || [], { empty: "Still on its way." })));
  })().catch(error => replace(box, h("p", { class: "error", role: "alert" }, error.message)));
}

function explanationOf(explanation) {
  if (!explanation || !Array.isArray(explanation.steps)) {
    return explanation ? h("details", {}, h("summary", {}, "Explanation"), h("pre", { class: "block" }, JSON.stringify(explanation, null, 2))) : null;
  }
  return h("details", { open: true }, h("summary", {}, "Why (first match, in priority order)"),
    h("ol", { class: "trace" }, explanation.steps.map(step => h("li", { class: step.matched ? "matched" : "" },
      h("code", {}, step.rule), ` (priority ${step.priority})`,
      step.matched ? " matched" : [" did not match: ", step.failed ? h("code", {}, step.failed.text) : "its condition is false"]))));
}

function nowText(now) {
  const part = (label, x) => x ? `${label} rules v${x.rules_version}: ${x.changed ? "would decide differently" : "same decision"}` : null;
  return ["Now: ", [part("newest", now.newest), part("active", now.active)].filter(Boolean).join("; ")].join("");
}

/** Why the lead came to this partner: the candidates tried in order, and why each skipped one was. */
function routingOf(routing) {
  if (!routing || !(routing.candidates || []).length) return null;
  return h("div", { class: "routing" },
    h("ol", { class: "trace candidates" }, routing.candidates.map(c => h("li", { class: c.skipped ? "" : "matched" },
      h("code", {}, c.rule ?? "default route"), " → ", h("strong", {}, c.partner),
      c.skipped ? [" skipped: ", c.skipped] : " took it"))),
    routing.held ? h("p", {}, badge("held", "half_open"), ` ${routing.held}: it waits for its partner.`) : null);
}
