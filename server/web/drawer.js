// The detail drawer of one threat (a source and a trail): what it is, its events (paged), what
// `check` says of the trail (sources, provenance), other threats of the same source, and the
// shared triage (status, assignee, notes, hide, suppress with an expiry). Every part asks the
// server; a part whose endpoint this server lacks says so in a quiet line.

import * as api from "./api.js";
import {h, $, replace, fmtInt, fmtTime, reference} from "./dom.js";
import {token} from "./filters.js";

const EVENTS_PER_PAGE = 20;
const STATUSES = ["new", "investigating", "resolved", "false_positive"];
const EXPIRIES = [["3600", "1 hour"], ["86400", "1 day"], ["604800", "7 days"], ["2592000", "30 days"]];

let generation = 0;
let lastFocus = null;

export function drawerOpen() {
  return !$("drawer").hidden;
}

export function closeDrawer() {
  generation++;
  $("drawer").hidden = true;
  document.body.classList.remove("with-drawer");
  if (lastFocus && document.contains(lastFocus)) lastFocus.focus();
}

function note(text, cls = "note") {
  return h("p", {class: cls}, text);
}

function dl(pairs) {
  return h("dl", {class: "facts"}, pairs.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

// threat: a row of /threats; range: {from, to, q}; changed(): the list should reload.
export function openDrawer(threat, range, changed) {
  const gen = ++generation;
  const live = () => gen === generation;
  lastFocus = document.activeElement;
  $("drawer-title").textContent = threat.trail;
  const body = $("drawer-body");
  const eventsBox = h("div", {id: "drawer-events"}, note("loading\u2026"));
  const checkBox = h("div", {id: "drawer-check"}, note("loading\u2026"));
  const otherBox = h("div", {id: "drawer-other"}, note("loading\u2026"));
  const triageBox = h("div", {id: "drawer-triage"}, note("loading\u2026"));
  replace(body,
    dl([["source", h("span", {class: "mono"}, threat.src_ip)], ["trail", h("span", {class: "mono trail"}, threat.trail)],
        ["severity", h("span", {class: "badge sev-" + threat.severity}, threat.severity)], ["type", threat.type || "-"],
        ["info", threat.info || "-"], ["reference", reference(threat.reference)], ["events", fmtInt(threat.events)],
        ["first seen", fmtTime(threat.first_seen)], ["last seen", fmtTime(threat.last_seen)],
        ["sensors", (threat.sensors || []).join(", ") || "-"]]),
    h("h3", {}, "Triage"), triageBox,
    h("h3", {}, "Events"), eventsBox,
    h("h3", {}, "Trail check"), checkBox,
    h("h3", {}, "Other threats from " + threat.src_ip), otherBox);
  $("drawer").hidden = false;
  document.body.classList.add("with-drawer");
  $("drawer-close").focus();

  loadEvents(eventsBox, threat, range, null, live);
  loadCheck(checkBox, threat, live);
  loadOther(otherBox, threat, range, live);
  loadTriage(triageBox, threat, live, changed);
}

async function loadEvents(box, threat, range, cursor, live, table) {
  const a = await api.get("events", {from: range.from, to: range.to, src: threat.src_ip, trail: threat.trail,
                                     limit: EVENTS_PER_PAGE, cursor});
  if (!live()) return;
  if (!a.ok) { replace(box, note(api.errorText(a), "error")); return; }
  const rows = (a.body.events || []).map((e) => h("li", {class: "event"},
    h("div", {}, h("span", {class: "time"}, fmtTime(e.time)), " ", h("span", {class: "muted"}, e.sensor), " \u2192 ",
      h("span", {class: "mono"}, e.dst_ip + (e.dst_port === null ? "" : " port " + e.dst_port)), " ", e.proto,
      e.count > 1 ? h("span", {class: "muted"}, " \u00D7" + fmtInt(e.count)) : null),
    e.info ? h("div", {class: "info-line"}, e.info) : null));
  if (!table) {
    table = h("ol", {class: "events plain"});
    replace(box, table);
  }
  if (!rows.length && !cursor) replace(box, note("no events"));
  rows.forEach((r) => table.appendChild(r));
  const old = box.querySelector(".more");
  if (old) old.remove();
  if (a.body.next_cursor) {
    box.appendChild(h("button", {type: "button", class: "ghost more",
      onclick: () => loadEvents(box, threat, range, a.body.next_cursor, live, table)}, "more events"));
  }
}

async function loadCheck(box, threat, live) {
  const a = await api.get("check", {q: threat.trail});
  if (!live()) return;
  if (!a.ok) { replace(box, note(api.errorText(a), a.status === 400 || a.status === 503 ? "note" : "error")); return; }
  const matches = a.body.matches || [];
  if (!matches.length) { replace(box, note("no trail matches this now (generation " + a.body.generation + ")")); return; }
  replace(box, matches.map((m) => h("div", {class: "match"},
    dl([["matched", m.how], ["trail", h("span", {class: "mono"}, m.trail)], ["info", m.info || "-"], ["reference", reference(m.reference)]]),
    m.provenance ? h("ul", {class: "provenance"}, m.provenance.map((p) => h("li", {},
      h("span", {class: "mono"}, p.source), " (", p.source_kind, ") listed ", fmtTime(p.first_listed), " \u2013 ",
      fmtTime(p.last_listed), p.listed_now ? "" : ", no longer listed"))) : note("no provenance recorded"))));
}

async function loadOther(box, threat, range, live) {
  const a = await api.get("threats", {from: range.from, to: range.to, q: token("src", threat.src_ip), limit: 20});
  if (!live()) return;
  if (!a.ok) { replace(box, note(api.errorText(a), "error")); return; }
  const others = (a.body.threats || []).filter((t) => t.trail !== threat.trail);
  if (!others.length) { replace(box, note("none in this range")); return; }
  replace(box, h("ul", {class: "plain"}, others.map((t) => h("li", {},
    h("span", {class: "badge sev-" + t.severity}, t.severity), " ", h("span", {class: "mono trail"}, t.trail), " ",
    h("span", {class: "muted"}, fmtInt(t.events) + " events")))));
}

async function loadTriage(box, threat, live, changed) {
  const key = {src_ip: threat.src_ip, trail: threat.trail};
  const [a, people] = await Promise.all([api.get("triage", key), api.get("analysts")]);
  if (!live()) return;
  if (!a.ok) { replace(box, note(api.errorText(a), "error")); return; }
  const render = (t) => {
    const msg = h("span", {class: "muted", id: "triage-msg"});
    const send = async (change) => {
      msg.textContent = "saving\u2026";
      const r = await api.put("triage", Object.assign({}, key, change));
      if (!live()) return;
      if (r.ok) { render(r.body); changed(); } else msg.textContent = api.errorText(r);
    };
    const status = h("select", {id: "triage-status", "aria-label": "status"}, STATUSES.map((s) =>
      h("option", {value: s, selected: t.status === s}, s.replace("_", " "))));
    status.addEventListener("change", () => send({status: status.value}));
    const names = people.ok ? (people.body.analysts || []) : [];
    const assignee = h("select", {id: "triage-assignee", "aria-label": "assignee"},
      h("option", {value: "", selected: !t.assignee}, "nobody"),
      names.map((n) => h("option", {value: n, selected: t.assignee === n}, n)),
      t.assignee && !names.includes(t.assignee) ? h("option", {value: t.assignee, selected: true}, t.assignee) : null);
    assignee.addEventListener("change", () => send({assignee: assignee.value}));
    const hide = h("input", {type: "checkbox", id: "triage-hidden", checked: !!t.hidden});
    hide.addEventListener("change", () => send({hidden: hide.checked}));
    const text = h("textarea", {id: "triage-note", rows: "2", maxlength: "4000", placeholder: "add a note"});
    const addNote = h("button", {type: "button", id: "triage-add-note", onclick: async () => {
      if (!text.value.trim()) return;
      msg.textContent = "saving\u2026";
      const r = await api.post("triage/notes", Object.assign({}, key, {text: text.value}));
      if (!live()) return;
      if (r.ok) { render(r.body); changed(); } else msg.textContent = api.errorText(r);
    }}, "Add note");
    const expiry = h("select", {id: "suppress-expiry", "aria-label": "suppress for"}, EXPIRIES.map(([v, l]) => h("option", {value: v}, l)));
    const reason = h("input", {id: "suppress-reason", placeholder: "reason", maxlength: "200"});
    const suppressMsg = h("span", {class: "muted", id: "suppress-msg"});
    const suppress = h("button", {type: "button", id: "suppress", onclick: async () => {
      suppressMsg.textContent = "saving\u2026";
      const r = await api.post("suppressions", {host: threat.src_ip, trail: threat.trail,
                                                expires_in_s: Number(expiry.value), reason: reason.value});
      if (!live()) return;
      suppressMsg.textContent = r.ok ? "suppressed" : api.errorText(r);
      if (r.ok) changed();
    }}, "Suppress");
    replace(box,
      h("div", {class: "form-row"}, h("label", {}, "status ", status), h("label", {}, "assignee ", assignee),
        h("label", {class: "check"}, hide, "hidden"), msg),
      t.updated_by ? note("last changed by " + t.updated_by + " at " + fmtTime(String(t.updated_at || ""))) : null,
      h("ul", {class: "notes", id: "triage-notes"}, (t.notes || []).map((n) => h("li", {},
        h("span", {class: "muted"}, (n.by || "") + ", " + fmtTime(String(n.at || "")) + ": "), h("span", {}, n.text)))),
      h("div", {class: "form-row"}, text, addNote),
      h("div", {class: "form-row"}, h("span", {}, "suppress this source and trail for "), expiry, reason, suppress, suppressMsg),
      (t.history || []).length ? h("details", {}, h("summary", {}, "history"), h("ul", {class: "plain"}, t.history.map((x) =>
        h("li", {}, fmtTime(String(x.at || "")) + " " + (x.by || "") + ": " + x.field + " " + (x.old ?? "") + " \u2192 " + (x.new ?? "")))))
        : null);
  };
  render(a.body);
}
