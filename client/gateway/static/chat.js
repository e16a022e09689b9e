// The course web chat: signs in with a session cookie, streams answers from
// /v1/chat/completions, keeps the conversation in this browser (localStorage), and renders
// answers as Markdown built from escaped text, so no HTML in an answer ever becomes markup.
"use strict";

const STORE = "petals-chat-conversation";
const $ = (id) => document.getElementById(id);
let model = null;
let conversation = JSON.parse(localStorage.getItem(STORE) || "[]");
let controller = null;

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// Markdown subset: fenced code, inline code, bold, italics, paragraphs, line breaks.
// Everything is escaped first; the only tags are the ones written here.
function renderMarkdown(text) {
  const parts = text.split(/```/);
  let html = "";
  parts.forEach((part, i) => {
    if (i % 2 === 1) {
      const body = part.replace(/^[\w+-]*\n/, "");
      html += "<pre><code>" + escapeHtml(body) + "</code></pre>";
      return;
    }
    for (const para of part.split(/\n{2,}/)) {
      if (!para.trim()) continue;
      let h = escapeHtml(para);
      h = h.replace(/`([^`\n]+)`/g, "<code>$1</code>");
      h = h.replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>");
      h = h.replace(/(^|[^*])\*([^*\n]+)\*/g, "$1<em>$2</em>");
      h = h.replace(/\n/g, "<br>");
      html += "<p>" + h + "</p>";
    }
  });
  return html;
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.innerHTML = renderMarkdown(text);
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function save() { localStorage.setItem(STORE, JSON.stringify(conversation)); }

function showConversation() {
  $("messages").replaceChildren();
  for (const m of conversation) bubble(m.role, m.content);
}

async function refreshState() {
  try {
    const r = await fetch("/healthz");
    const s = await r.json();
    model = s.model;
    $("model").textContent = s.model;
    $("state").textContent = s.ok ? "swarm connected" : "swarm not connected";
    $("state").className = "state " + (s.ok ? "ok" : "down");
  } catch (e) {
    $("state").textContent = "gateway unreachable";
    $("state").className = "state down";
  }
}

async function signedIn() {
  const r = await fetch("/auth/me", { credentials: "same-origin" });
  $("login").hidden = r.ok;
  $("chat").hidden = !r.ok;
  if (r.ok) showConversation();
  return r.ok;
}

async function login(event) {
  event.preventDefault();
  const r = await fetch("/auth/login", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: $("token").value }),
  });
  $("token").value = "";
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    $("login-error").textContent = (body.error && body.error.message) || "sign-in failed";
    return;
  }
  $("login-error").textContent = "";
  await signedIn();
}

async function logout() {
  await fetch("/auth/logout", { method: "POST", credentials: "same-origin" });
  await signedIn();
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
  document.body.dataset.busy = on ? "1" : "0";
}

async function ask(event) {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  conversation.push({ role: "user", content: text });
  save();
  bubble("user", text);
  const out = bubble("assistant", "");
  out.dataset.chunks = "0";
  let answer = "";
  controller = new AbortController();
  busy(true);
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST",
      credentials: "same-origin",
      signal: controller.signal,
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        model: model,
        messages: conversation,
        stream: true,
        max_tokens: Number($("max-tokens").value) || 256,
        temperature: Number($("temperature").value),
      }),
    });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || "HTTP " + r.status);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ")) continue; // keep-alive comments
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta.content;
        if (delta) {
          answer += delta;
          out.dataset.chunks = String(Number(out.dataset.chunks) + 1);
          out.innerHTML = renderMarkdown(answer);
          out.scrollIntoView({ block: "end" });
        }
      }
    }
    out.dataset.done = "1";
  } catch (e) {
    if (e.name === "AbortError") {
      out.dataset.stopped = "1";
    } else {
      out.classList.add("error");
      out.textContent = "Error: " + e.message;
      out.dataset.error = "1";
    }
  } finally {
    if (answer) {
      conversation.push({ role: "assistant", content: answer });
      save();
    }
    controller = null;
    busy(false);
  }
}

function stop() { if (controller) controller.abort(); }

function newChat() {
  stop();
  conversation = [];
  save();
  showConversation();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("ask").addEventListener("submit", ask);
  $("stop").addEventListener("click", stop);
  $("new").addEventListener("click", newChat);
  $("logout").addEventListener("click", logout);
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("ask").requestSubmit(); }
  });
  refreshState();
  setInterval(refreshState, 15000);
  signedIn();
  busy(false);
});
