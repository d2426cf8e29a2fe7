// pgwarden's approval page: plain DOM, no framework, no build step. Every value from the
// server is set as text (never as HTML). The token lives in sessionStorage (this tab only);
// behind an SSO proxy that names the approver, no token is needed.
"use strict";

const state = { token: sessionStorage.getItem("pgwarden-token"), version: null, skew: 0, data: null };
const $ = (id) => document.getElementById(id);

function headers(json) {
  const h = {};
  if (state.token) h["Authorization"] = "Bearer " + state.token;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function api(method, path, body) {
  const r = await fetch("api/v1/" + path, {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  let payload = {};
  try { payload = await r.json(); } catch (_) { /* empty body */ }
  if (!r.ok) {
    const e = new Error(payload.error || ("HTTP " + r.status));
    e.status = r.status;
    throw e;
  }
  return payload;
}

function showLogin(message) {
  $("board").hidden = true;
  $("who").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

function showBoard(approver) {
  $("login").hidden = true;
  $("board").hidden = false;
  $("who").hidden = false;
  $("who-name").textContent = approver.name + (approver.groups.length ? " (" + approver.groups.join(", ") + ")" : "") + " · " + approver.auth;
  $("logout").hidden = approver.auth !== "token";
}

function duration(seconds) {
  if (seconds <= 0) return "expired";
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
}

const now = () => Math.floor(Date.now() / 1000) + state.skew;

function grantChoices(max) {
  const choices = [["", "this statement only"]];
  for (const [secs, label] of [[900, "15 minutes"], [3600, "1 hour"], [14400, "4 hours"], [86400, "1 day"]]) {
    if (max && secs <= max) choices.push([secs + "s", "and " + label + " more"]);
  }
  return choices;
}

function renderRequest(r) {
  const card = $("request-card").content.firstElementChild.cloneNode(true);
  card.id = "request-" + r.id;
  card.dataset.id = r.id;
  card.dataset.expires = r.expires;
  card.querySelector(".workload").textContent = r.workload;
  card.querySelector(".rid").textContent = "request " + r.id;
  card.querySelector(".rule").textContent =
    r.rule.id + (r.rule.run_as ? " (runs as " + r.rule.run_as + ")" : "");
  card.querySelector(".reason").textContent = r.reason || "—";
  const p = r.identity;
  card.querySelector(".process").textContent = [
    p.pid != null ? "pid " + p.pid : null,
    p.exe,
    p.user ? "user " + p.user + (p.uid != null ? " (" + p.uid + ")" : "") : (p.uid != null ? "uid " + p.uid : null),
  ].filter(Boolean).join(" · ") || "—";
  card.querySelector(".unit").textContent = p.unit || "—";
  card.querySelector(".cgroup").textContent = p.cgroup || "—";
  card.querySelector(".session").textContent = r.session;
  card.querySelector(".statement").textContent = r.statement;
  const select = card.querySelector(".grant");
  for (const [value, label] of grantChoices(r.rule.max_grant_seconds).slice(1)) {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = label;
    select.appendChild(o);
  }
  card.querySelector(".decide").hidden = !r.may_decide;
  card.querySelector(".not-yours").hidden = r.may_decide;
  const error = card.querySelector(".error");
  const decide = async (verb) => {
    const body = { comment: card.querySelector(".comment").value };
    if (verb === "approve" && select.value) body["for"] = select.value;
    for (const b of card.querySelectorAll("button")) b.disabled = true;
    try {
      await api("POST", "approvals/" + r.id + "/" + verb, body);
      $("status").textContent = (verb === "approve" ? "Approved" : "Denied") + " request " + r.id + ".";
      card.remove();
    } catch (e) {
      error.textContent = e.message;
      for (const b of card.querySelectorAll("button")) b.disabled = false;
      if (e.status === 401) showLogin("Your token was refused: " + e.message);
    }
  };
  card.querySelector(".approve").addEventListener("click", () => decide("approve"));
  card.querySelector(".deny").addEventListener("click", () => decide("deny"));
  return card;
}

function renderGrant(g) {
  const tr = document.createElement("tr");
  tr.id = "grant-" + g.id;
  tr.dataset.until = g.until;
  for (const text of [g.id, g.workload, g.rule, g.by + " (" + g.by_auth + ")", g.comment || "—", ""]) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
  }
  tr.children[5].className = "countdown";
  const td = document.createElement("td");
  const b = document.createElement("button");
  b.type = "button";
  b.className = "revoke";
  b.textContent = "Revoke";
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      await api("DELETE", "grants/" + g.id);
      $("status").textContent = "Revoked grant " + g.id + ".";
      tr.remove();
    } catch (e) {
      $("status").textContent = "Grant " + g.id + ": " + e.message;
      b.disabled = false;
    }
  });
  td.appendChild(b);
  tr.appendChild(td);
  return tr;
}

function render(data) {
  state.data = data;
  state.skew = data.now - Math.floor(Date.now() / 1000);
  showBoard(data.approver);
  const pending = $("pending");
  // Keep cards being filled in; add new ones, drop decided ones.
  const ids = new Set(data.pending.map((r) => String(r.id)));
  for (const card of [...pending.children]) if (!ids.has(card.dataset.id)) card.remove();
  const have = new Set([...pending.children].map((c) => c.dataset.id));
  for (const r of data.pending) if (!have.has(String(r.id))) pending.appendChild(renderRequest(r));
  $("pending-count").textContent = data.pending.length ? "(" + data.pending.length + ")" : "";
  $("no-pending").hidden = data.pending.length > 0;
  const body = $("grants").querySelector("tbody");
  body.replaceChildren(...data.grants.map(renderGrant));
  $("grants").hidden = data.grants.length === 0;
  $("no-grants").hidden = data.grants.length > 0;
  $("grants-count").textContent = data.grants.length ? "(" + data.grants.length + ")" : "";
  tick();
  if (location.hash) {
    const target = document.querySelector(location.hash.replace(/[^#\w-]/g, ""));
    if (target) target.classList.add("linked");
  }
}

function tick() {
  const t = now();
  for (const card of document.querySelectorAll(".request")) {
    card.querySelector(".countdown").textContent = "expires in " + duration(card.dataset.expires - t);
  }
  for (const tr of document.querySelectorAll("#grants tbody tr")) {
    tr.querySelector(".countdown").textContent = duration(tr.dataset.until - t);
  }
}

// Long poll: the server answers at once the first time, then when something changed.
async function follow() {
  for (;;) {
    try {
      const q = state.version === null ? "" : "?wait=" + state.version;
      const data = await api("GET", "approvals" + q);
      state.version = data.version;
      render(data);
    } catch (e) {
      if (e.status === 401) {
        state.version = null;
        showLogin(state.token ? "Your token was refused: " + e.message : "");
        return;
      }
      $("status").textContent = "Connection lost (" + e.message + "); retrying…";
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("pgwarden-token", state.token);
    $("token").value = "";
    follow();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem("pgwarden-token");
    state.token = null;
    state.version = null;
    showLogin("");
  });
  setInterval(tick, 1000);
  // Without a token, try only where an SSO proxy may have signed the approver in: a call
  // without one is refused and audited.
  api("GET", "auth").then((a) => {
    if (state.token || a.methods.includes("header")) follow();
    else showLogin("");
  }, (e) => showLogin("The agent cannot be reached: " + e.message));
});
