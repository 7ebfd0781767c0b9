// The audit log: who changed which rules, partners or dead letters, and when (every change
// through the admin API, written by the server's admin middleware).

import { api, h, replace, table, time, badge, json, report, field } from "./ui.js";

export function mount(root) {
  const target = h("select", { id: "audit-target" }, ["", "rules", "partners", "dlq", "sessions"].map(t => h("option", { value: t }, t || "everything")));
  const actor = h("input", { id: "audit-actor" });
  const list = h("div", { id: "audit-list" });
  const more = h("div");
  const form = h("form", { class: "search" }, field("What", target), field("Who", actor), h("button", { type: "submit", class: "primary" }, "Show"));
  root.append(form, list, more);
  let rows = [];

  async function load(before) {
    const params = new URLSearchParams({ limit: "50" });
    if (target.value) params.set("target", target.value);
    if (actor.value.trim()) params.set("actor", actor.value.trim());
    if (before) params.set("before", before);
    const answer = await api("GET", `/api/audit?${params}`);
    rows = before ? rows.concat(answer.entries) : answer.entries;
    replace(list, table([
      { label: "When", cell: e => time(e.at) },
      { label: "Who", cell: e => [e.actor, " ", badge(e.role, e.role === "editor" ? "closed" : "half_open")] },
      { label: "What", cell: e => h("code", {}, `${e.method} ${e.path}`) },
      { label: "Rules", cell: e => e.rules_version ? `v${e.rules_version}` : "–" },
      { label: "Detail", cell: e => Object.keys(e.detail || {}).length ? json(e.detail) : "–" },
    ], rows, { empty: "No changes recorded.", rowAttrs: e => ({ "data-audit": e.id }) }));
    replace(more, answer.next ? h("button", { type: "button", onclick: () => load(answer.next).catch(report) }, "More") : null);
  }

  form.addEventListener("submit", event => { event.preventDefault(); load().catch(report); });
  load().catch(report);
}
