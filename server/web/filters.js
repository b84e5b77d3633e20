// The filter box's tokens. The server parses `q` (src:, dst:, port:, proto:, type:, trail:,
// info:, sev:, sensor:, CIDRs, "-" to exclude, "*" wildcards, free text) and says which token is
// wrong; the client only splits the text into tokens, to show each as a removable chip, and
// joins the chips back into `q`. A value with a space or a quote is written in double quotes
// with backslash escapes, the one quoting rule the tokenizer here and the server share.

export const FIELDS = ["src", "dst", "port", "proto", "type", "trail", "info", "sev", "sensor"];

// 'src:10.0.0.0/8 trail:"a b" -type:DNS' -> ['src:10.0.0.0/8', 'trail:"a b"', '-type:DNS']
export function splitTokens(text) {
  const tokens = [];
  let cur = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted && c === "\\" && i + 1 < text.length) {
      cur += c + text[++i];
    } else if (c === '"') {
      quoted = !quoted;
      cur += c;
    } else if (!quoted && /\s/.test(c)) {
      if (cur) tokens.push(cur);
      cur = "";
    } else {
      cur += c;
    }
  }
  if (cur) tokens.push(cur);
  return tokens;
}

export function quote(value) {
  if (value !== "" && !/[\s"\\]/.test(value)) return value;
  return '"' + value.replace(/\\/g, "\\\\").replace(/"/g, '\\"') + '"';
}

export function token(field, value, negate = false) {
  return (negate ? "-" : "") + field + ":" + quote(String(value));
}

export function joinTokens(tokens) {
  return tokens.join(" ");
}

// Adds tokens not already there; returns the new list.
export function addTokens(tokens, more) {
  const out = tokens.slice();
  for (const t of more) if (!out.includes(t)) out.push(t);
  return out;
}
