// mimochat admin console: a little vanilla JS over /admin/api (session cookie + CSRF header).
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

async function api(path, body) {
  const init = { headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.headers["X-CSRF-Token"] = csrf;
    init.body = JSON.stringify(body);
  }
  const res = await fetch(`/admin/api/${path}`, init);
  let data = {};
  try { data = await res.json(); } catch (_) { /* not JSON: keep the status */ }
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

// Control characters (the tiny model emits any token) show as □, never vanish or act.
const visible = (s) => String(s).replace(/[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F\uFFFE\uFFFF]/g, "\u25A1");

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = visible(text);
  return node;
}

const seconds = (s) => (s === null || s === undefined ? "–" : `${Number(s).toFixed(2)} s`);
const $ = (id) => document.getElementById(id);

// --- Live view -------------------------------------------------------------
async function refreshStats() {
  try {
    const s = await api("stats");
    $("q-gpu").textContent = s.queues.gpu;
    $("q-io").textContent = s.queues.io;
    $("in-flight").textContent = s.in_flight;
    const by = s.in_flight_by_stage;
    $("in-flight-by").textContent = `${by.queued} queued · ${by.generating} generating · ${by.delivering} delivering`;
    $("rate").textContent = s.answers_per_minute;
    $("p50").textContent = seconds(s.time_to_answer.p50);
    $("p95").textContent = seconds(s.time_to_answer.p95);
    $("lat-n").textContent = `${s.time_to_answer.count} answers, last hour`;
    const workers = $("workers");
    workers.replaceChildren();
    for (const [queue, names] of Object.entries(s.workers)) {
      const li = el("li", {}, `${queue}: ${names.length ? names.join(", ") : "no worker online"}`);
      if (!names.length) li.className = "bad";
      workers.append(li);
    }
    const errors = $("errors");
    errors.replaceChildren();
    for (const e of s.errors) {
      const tr = el("tr");
      tr.append(el("td", {}, String(e.code)), el("td", {}, String(e.count)), el("td", {}, e.meaning));
      errors.append(tr);
    }
    if (!s.errors.length) {
      const tr = el("tr");
      tr.append(el("td", { colspan: "3", class: "muted" }, "none"));
      errors.append(tr);
    }
    $("stats-at").textContent = `updated ${new Date(s.at * 1000).toLocaleTimeString()}`;
    $("stats-error").textContent = "";
  } catch (err) {
    $("stats-error").textContent = `stats unavailable: ${err.message}`;
  }
}

// --- Simulator -------------------------------------------------------------
function renderJob(entry, view) {
  const replies = entry.querySelector(".replies");
  replies.querySelectorAll(".bubble.bot:not(.passive)").forEach((b) => b.remove());
  replies.querySelectorAll(".parked").forEach((b) => b.remove());
  const messages = view.messages;
  const passive = replies.querySelector(".bubble.passive")?.textContent || "";
  if (messages && messages.length) {
    for (const m of messages) replies.append(el("div", { class: "bubble bot" }, m.content));
  } else if (view.answer && view.delivered_via === "next_message" && !passive.includes(view.answer.slice(0, 40))) {
    // Passive mode, answer later than WeChat's tries: it rides on the user's next message.
    replies.append(el("div", { class: "bubble bot parked" }, view.answer));
  } else if (messages === null && view.answer) {
    replies.append(el("div", { class: "bubble bot" }, view.answer));  // no sandbox outbox to read
  }
  const p = view.progress;
  entry.querySelector(".progress").textContent = view.done
    ? `answer: ${view.tokens.reasoning_tokens ?? "?"} reasoning + ${view.tokens.answer_tokens ?? "?"} answer tokens`
    : `${p.state || "queued"}… ${p.answer ? "“" + p.answer.slice(-120) + "”" : ""}`;
  showReasoning(entry, view.reasoning ?? p.reasoning);
  renderTimeline(entry, view.timeline);
}

function renderTimeline(entry, rows) {
  const body = entry.querySelector(".timeline tbody");
  body.replaceChildren();
  for (const row of rows) {
    const tr = el("tr", { "data-stage": row.stage });
    if (!row.ok) tr.className = "fail";
    tr.append(el("td", {}, row.stage), el("td", {}, row.after === null ? "" : Math.max(0, row.after).toFixed(2)), el("td", {}, row.detail));
    body.append(tr);
  }
}

function showReasoning(entry, reasoning) {
  if (!reasoning) return;
  const details = entry.querySelector(".reasoning");
  details.setAttribute("data-has", "1");
  details.querySelector("pre").textContent = visible(reasoning);
}

// A WeCom message as the chat shows it: the robot's stream growing refresh by refresh (the
// quoted asker, the answer so far; its <think> block goes to the collapsible reasoning), then
// a message posted to response_url when the answer outlived the stream.
function wecomBubble(parts, cls, who) {
  const bubble = el("div", { class: `bubble bot ${cls}`, "data-who": who });
  if (parts.asker) bubble.append(el("div", { class: "quote" }, `@${parts.asker}: ${parts.question}`));
  bubble.append(el("div", { class: "answer" }, parts.answer || "Thinking… 思考中…"));
  return bubble;
}

function renderWecom(entry, view) {
  const chat = view.chat;
  const said = chat.events.find((e) => e.kind === "user");
  if (said) entry.querySelector(".bubble.user").textContent = visible(said.text);  // with its @mention
  const replies = entry.querySelector(".replies");
  replies.replaceChildren();
  const stream = chat.stream;
  if (stream) {
    const state = stream.finish ? "finished" : chat.refreshes ? `refresh ${chat.refreshes}` : "first reply";
    replies.append(wecomBubble(stream, stream.finish ? "stream final" : "stream streaming", `MiMo · stream, ${state}`));
  }
  if (chat.text !== null) replies.append(el("div", { class: "bubble bot", "data-who": "MiMo · text" }, chat.text));
  if (chat.response_url) replies.append(wecomBubble(chat.response_url, "late", "MiMo · via response_url"));
  showReasoning(entry, stream?.reasoning || chat.response_url?.reasoning || view.reasoning || view.progress.reasoning);
  const tokens = `${view.tokens.reasoning_tokens ?? "?"} reasoning + ${view.tokens.answer_tokens ?? "?"} answer tokens`;
  const versions = stream ? stream.versions.length : 0;
  entry.querySelector(".progress").textContent = view.done
    ? (view.delivered_via ? `finished by ${view.delivered_via === "stream" ? "the stream" : "response_url"}` : "ended")
      + ` after ${chat.refreshes} refreshes` + (view.job_id ? `: ${tokens}` : "")
    : `streaming… ${chat.refreshes} refreshes, ${versions} version${versions === 1 ? "" : "s"} shown` +
      (stream ? `, ${stream.answer.length} answer chars` : "");
  renderTimeline(entry, view.timeline);
}

// The long connection: what the connector pushed for this message, as the group sees it — its
// stream (the latest frame; how many frames and how they grew), then any markdown pushed by
// aibot_send_msg when the answer outlived the stream.
function renderWecomWs(entry, view) {
  entry.querySelector(".bubble.user").textContent = visible(view.text);  // with its @mention
  const replies = entry.querySelector(".replies");
  replies.replaceChildren();
  for (const s of view.streams) {
    const state = s.handed_over ? "handed over" : s.finished ? "finish" : "streaming";
    const who = `MiMo · stream, ${s.frames.length} frame${s.frames.length === 1 ? "" : "s"}, ${state}`;
    replies.append(wecomBubble(s, s.finished ? "stream final" : "stream streaming", who));
  }
  for (const p of view.pushed) replies.append(wecomBubble(p, "late", "MiMo · via aibot_send_msg"));
  showReasoning(entry, view.streams.at(-1)?.reasoning || view.pushed.at(-1)?.reasoning);
  const sizes = view.streams.flatMap((s) => s.frames);
  const growth = sizes.length ? ` (${sizes.join(" → ")} chars)` : "";
  entry.querySelector(".progress").textContent = view.error || (view.done
    ? `finished over the long connection: ${sizes.length} stream frames${growth}` +
      (view.pushed.length ? `, ${view.pushed.length} pushed by aibot_send_msg` : "")
    : `streaming… ${sizes.length} frames so far${growth}`);
  renderTimeline(entry, view.timeline);
}

async function follow(entry, jobId) {
  // A WeCom answer may come through response_url after WeCom's 6 minutes of refreshes.
  const deadline = Date.now() + (entry.dataset.sim ? 420000 : 180000);
  while (Date.now() < deadline) {
    let view;
    try { view = await api(`simulate/${encodeURIComponent(jobId)}`); } catch (err) {
      entry.querySelector(".progress").textContent = err.message;
      return;
    }
    if (view.kind === "wecom" || view.kind === "wecom_ws") {
      (view.kind === "wecom" ? renderWecom : renderWecomWs)(entry, view);
      if (view.done) { entry.classList.add("done"); return; }
      await new Promise((r) => setTimeout(r, 500));
      continue;
    }
    renderJob(entry, view);
    const waitingForMessages = view.delivered_via === "customer_service" && view.messages && !view.messages.length;
    if (view.done && !waitingForMessages) { entry.classList.add("done"); return; }
    await new Promise((r) => setTimeout(r, 700));
  }
}

async function simulate(event) {
  event.preventDefault();
  const text = $("sim-text").value.trim();
  if (!text) return;
  const entry = $("sim-entry").content.firstElementChild.cloneNode(true);
  const option = $("sim-channel").selectedOptions[0];
  const group = option.dataset.group ? $("sim-group").value.trim() : "";
  entry.querySelector(".bubble.user").textContent = visible(text);
  entry.querySelector(".bubble.user").dataset.who = $("sim-user").value + (group ? ` in ${group}` : "");
  entry.dataset.channel = option.value;
  entry.querySelector(".verdict").textContent = "sending…";
  $("chat").prepend(entry);
  $("sim-send").disabled = true;
  try {
    const body = { channel: option.value, user: $("sim-user").value, text, url: $("sim-url").value };
    if (group) body.chat_id = group;
    const sim = await api("simulate", body);
    $("sim-text").value = "";
    entry.querySelector(".verdict").textContent = sim.verdict;
    entry.querySelector(".verdict").className = `verdict ${sim.ok ? "muted" : "bad"}`;
    if (sim.passive_reply) {
      entry.querySelector(".replies").append(el("div", { class: "bubble bot passive" }, sim.passive_reply));
    }
    const tries = entry.querySelector(".timeline tbody");
    sim.attempts.forEach((a) => {
      const tr = el("tr", { "data-stage": "webhook" });
      tr.append(el("td", {}, `try ${a.number}`), el("td", {}, a.seconds.toFixed(2)),
        el("td", {}, a.status === null ? a.outcome : `HTTP ${a.status}`));
      tries.append(tr);
    });
    if (sim.sim_id) {
      entry.dataset.sim = sim.sim_id;
      await follow(entry, sim.sim_id);
    } else if (sim.job_id) {
      entry.dataset.job = sim.job_id;
      await follow(entry, sim.job_id);
    } else {
      entry.classList.add("done");
    }
  } catch (err) {
    entry.querySelector(".verdict").textContent = err.message;
    entry.querySelector(".verdict").className = "verdict bad";
  } finally {
    $("sim-send").disabled = false;
  }
}

// The form follows the channel: WeCom's group id, its user id, its local webhook (/wecom).
function channelChanged() {
  const option = $("sim-channel").selectedOptions[0];
  const wecom = Boolean(option.dataset.wecom);
  const ws = Boolean(option.dataset.ws);  // the long connection: no webhook URL
  $("sim-group-field").hidden = !option.dataset.group;
  $("sim-user-label").textContent = wecom ? "User id (WeCom userid)" : "User id (OpenID)";
  $("sim-url-field").hidden = ws;
  $("sim-note-ws").hidden = !ws;
  $("sim-note-wecom").hidden = !wecom || ws;
  $("sim-note-wechat").hidden = wecom;
  const locals = [...$("sim-channel").options].map((o) => o.dataset.localUrl);
  if (!ws && (!$("sim-url").value || locals.includes($("sim-url").value))) $("sim-url").value = option.dataset.localUrl;
}

// --- Setup -----------------------------------------------------------------
async function runDoctor() {
  const list = $("doctor");
  list.replaceChildren(el("li", { class: "muted" }, "checking…"));
  try {
    const result = await api("doctor");
    list.replaceChildren();
    for (const c of result.checks) {
      const li = el("li", { "data-check": c.name });
      const tag = c.skipped ? "SKIP" : c.ok ? "ok" : "FAIL";
      li.append(el("span", { class: `tag ${c.ok ? "ok" : "bad"}` }, tag), el("strong", {}, ` ${c.name}: `), document.createTextNode(c.detail));
      list.append(li);
    }
  } catch (err) {
    list.replaceChildren(el("li", { class: "bad" }, err.message));
  }
}

async function verifyUrl(event) {
  event.preventDefault();
  const out = $("verify");
  out.replaceChildren();
  try {
    const r = await api("verify-url", { url: $("verify-url").value, token: $("verify-token").value });
    const rows = [["result", r.diagnosis], ["computed signature", r.signature], ["how", r.method],
      ["timestamp", r.timestamp], ["nonce", r.nonce], ["echostr sent", r.echostr],
      ["HTTP status", r.status ?? "no answer"], ["body received", r.body], ["time", seconds(r.seconds)]];
    for (const [k, v] of rows) out.append(el("dt", {}, k), el("dd", {}, String(v ?? "")));
    out.firstElementChild.nextElementSibling.className = r.ok ? "ok" : "bad";
  } catch (err) {
    out.append(el("dt", {}, "error"), el("dd", { class: "bad" }, err.message));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "live") { refreshStats(); setInterval(refreshStats, 3000); }
  if (page === "simulator") {
    $("sim-form").addEventListener("submit", simulate);
    $("sim-channel").addEventListener("change", channelChanged);
    channelChanged();
  }
  if (page === "setup") {
    $("doctor-run").addEventListener("click", runDoctor);
    $("verify-form").addEventListener("submit", verifyUrl);
    runDoctor();
  }
});
