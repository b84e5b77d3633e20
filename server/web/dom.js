// Building the page without markup strings: every value goes in as a text node or an attribute
// (setAttribute), never parsed as markup, because a trail, an info or a user agent is written
// by whoever sent the traffic. Event handlers are functions, never attribute strings (the CSP
// forbids inline script anyway).

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// h("td", {class: "x"}, "text", otherNode)
export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

export function svg(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function replace(el, ...children) {
  return append(clear(el), children);
}

export function $(id) {
  return document.getElementById(id);
}

export function fmtInt(n) {
  return Number(n || 0).toLocaleString("en-US");
}

// "2026-11-24T10:00:00.000000Z" -> "2026-11-24 10:00:00" (UTC, as the API answers)
export function fmtTime(iso) {
  if (!iso) return "-";
  return iso.slice(0, 19).replace("T", " ");
}

export function fmtAgo(unixS, nowS) {
  if (unixS === null || unixS === undefined) return "never";
  const s = Math.max(0, Math.round(nowS - unixS));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

// A link only for http(s) references; anything else (a feed name, "(static)") stays text.
export function reference(ref) {
  if (typeof ref === "string" && /^https?:\/\//i.test(ref)) {
    try {
      const url = new URL(ref);
      return h("a", {href: url.href, target: "_blank", rel: "noopener noreferrer"}, ref);
    } catch (_) { /* not a URL after all: text */ }
  }
  return h("span", {}, ref || "-");
}
