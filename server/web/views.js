// The views: the dashboard (range, filter chips, totals, chart, severity split, tops, the threat
// list, live mode, export), the sensors page and the suppressions page. Every number shown is
// one the server aggregated for the range and filter in the URL; the browser never fetches a
// day's events to count them.

import * as api from "./api.js";
import {h, replace, fmtInt, fmtTime, fmtAgo} from "./dom.js";
import {stackedBars, severitySplit, sparkline, SEVERITY_ORDER} from "./charts.js";
import {splitTokens, joinTokens, addTokens, token} from "./filters.js";
import {openDrawer} from "./drawer.js";

const DAY_MS = 86400e3;
const THREATS_PER_PAGE = 50;
const SPARK_SLICES = 24;
const LIVE_ROWS = 100;
const SORTS = {events: "Events", first: "First seen", last: "Last seen", severity: "Severity", src: "Source",
               trail: "Trail"};
const TOP_FIELDS = [["src_ip", "Top sources", "src"], ["dst_ip", "Top destinations", "dst"], ["trail", "Top trails", "trail"]];

function isDate(text) {
  return /^\d{4}-\d{2}-\d{2}$/.test(text || "") && !Number.isNaN(Date.parse(text + "T00:00:00Z"));
}

function shiftDate(text, days) {
  return new Date(Date.parse(text + "T00:00:00Z") + days * DAY_MS).toISOString().slice(0, 10);
}

function note(text, cls = "note") {
  return h("p", {class: cls}, text);
}

function card(title, attrs, ...body) {
  return h("section", Object.assign({class: "card"}, attrs), h("h2", {}, title), ...body);
}

// -- the dashboard -------------------------------------------------------------------------------

export async function renderDashboard(main, ctx, params) {
  const today = new Date().toISOString().slice(0, 10);
  const s = {
    from: isDate(params.get("from")) ? params.get("from") : today,
    to: isDate(params.get("to")) ? params.get("to") : (isDate(params.get("from")) ? params.get("from") : today),
    tokens: splitTokens(params.get("q") || ""),
    by: params.get("by") === "severity" ? "severity" : "type",
    sort: params.get("sort") || "-events",
    hidden: params.get("hidden") === "show" ? "show" : "",
    live: params.get("live") === "1",
  };
  if (s.to < s.from) s.to = s.from;
  const q = joinTokens(s.tokens);
  const hashParams = (over) => Object.assign({from: s.from, to: s.to, q, by: s.by === "type" ? "" : s.by,
                                              sort: s.sort === "-events" ? "" : s.sort, hidden: s.hidden,
                                              live: s.live ? "1" : ""}, over);
  const go = (over) => ctx.setHash("dashboard", hashParams(over));
  const range = {from: s.from, to: s.to};
  const filtered = Object.assign({q}, range);
  const days = Math.round((Date.parse(s.to) - Date.parse(s.from)) / DAY_MS) + 1;
  const bucket = days <= 3 ? "hour" : "day";

  // Toolbar: range, filter, live, export.
  const fromInput = h("input", {type: "date", id: "range-from", value: s.from, "aria-label": "from"});
  const toInput = h("input", {type: "date", id: "range-to", value: s.to, "aria-label": "to"});
  const applyRange = () => {
    if (isDate(fromInput.value) && isDate(toInput.value)) go({from: fromInput.value, to: toInput.value < fromInput.value ? fromInput.value : toInput.value});
  };
  fromInput.addEventListener("change", applyRange);
  toInput.addEventListener("change", applyRange);
  const rangeBox = h("div", {class: "range"},
    h("button", {type: "button", id: "prev-day", class: "ghost", title: "previous day",
                 onclick: () => go({from: shiftDate(s.from, -days), to: shiftDate(s.to, -days)})}, "\u25C0"),
    fromInput, h("span", {class: "muted"}, "to"), toInput,
    h("button", {type: "button", id: "next-day", class: "ghost", title: "next day",
                 onclick: () => go({from: shiftDate(s.from, days), to: shiftDate(s.to, days)})}, "\u25B6"),
    h("button", {type: "button", class: "ghost", onclick: () => go({from: today, to: today})}, "Today"));

  const filterInput = h("input", {id: "filter", type: "search", autocomplete: "off", spellcheck: "false",
                                  placeholder: "src:10.0.0.0/8 type:DNS -sev:low trail:*.example  (Enter)",
                                  "aria-label": "filter"});
  filterInput.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") {
      ev.preventDefault();
      const more = splitTokens(filterInput.value);
      if (more.length) go({q: joinTokens(addTokens(s.tokens, more))});
    } else if (ev.key === "Backspace" && !filterInput.value && s.tokens.length) {
      go({q: joinTokens(s.tokens.slice(0, -1))});
    }
  });
  const chips = h("ul", {class: "chips", id: "chips"}, s.tokens.map((t) =>
    h("li", {class: "chip", "data-token": t}, h("span", {}, t),
      h("button", {type: "button", class: "chip-x", title: "remove " + t, "aria-label": "remove " + t,
                   onclick: () => go({q: joinTokens(s.tokens.filter((x) => x !== t))})}, "\u00D7"))));
  const filterError = h("p", {class: "error", id: "filter-error", role: "status"});
  const filterBox = h("div", {class: "filterbox"}, chips, filterInput);

  const liveNote = h("span", {class: "muted", id: "live-note"});
  const pauseBtn = h("button", {type: "button", id: "live-pause", class: "ghost", hidden: !s.live}, "Pause");
  const liveBtn = h("button", {type: "button", id: "live-toggle", class: s.live ? "on" : "ghost",
                               "aria-pressed": s.live ? "true" : "false",
                               onclick: () => go({live: s.live ? "" : "1"})}, s.live ? "Live: on" : "Live");
  const exportNote = h("span", {class: "muted", id: "export-note"});
  const exportBtn = (label, view, format) => h("button", {type: "button", class: "ghost", "data-export": view + "-" + format,
    onclick: () => download(view, format, filtered, exportNote)}, label);
  const toolbar = h("section", {class: "toolbar"},
    rangeBox, filterBox,
    h("div", {class: "actions"}, liveBtn, pauseBtn, liveNote, h("span", {class: "spacer"}),
      exportBtn("CSV", "threats", "csv"), exportBtn("JSON", "threats", "json"),
      exportBtn("Indicators", "threats", "indicators"), exportNote),
    filterError);

  // Panels, filled as their answers come.
  const totals = h("section", {class: "totals", id: "totals"}, note("loading\u2026"));
  const chartBox = h("div", {id: "chart"}, note("loading\u2026"));
  const splitBox = h("div", {id: "split"});
  const byToggle = h("div", {class: "seg-toggle", role: "group", "aria-label": "stack by"},
    ["type", "severity"].map((b) => h("button", {type: "button", class: b === s.by ? "on" : "ghost", "data-by": b,
                                                 "aria-pressed": b === s.by ? "true" : "false",
                                                 onclick: () => go({by: b === "type" ? "" : b})}, "by " + b)));
  const chartCard = h("section", {class: "card"}, h("div", {class: "card-head"}, h("h2", {}, "Events over time"), byToggle),
                      chartBox, h("h3", {}, "Severity"), splitBox);
  const topBoxes = {};
  const tops = h("section", {class: "tops"}, TOP_FIELDS.map(([field, title]) => {
    topBoxes[field] = h("ol", {class: "top", id: "top-" + field});
    return card(title, {}, topBoxes[field]);
  }));
  const threatsBody = h("div", {id: "threats"}, note("loading\u2026"));
  const lookedNote = h("span", {class: "muted", id: "looked-note"});
  const hiddenBox = h("input", {type: "checkbox", id: "show-hidden", checked: s.hidden === "show"});
  hiddenBox.addEventListener("change", () => go({hidden: hiddenBox.checked ? "show" : ""}));
  const threatsCard = h("section", {class: "card"},
    h("div", {class: "card-head"}, h("h2", {}, "Threats"), h("span", {class: "spacer"}),
      h("label", {class: "check"}, hiddenBox, "show hidden"),
      h("button", {type: "button", class: "ghost", id: "mark-looked", onclick: () => markLooked(lookedNote)}, "Mark all seen"),
      lookedNote),
    threatsBody);
  const liveCard = h("section", {class: "card", id: "live", hidden: !s.live}, h("h2", {}, "Live events"),
                     h("div", {class: "scroll"}, h("table", {class: "grid-table"}, h("thead", {}, h("tr", {},
                       ["time", "sensor", "source", "destination", "type", "trail", "info", "severity"].map((c) => h("th", {}, c)))),
                       h("tbody", {id: "live-rows"}))));
  replace(main, toolbar, totals, chartCard, tops, threatsCard, liveCard);

  const showFilterError = (answer) => {
    if (answer.status === 400 && answer.body && answer.body.parameter === "q") {
      filterError.textContent = "Filter: " + api.errorText(answer) + (answer.body.token ? " (token " + answer.body.token + ")" : "");
      return true;
    }
    return false;
  };

  // The figures: counts (chart, split, total), tops, the threat list's first page.
  const countsP = api.get("counts", Object.assign({by: "type,severity", bucket}, filtered)).then((a) => {
    if (!ctx.current()) return;
    if (!a.ok) {
      showFilterError(a);
      replace(totals, note(api.errorText(a), "error"));
      replace(chartBox, note(api.errorText(a), "error"));
      return;
    }
    const c = a.body.counts || {};
    const sev = {};
    for (const r of c.severity || []) sev[r.value] = (sev[r.value] || 0) + r.events;
    const total = typeof a.body.total === "number" ? a.body.total : (c.type || []).reduce((n, r) => n + r.events, 0);
    replace(totals,
      h("div", {class: "figure", "data-figure": "total"}, h("b", {}, fmtInt(total)), h("span", {}, "events")),
      SEVERITY_ORDER.map((name) => h("div", {class: "figure sev-text-" + name, "data-figure": name},
                                      h("b", {}, fmtInt(sev[name] || 0)), h("span", {}, name))),
      a.body.partial ? note("partial: the server cut this answer short", "warn") : null);
    replace(chartBox, stackedBars(c[s.by] || [], s.by, bucket, a.body.requested.from_us, a.body.requested.to_us));
    replace(splitBox, severitySplit(sev));
  });
  const topP = api.get("top", Object.assign({n: 10}, filtered)).then((a) => {
    if (!ctx.current()) return;
    for (const [field, , prefix] of TOP_FIELDS) {
      const box = topBoxes[field];
      if (!a.ok) { replace(box, note(api.errorText(a), "error")); continue; }
      const rows = (a.body.top || {})[field] || [];
      if (!rows.length) { replace(box, note("nothing in this range")); continue; }
      replace(box, rows.map((r) => h("li", {},
        h("button", {type: "button", class: "top-item", "data-value": r.value, "data-events": r.events,
                     title: "filter by " + prefix + ":" + r.value,
                     onclick: () => go({q: joinTokens(addTokens(s.tokens, [token(prefix, r.value)]))})},
          h("span", {class: "top-value"}, r.value), h("span", {class: "top-count"}, fmtInt(r.events))))));
    }
  });
  const list = threatList(threatsBody, ctx, s, filtered, go, showFilterError);
  await Promise.all([countsP, topP, list.load(null, false)]);

  if (s.live) startLive(ctx, q, pauseBtn, liveNote, () => Promise.all([list.reload()]));
}

async function markLooked(out) {
  const a = await api.post("looked", {});
  out.textContent = a.ok ? "marked" : api.errorText(a);
}

async function download(view, format, filtered, out) {
  out.textContent = "";
  let res;
  try {
    res = await fetch(api.apiUrl("export", Object.assign({view, format}, filtered)), {credentials: "same-origin", cache: "no-store"});
  } catch (_) {
    out.textContent = "export failed: the server cannot be reached";
    return;
  }
  if (!res.ok) {
    let why = "";
    try { why = (await res.json()).error || ""; } catch (_) { why = ""; }
    out.textContent = "export failed (" + res.status + ")" + (why ? ": " + why : "");
    return;
  }
  const blob = await res.blob();
  const disposition = res.headers.get("Content-Disposition") || "";
  const m = /filename="?([A-Za-z0-9._-]+)"?/.exec(disposition);
  const name = m ? m[1] : view + "." + (format === "indicators" ? "txt" : format);
  const url = URL.createObjectURL(blob);
  const a = h("a", {href: url, download: name, class: "hidden-link"});
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  out.textContent = "saved " + name;
}

// -- the threat list -----------------------------------------------------------------------------

function threatList(box, ctx, s, filtered, go, showFilterError) {
  const cursors = [null];
  let rows = [];
  let selected = -1;
  let trs = [];

  const select = (i) => {
    if (!rows.length) return;
    selected = Math.max(0, Math.min(rows.length - 1, i));
    trs.forEach((tr, j) => { tr.classList.toggle("selected", j === selected); tr.setAttribute("aria-selected", j === selected ? "true" : "false"); });
    trs[selected].scrollIntoView({block: "nearest"});
  };
  const open = (i) => {
    if (i < 0 || i >= rows.length) return;
    select(i);
    openDrawer(rows[i], filtered, () => list.reload());
  };
  ctx.setNav({move: (d) => select(selected < 0 ? 0 : selected + d), open: () => open(selected < 0 ? 0 : selected)});

  const header = (key, label) => {
    const active = s.sort.replace(/^-/, "") === key;
    const desc = s.sort.startsWith("-");
    if (!key) return h("th", {}, label);
    return h("th", {"aria-sort": active ? (desc ? "descending" : "ascending") : "none"},
      h("button", {type: "button", class: "sort" + (active ? " on" : ""), "data-sort": key,
                   onclick: () => go({sort: active && desc ? key : "-" + key})},
        label, active ? (desc ? " \u25BE" : " \u25B4") : ""));
  };

  const list = {
    // alone: a page turn or a reload, which says loading/ready itself; the first page is one of
    // the dashboard's panels, whose readiness the dashboard says once all of them have answered.
    async load(cursor, alone = true) {
      if (alone) ctx.loading();
      const a = await api.get("threats", Object.assign({limit: THREATS_PER_PAGE, cursor, sort: s.sort, spark: SPARK_SLICES,
                                                         hidden: s.hidden}, filtered));
      if (!ctx.current()) return;
      if (!a.ok) {
        showFilterError(a);
        replace(box, note(api.errorText(a), "error"));
        if (alone) ctx.ready();
        return;
      }
      rows = a.body.threats || [];
      selected = -1;
      const now = Date.now() / 1000;
      trs = rows.map((t, i) => {
        const triage = t.triage || {};
        const tr = h("tr", {class: [t.hidden ? "is-hidden" : "", t.suppressed ? "is-suppressed" : ""], tabindex: "-1",
                            "data-src": t.src_ip, "data-trail": t.trail, "aria-selected": "false",
                            onclick: () => open(i)},
          h("td", {}, t.new ? h("span", {class: "badge new", title: "first seen since your last look"}, "new") : ""),
          h("td", {}, h("span", {class: "badge sev-" + t.severity}, t.severity)),
          h("td", {class: "mono"}, t.src_ip),
          h("td", {class: "mono trail"}, t.trail),
          h("td", {}, t.type || ""),
          h("td", {class: "info"}, t.info || ""),
          h("td", {class: "num"}, fmtInt(t.events)),
          h("td", {class: "time"}, fmtTime(t.first_seen)),
          h("td", {class: "time", title: fmtAgo(t.last_ts_us / 1e6, now)}, fmtTime(t.last_seen)),
          h("td", {}, sparkline(t.spark)),
          h("td", {class: "sensors"}, (t.sensors || []).join(", ")),
          h("td", {}, triage.status ? h("span", {class: "badge st-" + triage.status}, triage.status.replace("_", " ")) : "",
            t.hidden ? h("span", {class: "badge"}, "hidden") : "", t.suppressed ? h("span", {class: "badge"}, "suppressed") : ""));
        return tr;
      });
      const page = cursors.length;
      const pager = h("div", {class: "pager"},
        h("button", {type: "button", class: "ghost", id: "threats-prev", disabled: page <= 1,
                     onclick: () => { cursors.pop(); list.load(cursors[cursors.length - 1]); }}, "\u25C0 previous"),
        h("span", {class: "muted"}, "page " + page + (a.body.partial ? " (partial)" : "")),
        h("button", {type: "button", class: "ghost", id: "threats-next", disabled: !a.body.next_cursor,
                     onclick: () => { cursors.push(a.body.next_cursor); list.load(a.body.next_cursor); }}, "next \u25B6"));
      replace(box,
        rows.length ? h("div", {class: "scroll"}, h("table", {class: "grid-table threats", id: "threat-table"},
          h("thead", {}, h("tr", {}, header("", ""), header("severity", "Sev"), header("src", "Source"), header("trail", "Trail"),
            header("", "Type"), header("", "Info"), header("events", "Events"), header("first", "First seen"),
            header("last", "Last seen"), header("", "Activity"), header("", "Sensors"), header("", "Triage"))),
          h("tbody", {}, trs))) : note("no threats in this range"),
        pager);
      if (alone) ctx.ready();
    },
    reload() { return list.load(cursors[cursors.length - 1]); },
  };
  return list;
}

// -- live mode -----------------------------------------------------------------------------------

function startLive(ctx, q, pauseBtn, liveNote, refresh) {
  const controller = new AbortController();
  let paused = false;
  const held = [];
  let refreshTimer = null;
  const tbody = document.getElementById("live-rows");
  const show = (events) => {
    for (const e of events) {
      tbody.insertBefore(h("tr", {class: "fresh"},
        h("td", {class: "time"}, fmtTime(e.time)), h("td", {}, e.sensor), h("td", {class: "mono"}, e.src_ip),
        h("td", {class: "mono"}, e.dst_ip), h("td", {}, e.type), h("td", {class: "mono trail"}, e.trail),
        h("td", {class: "info"}, e.info), h("td", {}, h("span", {class: "badge sev-" + e.severity}, e.severity))), tbody.firstChild);
    }
    while (tbody.children.length > LIVE_ROWS) tbody.removeChild(tbody.lastChild);
  };
  pauseBtn.addEventListener("click", () => {
    paused = !paused;
    pauseBtn.textContent = paused ? "Resume" : "Pause";
    pauseBtn.classList.toggle("on", paused);
    if (!paused) { show(held.splice(0)); liveNote.textContent = "live"; }
  });
  liveNote.textContent = "connecting\u2026";
  ctx.onStop(() => { controller.abort(); if (refreshTimer) clearTimeout(refreshTimer); });
  api.stream("live", {q}, controller.signal, (name, data) => {
    if (name !== "events" || !Array.isArray(data.events)) return;
    liveNote.textContent = "live";
    if (paused) { held.push(...data.events); liveNote.textContent = "paused: " + held.length + " new"; return; }
    show(data.events);
    if (!refreshTimer) refreshTimer = setTimeout(() => { refreshTimer = null; if (ctx.current()) refresh(); }, 5000);
  }).then((status) => {
    if (!ctx.current() || controller.signal.aborted) return;
    liveNote.textContent = status === 200 ? "live stream ended" : "live stream failed (" + status + ")";
  });
  liveNote.textContent = "live";
}

// -- sensors ---------------------------------------------------------------------------------------

export async function renderSensors(main, ctx) {
  const body = h("div", {id: "sensors"}, note("loading\u2026"));
  replace(main, card("Sensors", {}, body));
  const a = await api.get("sensors");
  if (!ctx.current()) return;
  if (!a.ok) { replace(body, note(api.errorText(a), "error")); return; }
  const now = Date.now() / 1000;
  const sensors = a.body.sensors || [];
  if (!sensors.length) { replace(body, note("no sensor has sent anything yet")); return; }
  const rows = sensors.map((x) => h("tr", {"data-sensor": x.name, class: x.silent ? "silent" : ""},
    h("td", {}, x.name), h("td", {}, x.transport || "-"),
    h("td", {}, x.silent ? h("span", {class: "badge sev-high"}, "silent") : h("span", {class: "badge ok"}, "ok")),
    h("td", {title: x.last_seen_unix ? new Date(x.last_seen_unix * 1000).toISOString() : ""}, fmtAgo(x.last_seen_unix, now)),
    h("td", {class: "num"}, fmtInt(x.events)), h("td", {class: "num"}, (x.events_per_s || 0).toFixed(1)),
    h("td", {class: "num"}, x.forwarding_lag_s === null || x.forwarding_lag_s === undefined ? "-" : x.forwarding_lag_s.toFixed(1) + " s"),
    h("td", {}, x.trails || "-"), h("td", {}, x.version || "-"), h("td", {}, x.key || "-")));
  let nav = -1;
  ctx.setNav({move: (d) => { nav = Math.max(0, Math.min(rows.length - 1, nav + d)); rows.forEach((r, i) => r.classList.toggle("selected", i === nav)); },
              open: () => {}});
  replace(body, h("div", {class: "scroll"}, h("table", {class: "grid-table", id: "sensor-table"},
    h("thead", {}, h("tr", {}, ["sensor", "transport", "state", "last seen", "events", "events/s", "lag", "trails", "version", "key"].map((c) => h("th", {}, c)))),
    h("tbody", {}, rows))),
    note("silent: nothing heard for more than " + fmtInt(a.body.silent_after_s) + " s"));
}

// -- suppressions ----------------------------------------------------------------------------------

export async function renderSuppressions(main, ctx) {
  const body = h("div", {id: "suppressions"}, note("loading\u2026"));
  replace(main, card("Suppressions", {}, body));
  const load = async () => {
    const a = await api.get("suppressions");
    if (!ctx.current()) return;
    if (!a.ok) { replace(body, note(api.errorText(a), "error")); return; }
    const list = a.body.suppressions || [];
    if (!list.length) { replace(body, note("nothing is suppressed")); return; }
    replace(body, h("div", {class: "scroll"}, h("table", {class: "grid-table", id: "suppression-table"},
      h("thead", {}, h("tr", {}, ["host", "trail", "reason", "by", "since", "expires", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, list.map((x) => h("tr", {"data-id": x.id},
        h("td", {class: "mono"}, x.host), h("td", {class: "mono trail"}, x.trail), h("td", {}, x.reason || ""),
        h("td", {}, x.created_by || ""), h("td", {class: "time"}, when(x.created_at)), h("td", {class: "time"}, x.expires_at ? when(x.expires_at) : "never"),
        h("td", {}, h("button", {type: "button", class: "ghost", onclick: async (ev) => {
          ev.target.disabled = true;
          ctx.loading();
          const d = await api.del("suppressions/" + encodeURIComponent(x.id));
          if (d.ok) await load(); else { ev.target.disabled = false; ev.target.textContent = "lift failed: " + api.errorText(d); }
          ctx.ready();
        }}, "Lift"))))))));
  };
  await load();
}

// created_at / expires_at: epoch seconds or an ISO text, as the server writes them.
function when(v) {
  if (typeof v === "number") return new Date(v * (v > 1e12 ? 1 / 1000 : 1000)).toISOString().slice(0, 19).replace("T", " ");
  return fmtTime(String(v));
}

