// Dead letters: every `<queue>_dlq` with its length; a queue's letters with their error;
// replay one, a selection or all into the source queue; discard with a reason (kept, with
// who discarded it, in `dlq_discarded` and the audit log).

import { api, h, replace, table, time, num, button, canEdit, toast, report, field } from "./ui.js";

export function mount(root, [queue]) {
  const queues = h("div", { id: "dlq-queues" });
  const letters = h("div", { id: "dlq-letters" });
  const discarded = h("div", { id: "dlq-discarded" });
  root.append(queues, letters, h("h2", {}, "Discarded letters"), discarded);

  async function refresh() {
    const list = await api("GET", "/api/dlq");
    replace(queues, table([
      { label: "Dead-letter queue", cell: q => h("a", { href: `#/dlq/${encodeURIComponent(q.queue)}`, "data-dlq": q.queue }, q.queue) },
      { label: "Source", cell: q => q.source },
      { label: "Letters", cell: q => num(q.length), class: "num" },
    ], list, { empty: "No dead-letter queues." }));
    const wanted = queue || (list.find(q => q.length > 0) || {}).queue;
    if (wanted) await showLetters(wanted);
    else replace(letters, h("p", { class: "empty" }, "No dead letters."));
    await showDiscarded();
  }

  async function showLetters(name) {
    const answer = await api("GET", `/api/dlq/${encodeURIComponent(name)}?limit=200`);
    const chosen = new Set();
    const reason = h("input", { id: "discard-reason", placeholder: "why these letters are dropped" });
    const count = h("span", { class: "muted", id: "selected-count" }, "none selected");
    const update = () => { count.textContent = chosen.size ? `${chosen.size} selected` : "none selected"; };
    const replay = async body => {
      const result = await api("POST", `/api/dlq/${encodeURIComponent(name)}/replay`, body);
      toast(`Replayed ${result.replayed}${result.skipped && result.skipped.length ? `, skipped ${result.skipped.length}` : ""}.`);
      await refresh();
    };
    const discard = async body => {
      if (!reason.value.trim()) { toast("Give a reason to discard.", "error"); reason.focus(); return; }
      const result = await api("POST", `/api/dlq/${encodeURIComponent(name)}/discard`, { ...body, reason: reason.value.trim() });
      toast(`Discarded ${result.discarded}.`);
      await refresh();
    };
    replace(letters,
      h("h2", {}, `Letters in ${name}`),
      canEdit() && answer.letters.length ? h("div", { class: "toolbar wrap" },
        button("Replay all", () => replay({ all: true }), { class: "primary", id: "replay-all" }),
        button("Replay selected", () => chosen.size ? replay({ msg_ids: [...chosen] }) : toast("Select letters first.", "error"), { id: "replay-selected" }),
        count,
        field("Reason", reason),
        button("Discard selected", () => chosen.size ? discard({ msg_ids: [...chosen] }) : toast("Select letters first.", "error"), { id: "discard-selected", class: "danger" }),
        button("Discard all", () => discard({ all: true }), { id: "discard-all", class: "danger" })) : null,
      table([
        { label: "", cell: l => canEdit() ? h("input", { type: "checkbox", "aria-label": `select letter ${l.msg_id}`, "data-msg": l.msg_id,
            onchange: e => { if (e.target.checked) chosen.add(l.msg_id); else chosen.delete(l.msg_id); update(); } }) : null },
        { label: "Id", cell: l => l.msg_id, class: "num" },
        { label: "Dead since", cell: l => time(l.enqueued_at) },
        { label: "Error", cell: l => h("span", { class: "error-text" }, errorOf(l)) },
        { label: "Attempts", cell: l => (l.envelope && l.envelope.attempts) ?? "–", class: "num" },
        { label: "Message", cell: l => h("details", {}, h("summary", {}, "show"), h("pre", { class: "block" }, JSON.stringify(l.envelope || l.raw || l, null, 2))) },
        { label: "", cell: l => canEdit() ? button("Replay", () => replay({ msg_id: l.msg_id }), { class: "small" }) : null },
      ], answer.letters, { empty: `${name} is empty.` }));
  }

  async function showDiscarded() {
    try {
      const answer = await api("GET", "/api/dlq/discarded?limit=20");
      replace(discarded, table([
        { label: "Queue", cell: l => l.queue },
        { label: "Id", cell: l => l.msg_id, class: "num" },
        { label: "Discarded", cell: l => time(l.discarded_at) },
        { label: "By", cell: l => l.actor },
        { label: "Reason", cell: l => l.reason },
      ], answer.letters || [], { empty: "None discarded." }));
    } catch (error) {
      replace(discarded, h("p", { class: "muted" }, error.message));
    }
  }

  refresh().catch(report);
}

function errorOf(letter) {
  const e = letter.envelope || {};
  return e.error || e.last_error || (e.dead && e.dead.error) || letter.error || "–";
}
