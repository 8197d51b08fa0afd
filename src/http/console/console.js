// The consentry console. Every figure comes from the API on this origin, read with the token
// pasted above (kept in this tab's session storage only). What can be checked here without
// trusting the server is: the checkpoint's Ed25519 signature and each row's inclusion proof.
"use strict";

const TOKEN_KEY = "consentry.token";
const COLORS = ["#2f6fdf", "#b42318", "#a15c07", "#7a3fc2", "#0f8a7e", "#c0398a", "#5b6b82", "#8a6d0f"];

const $ = (id) => document.getElementById(id);
const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

// An element with text (never markup) and children.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  }
  return node;
}

async function api(path, options = {}) {
  const headers = { Authorization: "Bearer " + token(), ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  let body = null;
  try { body = await response.json(); } catch (_) { /* an empty or non-JSON answer */ }
  return { status: response.status, ok: response.ok, body };
}

function failure(answer) {
  const error = answer.body && answer.body.error;
  return error ? `${answer.status} ${error.code}: ${error.message}` : `HTTP ${answer.status}`;
}

// The token's claims, read (not verified: the server does that) to know what it may do.
function claims() {
  try {
    const part = token().split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - part.length % 4) % 4)));
  } catch (_) {
    return null;
  }
}
const scopes = () => new Set(((claims() || {}).scope || "").split(" ").filter(Boolean));

// --- bytes and hashes -------------------------------------------------------------------

const fromHex = (hex) => Uint8Array.from(hex.match(/../g) || [], (b) => parseInt(b, 16));
const toHex = (bytes) => Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
const fromB64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));

async function sha256(...parts) {
  const joined = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) { joined.set(part, at); at += part.length; }
  return new Uint8Array(await crypto.subtle.digest("SHA-256", joined));
}

// RFC 9162, 2.1.3.2: does `proof` lead from the leaf at `index` to `root` in a tree of `size`?
async function verifyInclusion(index, size, leafHash, proof, root) {
  if (index >= size) return false;
  let fn = index, sn = size - 1, r = leafHash;
  for (const hex of proof) {
    const p = fromHex(hex);
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      r = await sha256(Uint8Array.of(1), p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
      }
    } else {
      r = await sha256(Uint8Array.of(1), r, p);
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  return sn === 0 && toHex(r) === root;
}

async function verifyCheckpoint(checkpoint) {
  try {
    const key = await crypto.subtle.importKey("raw", fromB64(checkpoint.public_key), { name: "Ed25519" }, false, ["verify"]);
    return await crypto.subtle.verify("Ed25519", key, fromB64(checkpoint.signature), new TextEncoder().encode(checkpoint.signed_text));
  } catch (_) {
    return false;
  }
}

// --- the log ----------------------------------------------------------------------------

async function loadLog() {
  const list = $("checkpoint");
  list.replaceChildren();
  const row = (term, ...value) => list.append(el("dt", {}, term), el("dd", {}, ...value));
  const answer = await api("/v1/audit/checkpoints/latest");
  if (!answer.ok) {
    row("Latest checkpoint", el("span", { class: "muted" }, failure(answer)));
    return;
  }
  const checkpoint = answer.body;
  const signed = await verifyCheckpoint(checkpoint);
  row("Tree size", String(checkpoint.tree_size));
  row("Root", checkpoint.root_hash);
  row("Signed at", checkpoint.signed_at);
  row("Key", checkpoint.key_id);
  row("Signature", signed
    ? el("span", { class: "ok", id: "signature-state" }, "verified in this browser")
    : el("span", { class: "bad", id: "signature-state" }, "does not verify"));
  const cosigners = (checkpoint.cosignatures || []).map((c) => c.witness);
  row("Witnesses", cosigners.length
    ? el("span", {}, `cosigned by ${cosigners.join(", ")} (check them with audit verify --witness)`)
    : el("span", { class: "muted" }, "not cosigned yet (log.witnesses in the configuration)"));
  row("Full check", el("span", { class: "muted" }, "consentry audit verify (docs/auditors.md)"));
}

// --- decisions over time ----------------------------------------------------------------

async function loadChart() {
  const chart = $("chart"), legend = $("legend");
  chart.replaceChildren();
  legend.replaceChildren();
  const answer = await api("/v1/audit/decisions?bucket=hour");
  if (!answer.ok) {
    chart.append(el("p", { class: "muted" }, failure(answer)));
    return;
  }
  const { from, to, counts } = answer.body;
  const start = Date.parse(from), hour = 3600e3;
  const spans = Math.ceil((Date.parse(to) - start) / hour);
  const series = new Map();
  for (const count of counts) {
    const name = count.decision + (count.reason ? " · " + count.reason : "");
    if (!series.has(name)) series.set(name, new Array(spans).fill(0));
    const at = Math.round((Date.parse(count.start) - start) / hour);
    if (at >= 0 && at < spans) series.get(name)[at] += count.count;
  }
  const totals = new Array(spans).fill(0);
  for (const values of series.values()) values.forEach((v, i) => { totals[i] += v; });
  const max = Math.max(1, ...totals);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const width = 720, height = 180, bar = width / spans;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const base = new Array(spans).fill(0);
  [...series.entries()].forEach(([name, values], k) => {
    const color = COLORS[k % COLORS.length];
    values.forEach((value, i) => {
      if (!value) return;
      const h = (value / max) * (height - 10);
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("x", String(i * bar + 1));
      rect.setAttribute("width", String(Math.max(1, bar - 2)));
      rect.setAttribute("y", String(height - base[i] - h));
      rect.setAttribute("height", String(h));
      rect.setAttribute("fill", color);
      rect.setAttribute("class", "bar");
      const title = document.createElementNS(ns, "title");
      title.textContent = `${new Date(start + i * hour).toISOString().slice(0, 13)}h: ${value} ${name}`;
      rect.append(title);
      svg.append(rect);
      base[i] += h;
    });
    const total = values.reduce((a, b) => a + b, 0);
    const swatch = el("span");
    swatch.style.background = color;
    legend.append(el("li", {}, swatch, `${name}: ${total}`));
  });
  chart.append(svg);
  chart.append(el("p", { class: "muted axis" }, `${from.slice(0, 16)}Z → ${to.slice(0, 16)}Z, one bar an hour`));
  if (!counts.length) chart.append(el("p", { class: "muted" }, "No messages in these 24 hours."));
}

// --- a number's story -------------------------------------------------------------------

// A cell (or span) saying whether the row's leaf is in the checkpoint's tree, checked here.
function proofMark(tag, row, checkpoint) {
  const node = el(tag, { class: "muted proof" }, "after the checkpoint");
  if (!checkpoint || !Array.isArray(row.inclusion_proof)) return node;
  node.textContent = "checking";
  (async () => {
    const leafHash = await sha256(Uint8Array.of(0), fromB64(row.leaf));
    const ok = toHex(leafHash) === row.leaf_hash &&
      await verifyInclusion(row.leaf_index, checkpoint.tree_size, leafHash, row.inclusion_proof, checkpoint.root_hash);
    node.className = ok ? "ok proof" : "bad proof";
    node.textContent = ok ? "included" : "does not verify";
  })();
  return node;
}

// The evidence kept with a consent event, as "field: value" pairs.
function evidenceText(opened) {
  if (!opened || !opened.evidence) return "evidence sealed (needs consents:read)";
  const pairs = [];
  const walk = (prefix, value) => {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [key, inner] of Object.entries(value)) walk(prefix ? `${prefix}.${key}` : key, inner);
    } else {
      pairs.push(`${prefix}: ${Array.isArray(value) ? value.join(", ") : value}`);
    }
  };
  walk("", opened.evidence);
  return pairs.join(" · ");
}

function fill(tableId, rows) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "muted", colspan: "7" }, "none"))]));
}

async function lookup(number) {
  const status = $("lookup-status");
  status.textContent = "reading…";
  const may = scopes();
  const path = encodeURIComponent(number);
  const [bundle, consents, replies, reviews] = await Promise.all([
    api(`/v1/audit/numbers/${path}/bundle`),
    may.has("consents:read") ? api(`/v1/consents/${path}`) : null,
    api(`/v1/audit/numbers/${path}/replies`),
    may.has("consents:read") ? api(`/v1/reviews?open=false&number=${path}`) : null,
  ]);
  if (!bundle.ok) {
    status.textContent = failure(bundle);
    $("story").hidden = true;
    return;
  }
  status.textContent = `${bundle.body.number}: ${bundle.body.consent_events.length} consent events, ` +
    `${bundle.body.messages.length} messages` + (bundle.body.truncated ? " (more than a bundle holds)" : "");
  $("story").hidden = false;
  const checkpoint = bundle.body.checkpoint;

  const state = consents && consents.ok ? consents.body.state : [];
  fill("consent-state", state.map((s) => el("tr", {},
    el("td", {}, [s.scope.brand, s.scope.campaign].filter(Boolean).join(" / ") || "tenant-wide"),
    el("td", {}, s.purpose),
    el("td", { class: s.status === "opted_out" ? "bad" : s.status === "opted_in" ? "ok" : "" }, s.status),
    el("td", {}, s.level || ""),
    el("td", {}, s.sendable ? "yes" : "no"))));

  // The timeline: the log's rows (with proofs), and the evidence where the token may read it.
  const evidence = new Map(((consents && consents.ok && consents.body.history) || []).map((e) => [e.id, e]));
  const timeline = $("timeline");
  timeline.replaceChildren(...bundle.body.consent_events.map((event) => {
    const opened = evidence.get(event.id);
    const facts = [event.occurred_at, event.purposes.join(", ") || "all purposes", event.level,
      "by " + event.method, event.external_id, "leaf " + event.leaf_index].filter(Boolean);
    return el("li", { class: "event " + event.action },
      el("strong", { class: event.action === "opt_out" ? "bad" : "ok" }, event.action.replace("_", "-")),
      " " + facts.join(" · ") + " · ",
      proofMark("span", event, checkpoint),
      el("div", { class: "evidence" }, evidenceText(opened)));
  }));
  if (!bundle.body.consent_events.length) timeline.append(el("li", { class: "muted" }, "none"));

  fill("messages", bundle.body.messages.map((m) => el("tr", {},
    el("td", {}, m.created_at),
    el("td", {}, m.purpose),
    el("td", { class: m.decision === "denied" ? "bad" : m.decision === "deferred" ? "warn" : "ok" }, m.decision),
    el("td", {}, (m.reasons || []).map((r) => r.code).join(", ")),
    el("td", {}, m.outcome || ""),
    el("td", {}, String(m.leaf_index)),
    proofMark("td", m, checkpoint))));

  fill("replies", replies.ok ? replies.body.replies.map((r) => el("tr", {},
    el("td", {}, r.received_at), el("td", {}, r.from), el("td", {}, r.class),
    el("td", {}, r.certain ? "yes" : "no"), el("td", {}, r.consent_event || ""))) : []);

  const canResolve = may.has("consents:write");
  fill("reviews", reviews && reviews.ok ? reviews.body.reviews.map((r) => el("tr", { "data-review": r.id },
    el("td", {}, new Date(r.created_at_us / 1000).toISOString()),
    el("td", {}, r.recipient),
    el("td", { class: r.outcome ? "" : "warn" }, r.outcome ? `${r.outcome} (by ${r.resolved_by})` : "open"),
    el("td", {}, ...(!r.outcome && canResolve ? [
      el("button", { class: "resolve-opt-out", onclick: () => resolve(r.id, "opt_out", number) }, "It is an opt-out"),
      " ",
      el("button", { class: "resolve-not", onclick: () => resolve(r.id, "not_opt_out", number) }, "Not an opt-out"),
    ] : [])))) : []);
}

async function resolve(id, outcome, number) {
  const answer = await api(`/v1/reviews/${encodeURIComponent(id)}/resolve`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ outcome }),
  });
  await Promise.all([lookup(number), loadChart()]);
  $("lookup-status").textContent = answer.ok ? `review ${id} resolved: ${outcome}` : failure(answer);
}

// --- wiring -----------------------------------------------------------------------------

function showWho() {
  const c = claims();
  $("who").textContent = c
    ? `Tenant ${c.tenant || "?"} · subject ${c.sub || "?"} · scopes: ${[...scopes()].join(", ") || "none"}`
    : "No token: paste one (it stays in this tab only).";
}

async function refresh() {
  showWho();
  if (token()) await Promise.all([loadLog(), loadChart()]);
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    refresh();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  $("lookup").addEventListener("submit", (event) => {
    event.preventDefault();
    const number = $("number").value.trim();
    if (number) lookup(number);
  });
  refresh();
});
