// Rules: the stored rule set in an editor that checks as the author types (a debounced dry
// run: `rulec check`'s findings at their lines, and the change impact against the active
// rules), save with the compile status followed live, enable/disable, versions and rollback.

import { api, h, replace, table, time, pct, badge, json, debounce, button, canEdit, toast, report, ApiError } from "./ui.js";
import { createEditor } from "./editor.js";

const CHECK_DELAY_MS = 350;
const YAML = "application/yaml";

export function mount(root) {
  const timers = new Set();
  const status = h("div", { class: "status-bar", id: "rules-status" }, "Loading…");
  const checkState = h("span", { id: "check-status", class: "muted", "aria-live": "polite" });
  const findings = h("div", { id: "findings", class: "panel" });
  const impact = h("div", { id: "impact", class: "panel" });
  const compile = h("div", { id: "compile-status", "aria-live": "polite" });
  const rulesList = h("div", { id: "rules-list" });
  const versions = h("div", { id: "versions" });
  const editorBox = h("div", { class: "editor-box" });
  const save = button("Save", () => saveRules(), { class: "primary", id: "save-rules", disabled: !canEdit() });
  const revert = button("Discard edits", () => load(), { id: "revert-rules" });

  root.append(
    status,
    h("div", { class: "split" },
      h("div", { class: "pane" },
        h("div", { class: "toolbar" }, h("h2", {}, "Rule set"), checkState, revert, save),
        editorBox,
        compile),
      h("div", { class: "pane side" },
        h("h2", {}, "Findings"), findings,
        h("h2", {}, "Change impact"), h("p", { class: "muted" }, "Against the rules that route leads now."), impact)),
    h("h2", {}, "Rules"), rulesList,
    h("h2", {}, "Versions"), versions);

  const editor = createEditor(editorBox, { onInput: debounce(check, CHECK_DELAY_MS), readOnly: !canEdit() });
  let sequence = 0;
  let stored = "";

  async function load() {
    const [ruleSet, trees] = await Promise.all([api("GET", "/api/rules"), api("GET", "/api/rules/trees")]);
    stored = ruleSet.yaml;
    editor.value = ruleSet.yaml;
    const active = trees.find(t => t.active);
    replace(status,
      h("span", {}, "Stored: ", h("strong", {}, `rules v${ruleSet.version}`)), " · ",
      h("span", { id: "active-tree" }, active
        ? ["Routing with ", h("strong", {}, `tree v${active.version}`), ` (rules v${active.rules_version}, since ${time(active.activated_at)})`]
        : "No tree is active yet."));
    renderRules(ruleSet.rule_set.rules);
    showCompile(ruleSet.version, trees);
    check(editor.value);
    loadVersions();
  }

  async function check(text) {
    const mine = ++sequence;
    const started = performance.now();
    checkState.textContent = "Checking…";
    try {
      const answer = await api("PUT", "/api/rules?dry_run=true", text, { type: YAML });
      if (mine !== sequence) return;
      const ms = Math.round(performance.now() - started);
      const r = answer.report;
      checkState.textContent = `${r.errors} errors, ${r.warnings} warnings · checked in ${ms} ms`;
      checkState.dataset.ms = ms;
      showFindings(r);
      showImpact(answer.impact, text === stored);
    } catch (error) {
      if (mine !== sequence) return;
      checkState.textContent = `Cannot check: ${error.message}`;
    }
  }

  function showFindings(r) {
    editor.setMarkers(r.findings.filter(f => f.location).map(f => ({
      line: f.location.line, severity: f.severity, message: `${f.code}: ${f.message}`,
    })));
    if (!r.findings.length) {
      replace(findings, h("p", { class: "ok-text" }, `No findings: ${r.rules_checked} rules checked.`));
      return;
    }
    replace(findings, h("ul", { class: "findings" }, r.findings.map(f => h("li", {
      class: `finding sev-${f.severity}`, "data-code": f.code, "data-line": f.location ? f.location.line : null,
    },
      h("div", {},
        badge(f.severity), " ", h("strong", {}, f.code),
        f.location ? [" ", button(`line ${f.location.line}`, async () => editor.goTo(f.location.line), { class: "link goto" })] : null),
      h("div", { class: "message" }, f.message),
      f.witness ? h("div", { class: "witness" }, "Example lead: ", json(f.witness)) : null))));
  }

  function showImpact(answer, unchanged) {
    if (!answer) { replace(impact, h("p", { class: "muted" }, "Fix the errors to see the impact.")); return; }
    if (answer.unavailable) { replace(impact, h("p", { class: "muted" }, answer.unavailable)); return; }
    if (answer.error) { replace(impact, h("p", { class: "error" }, answer.error)); return; }
    const changes = answer.changes || [];
    const moves = changes.filter(c => c.kind === "moves");
    const summary = moves.length
      ? h("p", { class: "impact-summary warn-text" }, `${pct(answer.moved_share)} of leads would move (${moves.length} ${moves.length === 1 ? "change" : "changes"}).`)
      : h("p", { class: "impact-summary ok-text" }, unchanged ? "This is the stored rule set." : "No lead would go to another partner.");
    const describe = side => side.rule ? `${side.rule} → ${side.route ?? "unmatched"}` : `no rule → ${side.route ?? "unmatched"}`;
    replace(impact, summary,
      changes.length ? h("ul", { class: "changes" }, changes.map(c => h("li", { class: `change ${c.kind}` },
        h("div", {}, h("strong", {}, c.share === null ? "Some leads" : `${pct(c.share)} of leads`),
          c.kind === "moves" ? " would move from " : " would stay but be decided by another rule: ",
          h("span", { class: "from" }, describe(c.from)), " to ", h("span", { class: "to" }, describe(c.to))),
        h("div", { class: "witness" }, "For example: ", json(c.witness))))) : null,
      (answer.schema || []).length ? h("p", { class: "muted" }, `Schema: ${answer.schema.map(s => `${s.field} ${s.change}`).join(", ")}`) : null);
  }

  async function saveRules() {
    let answer;
    try {
      answer = await api("PUT", "/api/rules", editor.value, { type: YAML });
    } catch (error) {
      if (error instanceof ApiError && error.body.report) {
        showFindings(error.body.report);
        toast(error.message, "error");
        return;
      }
      throw error;
    }
    stored = editor.value;
    toast(`Saved rules v${answer.version}.`);
    follow(answer.version);
    loadVersions();
    api("GET", "/api/rules").then(r => renderRules(r.rule_set.rules)).catch(report);
  }

  /** Shows the compile status of rules `version` and follows it until it settles. */
  function follow(version) {
    replace(compile, h("p", {}, `Rules v${version}: `, badge("queued"), " waiting for the compile worker…"));
    const timer = setInterval(async () => {
      try {
        const trees = await api("GET", "/api/rules/trees");
        if (showCompile(version, trees)) {
          clearInterval(timer);
          timers.delete(timer);
          load();
        }
      } catch (error) { report(error); }
    }, 1000);
    timers.add(timer);
  }

  /** Renders rules `version`'s compile status; true once it is settled. */
  function showCompile(version, trees) {
    const tree = trees.find(t => t.rules_version === version);
    if (!tree) {
      replace(compile, h("p", {}, `Rules v${version}: `, badge("queued"), " waiting for the compile worker…"));
      return false;
    }
    if (tree.active) {
      replace(compile, h("p", {}, `Rules v${version}: `, badge("active"), ` compiled as tree v${tree.version} and routing leads.`));
      return true;
    }
    if (tree.refused || tree.errors > 0) {
      const why = tree.refused || `${tree.errors} error-level findings`;
      replace(compile, h("p", {}, `Rules v${version}: `, badge("refused"), ` tree v${tree.version} was not activated: ${why}. The previous tree keeps routing.`));
      api("GET", `/api/rules/trees/${tree.version}`).then(t => {
        const list = ((t.report || {}).findings || []).filter(f => f.severity === "error");
        if (list.length) compile.append(h("ul", { class: "findings" }, list.map(f => h("li", { class: "finding sev-error" }, h("strong", {}, f.code), " ", f.message))));
      }).catch(() => {});
      return true;
    }
    replace(compile, h("p", {}, `Rules v${version}: `, badge("compiled"), ` tree v${tree.version}, superseded by a newer one.`));
    return true;
  }

  function renderRules(list) {
    replace(rulesList, table([
      { label: "Name", cell: r => h("code", {}, r.name) },
      { label: "Priority", cell: r => r.priority, class: "num" },
      { label: "When", cell: r => h("code", { class: "when" }, r.when) },
      { label: "Route", cell: r => r.route },
      { label: "Enabled", cell: r => r.enabled ? badge("on", "closed") : badge("off", "open") },
      { label: "", cell: r => canEdit() ? button(r.enabled ? "Disable" : "Enable", async () => {
          const answer = await api("POST", `/api/rules/${encodeURIComponent(r.name)}/${r.enabled ? "disable" : "enable"}`);
          toast(`${r.enabled ? "Disabled" : "Enabled"} ${r.name}: rules v${answer.version}.`);
          follow(answer.version);
          const fresh = await api("GET", "/api/rules");
          stored = fresh.yaml;
          editor.value = fresh.yaml;
          renderRules(fresh.rule_set.rules);
          loadVersions();
        }, { class: "small", "data-rule": r.name }) : null },
    ], list, { empty: "No rules yet." }));
  }

  async function loadVersions() {
    const list = await api("GET", "/api/rules/versions");
    const entries = Array.isArray(list) ? list : (list.versions || []);
    replace(versions, table([
      { label: "Version", cell: v => `v${v.version}` },
      { label: "Saved", cell: v => time(v.saved_at) },
      { label: "Impact", cell: v => {
          const d = v.diff_summary;
          if (!d) return "–";
          if (d.equivalent) return "no lead moved";
          return d.moves !== undefined ? `${d.moves} moves${d.moved_share !== null && d.moved_share !== undefined ? ` (${pct(d.moved_share)})` : ""}` : "–";
        } },
      { label: "", cell: v => canEdit() ? button("Roll back to this", async () => {
          if (!confirm(`Save rules v${v.version} again as a new version?`)) return;
          const answer = await api("POST", `/api/rules/versions/${v.version}/restore`);
          toast(`Rolled back: rules v${v.version} saved as v${answer.version}.`);
          follow(answer.version);
          load();
        }, { class: "small", "data-version": v.version }) : null },
    ], entries, { empty: "No kept versions." }));
  }

  load().catch(report);
  return () => { for (const t of timers) clearInterval(t); };
}
