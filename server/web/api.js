// The only place that talks to the server: /api/v1 calls with the session cookie (sent by the
// browser) and, on a state change, the X-CSRF-Token header from login or /session.
//
// Nothing here throws for an answer: every call resolves to {status, ok, body}, and the views
// show a refusal (a filter the server cannot parse, a store that is unavailable) as a line of
// text; a 401 outside login means the session is gone and the login form comes back. The page is
// served by the same server as the API, so every endpoint called here exists: there is no
// fallback for a missing one. Nothing is written to the console.

let csrfToken = null;
let onLoggedOut = () => {};

export function setCsrf(token) { csrfToken = token; }
export function whenLoggedOut(fn) { onLoggedOut = fn; }

export function apiUrl(path, params) {
  const url = new URL("/api/v1/" + path, window.location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, String(value));
  }
  return url;
}

export async function call(method, path, params, body) {
  const headers = {"Accept": "application/json"};
  const init = {method, headers, credentials: "same-origin", cache: "no-store"};
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (method !== "GET" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  let res;
  try {
    res = await fetch(apiUrl(path, params), init);
  } catch (_) {
    return {status: 0, ok: false, body: {error: "the server cannot be reached"}};
  }
  let data = null;
  try { data = await res.json(); } catch (_) { data = null; }
  if (res.status === 401 && path !== "login" && path !== "session") onLoggedOut();
  return {status: res.status, ok: res.ok, body: data};
}

export const get = (path, params) => call("GET", path, params);
export const post = (path, body) => call("POST", path, undefined, body);
export const put = (path, body) => call("PUT", path, undefined, body);
export const del = (path) => call("DELETE", path);

// The answer's error as a sentence for the page.
export function errorText(answer) {
  if (answer.body && answer.body.error) return answer.body.error;
  return "the server answered " + answer.status;
}

// Server-sent events over fetch (not EventSource, which cannot say why it failed and writes its
// failures on the console): onEvent(name, data) per event; resolves with the
// status when the stream ends or `signal` aborts it.
export async function stream(path, params, signal, onEvent) {
  let res;
  try {
    res = await fetch(apiUrl(path, params), {headers: {"Accept": "text/event-stream"}, credentials: "same-origin",
                                             cache: "no-store", signal});
  } catch (_) {
    return 0;
  }
  if (!res.ok || !res.body) {
    if (res.status === 401) onLoggedOut();
    return res.status;
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        let name = "message";
        const data = [];
        for (const line of block.split(/\r?\n/)) {
          if (line.startsWith(":")) continue;           // a keepalive comment
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") name = val;
          else if (field === "data") data.push(val);
        }
        if (data.length) {
          let parsed = null;
          try { parsed = JSON.parse(data.join("\n")); } catch (_) { parsed = null; }
          if (parsed !== null) onEvent(name, parsed);
        }
      }
    }
  } catch (_) {
    return -1;      // aborted (paused, left the page) or the connection dropped
  }
  return res.status;
}
