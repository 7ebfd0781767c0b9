// Small DOM and API helpers the views share. No framework: `h` builds elements, `api` talks
// to the admin API with the session's CSRF token, `table` renders rows.

/** The signed-in session: {user, role, csrf_token}; set by app.js. */
export const session = { current: null };

/** Called when the API answers 401 (the session ended); set by app.js. */
export const hooks = { signedOut: () => {} };

/** Builds an element: h("a", {href: "#"}, "text", child...). `on*` attributes add listeners. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** An API error: its HTTP status and the JSON body ({code, message, errors?}). */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

/**
 * Calls the admin API. `body`: an object (sent as JSON) or, with `type`, text of that type.
 * Resolves to the JSON answer (null for 204); rejects with ApiError.
 */
export async function api(method, path, body, { type } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && session.current) headers["X-CSRF-Token"] = session.current.csrf_token;
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = type || "application/json";
    payload = type ? body : JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { message: text }; }
  }
  if (response.status === 401 && path !== "/admin/session") hooks.signedOut();
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** Whether the signed-in user may change things. */
export function canEdit() {
  return session.current && session.current.role === "editor";
}

/** A short-lived message at the top right (kind: ok, error). */
export function toast(message, kind = "ok") {
  const box = document.getElementById("toasts");
  const item = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : null }, message);
  box.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
}

/** Shows an error of an API call (or any error) as a toast and returns it. */
export function report(error) {
  toast(error.message || String(error), "error");
  return error;
}

/** A table: columns [{label, cell: row => node|text, class?}], rows; `empty` when none. */
export function table(columns, rows, { empty = "Nothing here.", caption, rowAttrs } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("div", { class: "table-wrap" },
    h("table", {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, columns.map(c => h("th", { scope: "col", class: c.class }, c.label)))),
      h("tbody", {}, rows.map(row => h("tr", rowAttrs ? rowAttrs(row) : {},
        columns.map(c => h("td", { class: c.class, "data-label": c.label }, c.cell(row))))))));
}

/** A date-time in the browser's zone, or a dash. */
export function time(value) {
  if (!value) return "–";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

/** A number with thousands separators, or a dash. */
export function num(value) {
  return value === null || value === undefined ? "–" : Number(value).toLocaleString();
}

/** A percentage of a share in [0, 1]. */
export function pct(share) {
  if (share === null || share === undefined) return "–";
  const p = share * 100;
  return `${p >= 10 || p === 0 ? p.toFixed(0) : p.toFixed(p >= 1 ? 1 : 2)}%`;
}

/** A coloured state badge (circuit, lead state, compile status). */
export function badge(text, kind = text) {
  return h("span", { class: `badge state-${String(kind).replace(/[^a-z_]/g, "")}` }, text);
}

/** Compact JSON for a witness lead or a message. */
export function json(value) {
  return h("code", { class: "json" }, JSON.stringify(value));
}

/** Calls `fn` at most once per `ms` after the last call. */
export function debounce(fn, ms) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** A button that runs `action` (async), disabled while it runs; errors become toasts. */
export function button(label, action, attrs = {}) {
  const el = h("button", { type: "button", ...attrs }, label);
  el.addEventListener("click", async () => {
    el.disabled = true;
    try { await action(); } catch (error) { report(error); } finally { el.disabled = attrs.disabled || false; }
  });
  return el;
}

/** A labelled form field: h("label") with text and the control. */
export function field(label, control, hint) {
  return h("label", { class: "field" }, h("span", {}, label), control, hint ? h("small", {}, hint) : null);
}
