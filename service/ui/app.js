// The explorer page: a user's stored history beside their recommendations. It only calls the
// API (GET /users/{id}, POST /recommend, POST /events, GET /v1/model) and sets every string with
// textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let actions = [];

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function headers() {
  const key = $("key").value || sessionStorage.getItem("causerec-key") || "";
  if ($("key").value) sessionStorage.setItem("causerec-key", $("key").value);
  return key ? { "content-type": "application/json", "X-API-Key": key } : { "content-type": "application/json" };
}

async function call(method, path, body) {
  const response = await fetch(path, { method, headers: headers(), body: body ? JSON.stringify(body) : undefined });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
    const error = new Error(`${response.status}: ${detail}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function describe(item) {
  const li = el("li");
  li.appendChild(el("span", item.title || item.item_id, "title"));
  const meta = [item.item_id];
  if (item.categories && item.categories.length) meta.push(item.categories.join(", "));
  if (item.action) meta.push(item.action);
  if (item.timestamp) meta.push(new Date(item.timestamp * 1000).toISOString().slice(0, 16).replace("T", " "));
  if (item.known === false) meta.push("not in this model's catalogue");
  li.appendChild(el("span", meta.join(" · "), "meta"));
  return li;
}

function renderHistory(user) {
  $("summary").textContent = `(${user.events} events, ${user.history_tokens} history tokens` +
    `${user.history_tokens_fresh ? "" : ", rebuilt on next read"}` +
    `${user.query_cached ? ", query cached" : ""}; ${Object.values(user.stored_bytes).reduce((a, b) => a + b, 0)} bytes in Redis)`;
  const recent = $("recent");
  recent.replaceChildren(...user.recent.map(describe));
  const buckets = user.buckets.map((b) => {
    const box = el("details", null, "bucket" + (b.in_history_tokens ? " read" : ""));
    box.appendChild(el("summary", `${b.category} — ${b.items} items, newest ${new Date(b.newest_timestamp * 1000).toISOString().slice(0, 10)}`));
    const list = el("ol", null, "items");
    list.replaceChildren(...b.recent_items.map(describe));
    box.appendChild(list);
    return box;
  });
  $("buckets").replaceChildren(...(buckets.length ? buckets : [el("p", "No history beyond the recent window yet.", "muted")]));
}

function renderRecommendations(answer, user) {
  $("model").textContent = `(model ${answer.model_version})`;
  const items = answer.items.map((item) => {
    const li = describe(item);
    li.prepend(el("span", item.score.toFixed(2), "score"));
    for (const action of actions) {
      const button = el("button", action, "act");
      button.type = "button";
      button.dataset.item = item.item_id;
      button.dataset.action = action;
      button.addEventListener("click", () => post(user, item.item_id, action));
      li.appendChild(button);
    }
    return li;
  });
  $("recs").replaceChildren(...items);
  if (answer.warnings && answer.warnings.length) status(answer.warnings.join("; "), true);
}

async function show(user) {
  const k = Math.max(1, Math.min(100, Number($("k").value) || 10));
  status(`loading ${user}…`);
  try {
    const answer = await call("POST", "/recommend", { user_id: user, k, include: ["title", "categories"] });
    let state = null;
    try {
      state = await call("GET", `/users/${encodeURIComponent(user)}`);
    } catch (error) {
      if (error.status !== 404) throw error;
    }
    if (state) renderHistory(state);
    else {
      $("summary").textContent = "(no events yet: recommendations come from the user token alone)";
      $("recent").replaceChildren();
      $("buckets").replaceChildren();
    }
    renderRecommendations(answer, user);
    if (!answer.warnings || !answer.warnings.length) status(`${user}: ${answer.items.length} recommendations`);
  } catch (error) {
    status(error.message, true);
  }
}

async function post(user, item, action) {
  try {
    const event = { user_id: user, item_id: item, action, event_id: `ui-${Date.now()}-${Math.random().toString(36).slice(2)}` };
    await call("POST", "/events", { events: [event] });
    await show(user);
  } catch (error) {
    status(error.message, true);
  }
}

async function start() {
  $("key").value = sessionStorage.getItem("causerec-key") || "";
  $("pick").addEventListener("submit", (event) => {
    event.preventDefault();
    const user = $("user").value.trim();
    const url = new URL(window.location);
    url.searchParams.set("user", user);
    window.history.replaceState(null, "", url);
    show(user);
  });
  try {
    actions = (await call("GET", "/v1/model")).actions.slice(0, 5);
  } catch (error) {
    status(`${error.message} (set the API key, then Show)`, true);
  }
  const user = new URL(window.location).searchParams.get("user");
  if (user) {
    $("user").value = user;
    show(user);
  }
}

start();
