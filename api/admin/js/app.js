// The admin UI's entry: sign-in, the navigation and the views (addressed by the URL
// fragment, `#/rules`, `#/leads/<submission id>`). Each view module exports
// `mount(root, params)`, which may return a function that stops its timers.

import { api, h, hooks, replace, session, field, toast, ApiError } from "./ui.js";
import * as dashboard from "./dashboard.js";
import * as rules from "./rules.js";
import * as partners from "./partners.js";
import * as dlq from "./dlq.js";
import * as leads from "./leads.js";
import * as audit from "./audit.js";

const views = { dashboard, rules, partners, dlq, leads, audit };
const titles = {
  dashboard: "Dashboard", rules: "Rules", partners: "Partners", dlq: "Dead letters", leads: "Leads", audit: "Audit log",
};
const main = document.getElementById("view");
let unmount = null;

function showSignIn(message) {
  stopView();
  session.current = null;
  document.getElementById("top").hidden = true;
  document.title = "Sign in · Offer Router";
  const error = h("p", { class: "error", role: "alert", id: "sign-in-error" }, message || "");
  const user = h("input", { name: "user", id: "user", autocomplete: "username" });
  const password = h("input", { name: "password", id: "password", type: "password", autocomplete: "current-password", required: true });
  const form = h("form", { class: "card sign-in", id: "sign-in" },
    h("h1", {}, "Offer Router admin"),
    field("User", user, "Leave empty to sign in with the admin token."),
    field("Password or admin token", password),
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    error);
  form.addEventListener("submit", async event => {
    event.preventDefault();
    try {
      session.current = await api("POST", "/admin/session", { user: user.value.trim(), password: password.value });
      start();
    } catch (e) {
      error.textContent = e instanceof ApiError && e.status === 401 ? "Wrong user or password." : e.message;
      password.select();
    }
  });
  replace(main, form);
  user.focus();
}

function stopView() {
  if (typeof unmount === "function") unmount();
  unmount = null;
}

function route() {
  if (!session.current) return;
  const [name, ...params] = (location.hash.replace(/^#\/?/, "") || "dashboard").split("/");
  const view = views[name] ? name : "dashboard";
  stopView();
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${titles[view]} · Offer Router`;
  const root = h("section", { class: "view", id: `view-${view}`, "aria-labelledby": "view-title" },
    h("h1", { id: "view-title" }, titles[view]));
  replace(main, root);
  try {
    unmount = views[view].mount(root, params.map(decodeURIComponent));
  } catch (error) {
    root.append(h("p", { class: "error", role: "alert" }, String(error)));
  }
}

function start() {
  document.getElementById("top").hidden = false;
  document.getElementById("who-name").textContent = session.current.user;
  const role = document.getElementById("who-role");
  role.textContent = session.current.role;
  role.className = `badge role-${session.current.role}`;
  document.body.classList.toggle("viewer", session.current.role !== "editor");
  route();
}

hooks.signedOut = () => showSignIn("Your session ended; sign in again.");

document.getElementById("sign-out").addEventListener("click", async () => {
  try { await api("DELETE", "/admin/session"); } catch (error) { toast(error.message, "error"); }
  showSignIn("Signed out.");
});

window.addEventListener("hashchange", route);

(async () => {
  try {
    session.current = await api("GET", "/admin/session");
    start();
  } catch {
    showSignIn();
  }
})();
