// The app: who is logged in, the login form, the header (navigation, theme, logout), the route
// (the view and its parameters live in the URL hash, so a view is a link), keyboard handling,
// and document.documentElement.dataset.state: "loading" while a view fetches, "ready" once
// every panel of the current view has its answer (the browser tests and the bench wait on it).

import * as api from "./api.js";
import {$} from "./dom.js";
import {renderDashboard, renderSensors, renderSuppressions} from "./views.js";
import {closeDrawer, drawerOpen} from "./drawer.js";

const THEME_KEY = "maltrail-theme";
const root = document.documentElement;

const app = {
  user: null,
  generation: 0,        // bumps on every render: an older view's answers are dropped
  nav: null,            // the current view's list navigation {move(delta), open()}
  stopView: null,       // the current view's clean-up (live stream, timers)
};

export function todayUtc() {
  return new Date().toISOString().slice(0, 10);
}

// "#/dashboard?from=...&q=..." -> {view, params}
export function parseHash() {
  const raw = window.location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?", 2);
  const params = new URLSearchParams(query || "");
  return {view: path || "dashboard", params};
}

export function setHash(view, params, replace = false) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined && v !== "") p.set(k, v);
  const text = "#/" + view + (p.toString() ? "?" + p.toString() : "");
  if (text === window.location.hash) return false;
  if (replace) window.history.replaceState(null, "", text);
  else window.location.hash = text;
  return true;
}

function setState(value) {
  root.dataset.state = value;
}

// Views call this around their fetches: track(gen, promise) resolves the view's readiness.
function context(gen) {
  return {
    current: () => gen === app.generation,
    setNav: (nav) => { if (gen === app.generation) app.nav = nav; },
    onStop: (fn) => { if (gen === app.generation) app.stopView = fn; },
    loading: () => { if (gen === app.generation) setState("loading"); },
    ready: () => { if (gen === app.generation) setState("ready"); },
    user: () => app.user,
    setHash,
  };
}

async function route() {
  if (!app.user) return;
  const gen = ++app.generation;
  if (app.stopView) { app.stopView(); app.stopView = null; }
  app.nav = null;
  const {view, params} = parseHash();
  for (const name of ["dashboard", "sensors", "suppressions"]) {
    $("nav-" + name).classList.toggle("active", view === name);
    if (view === name) $("nav-" + name).setAttribute("aria-current", "page");
    else $("nav-" + name).removeAttribute("aria-current");
  }
  const ctx = context(gen);
  setState("loading");
  const main = $("main");
  if (view === "sensors") await renderSensors(main, ctx);
  else if (view === "suppressions") await renderSuppressions(main, ctx);
  else await renderDashboard(main, ctx, params);
  ctx.ready();
}

// -- login, logout, who am I ---------------------------------------------------------------

function showLogin() {
  app.user = null;
  app.generation++;
  if (app.stopView) { app.stopView(); app.stopView = null; }
  api.setCsrf(null);
  closeDrawer();
  $("bar").hidden = true;
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-password").value = "";
  $("login-user").focus();
  setState("ready");
}

function loggedIn(body) {
  app.user = {username: body.username, uid: body.uid, netfilter: body.netfilter};
  api.setCsrf(body.csrf_token);
  $("login").hidden = true;
  $("bar").hidden = false;
  $("main").hidden = false;
  const who = $("whoami");
  who.textContent = body.username;
  who.setAttribute("title", "logged in as " + body.username + " (uid " + body.uid + ")" +
                   (body.netfilter ? "; sees " + body.netfilter : ""));
  if (!parseHash().params.toString() && !/^#\/(sensors|suppressions)/.test(window.location.hash)) {
    setHash("dashboard", {from: todayUtc(), to: todayUtc()}, true);
  }
  route();
}

async function onLogin(ev) {
  ev.preventDefault();
  const err = $("login-error");
  err.textContent = "";
  setState("loading");
  const answer = await api.post("login", {username: $("login-user").value, password: $("login-password").value});
  if (answer.ok) {
    const who = await api.call("GET", "session");
    loggedIn(who.ok ? who.body : answer.body);
    return;
  }
  // One message for a wrong name and a wrong password alike: the page must not tell which.
  if (answer.status === 429) err.textContent = (answer.body && answer.body.error) || "Too many failed logins; wait a moment.";
  else if (answer.status === 401) err.textContent = "Login failed: the username or the password is not right.";
  else err.textContent = "Login failed: " + api.errorText(answer);
  $("login-password").value = "";
  setState("ready");
}

async function onLogout() {
  await api.post("logout", {});
  showLogin();
}

// -- theme -----------------------------------------------------------------------------------

function effectiveTheme() {
  const chosen = root.dataset.theme;
  if (chosen === "dark" || chosen === "light") return chosen;
  return window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

function applyStoredTheme() {
  let stored = null;
  try { stored = window.localStorage.getItem(THEME_KEY); } catch (_) { stored = null; }
  if (stored === "dark" || stored === "light") root.dataset.theme = stored;
  $("theme").textContent = effectiveTheme() === "dark" ? "Light theme" : "Dark theme";
}

function toggleTheme() {
  const next = effectiveTheme() === "dark" ? "light" : "dark";
  root.dataset.theme = next;
  try { window.localStorage.setItem(THEME_KEY, next); } catch (_) { /* private mode: for this page only */ }
  $("theme").textContent = next === "dark" ? "Light theme" : "Dark theme";
}

// -- keyboard --------------------------------------------------------------------------------

function onKey(ev) {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const tag = ev.target && ev.target.tagName;
  const typing = tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT";
  if (ev.key === "Escape" && drawerOpen()) { closeDrawer(); ev.preventDefault(); return; }
  if (typing || !app.nav) return;
  if (ev.key === "j" || ev.key === "ArrowDown") { app.nav.move(1); ev.preventDefault(); }
  else if (ev.key === "k" || ev.key === "ArrowUp") { app.nav.move(-1); ev.preventDefault(); }
  else if (ev.key === "Enter" && tag !== "BUTTON" && tag !== "A") { app.nav.open(); ev.preventDefault(); }
}

// -- start -----------------------------------------------------------------------------------

async function start() {
  applyStoredTheme();
  $("theme").addEventListener("click", toggleTheme);
  $("logout").addEventListener("click", onLogout);
  $("login-form").addEventListener("submit", onLogin);
  $("drawer-close").addEventListener("click", closeDrawer);
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", () => route());
  api.whenLoggedOut(showLogin);
  const who = await api.call("GET", "session");
  if (who.ok && who.body) loggedIn(who.body);
  else showLogin();
}

start();
