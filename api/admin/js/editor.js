// A small code editor for rules files: a textarea over a highlighted copy of its text, with
// line numbers and findings marked at their lines. No IDE: YAML colours, a gutter, markers.

import { h } from "./ui.js";

const escape = s => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** One line of YAML as highlighted HTML (keys, strings, numbers, booleans, comments). */
function highlight(line) {
  const comment = line.match(/^(\s*)(#.*)$/);
  if (comment) return `${escape(comment[1])}<span class="t-comment">${escape(comment[2])}</span>`;
  const key = line.match(/^(\s*-?\s*)([A-Za-z_][\w-]*)(:)(.*)$/);
  let head = "";
  let rest = line;
  if (key) {
    head = `${escape(key[1])}<span class="t-key">${escape(key[2])}</span>${key[3]}`;
    rest = key[4];
  }
  const tokens = rest.split(/('(?:[^']|'')*'|"(?:[^"\\]|\\.)*"|#.*$|\b\d+(?:\.\d+)?\b|\btrue\b|\bfalse\b|\bnull\b)/);
  return head + tokens.map((token, i) => {
    if (i % 2 === 0 || !token) return escape(token);
    if (token.startsWith("#")) return `<span class="t-comment">${escape(token)}</span>`;
    if (token.startsWith("'") || token.startsWith('"')) return `<span class="t-string">${escape(token)}</span>`;
    if (/^\d/.test(token)) return `<span class="t-number">${token}</span>`;
    return `<span class="t-bool">${token}</span>`;
  }).join("");
}

/**
 * An editor in `parent`. Options: value, onInput(text), readOnly, label.
 * Returns {value (get/set), setMarkers([{line, severity, message}]), goTo(line), textarea}.
 */
export function createEditor(parent, { value = "", onInput, readOnly = false, label = "Rules file" } = {}) {
  const gutter = h("div", { class: "gutter", "aria-hidden": "true" });
  const code = h("pre", { class: "code", "aria-hidden": "true" });
  const textarea = h("textarea", {
    class: "input", spellcheck: "false", autocomplete: "off", autocapitalize: "off",
    "aria-label": label, id: "rules-text", wrap: "off", readonly: readOnly,
  });
  textarea.value = value;
  const box = h("div", { class: "editor" }, gutter, h("div", { class: "layers" }, code, textarea));
  parent.append(box);
  let markers = new Map();

  function render() {
    const lines = textarea.value.split("\n");
    code.innerHTML = lines.map((line, i) => {
      const marker = markers.get(i + 1);
      const cls = marker ? ` class="ln sev-${marker.severity}"` : ` class="ln"`;
      return `<div${cls}>${highlight(line) || " "}</div>`;
    }).join("");
    gutter.replaceChildren(...lines.map((_, i) => {
      const marker = markers.get(i + 1);
      return h("div", {
        class: marker ? `gn sev-${marker.severity}` : "gn",
        "data-line": i + 1,
        title: marker ? marker.message : null,
      }, String(i + 1));
    }));
    sync();
  }

  function sync() {
    code.style.transform = `translate(${-textarea.scrollLeft}px, ${-textarea.scrollTop}px)`;
    gutter.style.transform = `translateY(${-textarea.scrollTop}px)`;
  }

  textarea.addEventListener("input", () => {
    render();
    if (onInput) onInput(textarea.value);
  });
  textarea.addEventListener("scroll", sync);
  textarea.addEventListener("keydown", event => {
    // Tab indents by two spaces (Esc then Tab leaves the editor, as in most code editors).
    if (event.key === "Tab" && !event.shiftKey && !textarea.dataset.escaped) {
      event.preventDefault();
      textarea.setRangeText("  ", textarea.selectionStart, textarea.selectionEnd, "end");
      textarea.dispatchEvent(new Event("input"));
    }
    if (event.key === "Escape") textarea.dataset.escaped = "1";
    else if (event.key !== "Tab") delete textarea.dataset.escaped;
  });
  render();

  return {
    textarea,
    get value() { return textarea.value; },
    set value(text) { textarea.value = text; render(); },
    setMarkers(list) {
      markers = new Map();
      const rank = { error: 3, warning: 2, info: 1 };
      for (const m of list) {
        const old = markers.get(m.line);
        if (!old || rank[m.severity] > rank[old.severity]) markers.set(m.line, m);
        else old.message += `\n${m.message}`;
      }
      render();
    },
    goTo(line) {
      const lines = textarea.value.split("\n");
      const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
      textarea.focus();
      textarea.setSelectionRange(start, start + (lines[line - 1] || "").length);
      const lineHeight = parseFloat(getComputedStyle(textarea).lineHeight) || 20;
      textarea.scrollTop = Math.max(0, (line - 5) * lineHeight);
      sync();
    },
  };
}
