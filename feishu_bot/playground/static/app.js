// The playground page: two chats fed by the /api/feed websocket. Every item is a message the
// simulator saw (the user's, pushed as an event; the bot's, created/replied/PATCHed through
// the REST API); items are upserted by id, so a card that changes is just rendered again.
// An "items" update touches only the rows it carries: a long chat with a card streaming into
// it must not cost a pass over every message per update.
// The page reaches the server with the token cookie set when it was opened from the printed
// address (same-origin fetches and the websocket carry it); a refusal (403) says why in one line.
"use strict";

(function () {
  const md = window.PGMarkdown;
  const state = {
    chat: "p2p",
    items: new Map(),   // id -> item
    rows: new Map(),    // id -> its row in the open chat
    timingsSig: null,   // what the timings panel shows, to redraw it only when it changes
    info: {},
    health: null,
    mention: true,
    ws: null,
  };
  const $ = (id) => document.getElementById(id);

  // -- feed -----------------------------------------------------------------------------------

  function connect() {
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/feed`);
    state.ws = ws;
    setConn("connecting");
    ws.onopen = () => setConn("up");
    ws.onclose = async () => {
      setConn("down");
      // Dropped (a full feed queue) or the playground restarting: reconnect for a snapshot.
      // Refused (a new run, a new token): say so, since retrying cannot help.
      const refused = await refusal();
      if (refused) showNotice(refused, "error");
      else setTimeout(connect, 1000);
    };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.type === "hello") onHello(msg.info);
      else if (msg.type === "snapshot") {
        state.items = new Map(msg.items.map((i) => [i.id, i]));
        renderAll();
      } else if (msg.type === "items") upsert(msg.items);
      else if (msg.type === "health") onHealth(msg);
    };
  }

  // The reason the server refuses this page (its 403 line), or null.
  async function refusal() {
    try {
      const resp = await fetch("/api/healthz");
      return resp.status === 403 ? (await resp.text()).trim() : null;
    } catch (err) {
      return null;  // not answering at all: the playground is restarting or stopped
    }
  }

  function showNotice(text, level) {
    const notice = $("notice");
    notice.hidden = false;
    notice.textContent = text;
    notice.className = `notice ${level || "info"}`;
  }

  function setConn(s) {
    const c = $("conn");
    c.dataset.state = s;
    c.title = `page feed: ${s}`;
  }

  function onHello(info) {
    state.info = info;
    const mode = $("mode");
    mode.textContent = info.mode || "";
    mode.className = "mode " + (info.offline ? "offline" : info.credentials ? "real" : "missing");
    document.body.classList.toggle("offline", !!info.offline);
    $("attach").hidden = !(info.features && info.features.upload);
    if (info.notice) {
      showNotice(info.notice.text, info.notice.level);
    } else if (!info.offline && !info.credentials) {
      showNotice("No Claude credentials found: answers will fail. Set ANTHROPIC_API_KEY " +
        "(or log the claude CLI in), or restart with `feishu-bot playground --offline` for the demo.",
        "error");
    } else {
      $("notice").hidden = true;
    }
    renderAll();
  }

  function onHealth(msg) {
    state.health = msg;
    $("health-line").textContent = msg.line || "(no health line yet; one every 10 s)";
    $("healthz").textContent = JSON.stringify(msg.healthz, null, 2);
    const sandbox = msg.healthz && msg.healthz.sandbox;
    if (sandbox) {
      $("sandbox").textContent = "sandbox " + sandbox;
      $("sandbox").className = "mode " + (sandbox === "on" ? "real" : "missing");
    }
  }

  // Changed items: only their rows are (re)drawn, and the timings if the latest turn moved.
  function upsert(items) {
    const box = $("messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    let shown = false;
    for (const item of items) {
      state.items.set(item.id, item);
      if (item.chat === state.chat) {
        placeRow(box, item);
        shown = true;
      }
    }
    if (!shown) return;
    if (atBottom) box.scrollTop = box.scrollHeight;
    renderTimings(latestTurn(state.chat));
  }

  // -- rendering ------------------------------------------------------------------------------

  function sortedItems(chat) {
    return [...state.items.values()]
      .filter((i) => i.chat === chat)
      .sort((a, b) => a.created_at - b.created_at);
  }

  // What a row's drawing depends on besides the item itself.
  function rowSig(item) {
    const i = state.info;
    return JSON.stringify([i.offline, i.offline_label, i.bot_name, item]);
  }

  // Draws one item's row if it changed; a new row goes after the last one not newer than it
  // (new messages are nearly always the newest, so this looks at one or two rows).
  function placeRow(box, item) {
    const sig = rowSig(item);
    const old = state.rows.get(item.id);
    if (old && old.dataset.sig === sig) return;
    const row = renderItem(item);
    row.dataset.sig = sig;
    row.dataset.at = String(item.created_at);
    state.rows.set(item.id, row);
    if (old) {
      old.replaceWith(row);
      return;
    }
    let before = box.lastElementChild;
    while (before && Number(before.dataset.at) > item.created_at) {
      before = before.previousElementSibling;
    }
    if (before) before.after(row); else box.prepend(row);
  }

  // The latest turn: the latest message the bot worked on (commands get no reaction).
  function latestTurn(chat) {
    let latest = null;
    let latestWorked = null;
    for (const i of state.items.values()) {
      if (i.chat !== chat || i.from !== "user") continue;
      if (!latest || i.created_at >= latest.created_at) latest = i;
      const worked = i.timings && i.timings.reaction != null;
      if (worked && (!latestWorked || i.created_at >= latestWorked.created_at)) latestWorked = i;
    }
    return latestWorked || latest;
  }

  // The whole open chat: on a chat switch, a hello (the labels may change) and a snapshot.
  function renderAll() {
    const box = $("messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    const items = sortedItems(state.chat);
    const wanted = new Set(items.map((i) => i.id));
    for (const [id, row] of state.rows) {
      if (!wanted.has(id)) { row.remove(); state.rows.delete(id); }
    }
    for (const item of items) placeRow(box, item);
    if (atBottom) box.scrollTop = box.scrollHeight;
    for (const tab of document.querySelectorAll(".chat-tab")) {
      tab.setAttribute("aria-selected", String(tab.dataset.chat === state.chat));
    }
    const chatInfo = (state.info.chats || {})[state.chat] || {};
    $("chat-title").textContent = state.chat === "group" ? "Playground group" : (state.info.bot_name || "ClaudeBot");
    $("chat-sub").textContent = state.chat === "group"
      ? " — the bot answers only when @mentioned"
      : ` — ${chatInfo.title || "private chat"}`;
    $("mention").hidden = state.chat !== "group";
    $("mention").setAttribute("aria-pressed", String(state.mention));
    renderTimings(latestTurn(state.chat));
  }

  function renderItem(item) {
    const row = document.createElement("div");
    row.className = `msg from-${item.from}`;
    row.dataset.id = item.id;
    row.dataset.from = item.from;
    row.dataset.type = item.msg_type;
    if (item.reply_to) row.dataset.replyTo = item.reply_to;
    const avatar = document.createElement("span");
    avatar.className = `avatar ${item.from === "bot" ? "bot" : "me"}`;
    avatar.textContent = item.from === "bot" ? "C" : "Y";
    const col = document.createElement("div");
    col.className = "col";
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = (item.from === "bot" ? (state.info.bot_name || "ClaudeBot") : "You") +
      "  " + new Date(item.created_at * 1000).toLocaleTimeString();
    col.appendChild(who);
    col.appendChild(renderBody(item));
    if (item.reactions && item.reactions.length) {
      const bar = document.createElement("div");
      bar.className = "reactions";
      for (const r of item.reactions) {
        const chip = document.createElement("span");
        chip.className = `reaction ${r.live ? "live" : "gone"}`;
        chip.dataset.emoji = r.emoji;
        chip.textContent = r.emoji;  // Feishu's emoji_type name (the client shows its image)
        chip.title = r.live ? "reaction (the bot is working)" : "reaction removed";
        bar.appendChild(chip);
      }
      col.appendChild(bar);
    }
    row.appendChild(avatar);
    row.appendChild(col);
    return row;
  }

  function renderBody(item) {
    const wrap = document.createElement("div");
    if (item.deleted) {
      wrap.className = "bubble recalled";
      wrap.textContent = "This message was recalled";
      return wrap;
    }
    const c = item.content || {};
    if (item.msg_type === "interactive") {
      wrap.className = "card-wrap";
      if (item.from === "bot" && state.info.offline) {
        const label = document.createElement("div");
        label.className = "offline-label";
        label.textContent = state.info.offline_label || "offline demo — replies are not from Claude";
        wrap.appendChild(label);
      }
      wrap.appendChild(window.PGCards.renderCard(c, {
        onAction: (value, tag, name, form) => cardAction(item.id, value, tag, name, form),
      }));
      return wrap;
    }
    wrap.className = "bubble";
    if (item.from === "bot" && state.info.offline) wrap.classList.add("offline-bubble");
    if (item.msg_type === "text") {
      wrap.innerHTML = md.esc(item.text).replace(/@(\S+)/g, '<span class="at">@$1</span>').replace(/\n/g, "<br>");
    } else if (item.msg_type === "post") {
      wrap.innerHTML = renderPost(c);
    } else if (item.msg_type === "image") {
      const img = document.createElement("img");
      img.className = "msg-img";
      img.alt = c.image_key || "image";
      img.src = `/api/resource/${encodeURIComponent(c.image_key || "")}`;
      img.onerror = () => { img.replaceWith(document.createTextNode(`[image ${c.image_key}]`)); };
      wrap.appendChild(img);
    } else if (["file", "audio", "media"].includes(item.msg_type)) {
      const a = document.createElement("a");
      a.className = "file-chip";
      a.href = `/api/resource/${encodeURIComponent(c.file_key || "")}`;
      a.target = "_blank";
      a.textContent = `📄 ${c.file_name || c.file_key || item.msg_type}`;
      wrap.appendChild(a);
    } else {
      wrap.textContent = item.text || `[${item.msg_type}]`;
    }
    return wrap;
  }

  function renderPost(c) {
    const body = c.post ? (c.post.zh_cn || c.post.en_us || Object.values(c.post)[0]) :
      (c.content ? c : (c.zh_cn || c.en_us || Object.values(c)[0] || {}));
    let html = body.title ? `<b>${md.esc(body.title)}</b><br>` : "";
    for (const para of body.content || []) {
      html += "<p>" + para.map((e) => {
        if (e.tag === "text") return md.esc(e.text || "");
        if (e.tag === "a") return `<a href="${md.esc(e.href || "#")}" target="_blank">${md.esc(e.text || "")}</a>`;
        if (e.tag === "at") return `<span class="at">@${md.esc(e.user_name || e.user_id || "")}</span>`;
        if (e.tag === "md") return md.render(e.text || "");
        if (e.tag === "code_block") return `<pre class="code"><code>${md.esc(e.text || "")}</code></pre>`;
        if (e.tag === "img") return `<img class="msg-img" src="/api/resource/${encodeURIComponent(e.image_key || "")}" alt="image">`;
        return `[${md.esc(e.tag || "?")}]`;
      }).join("") + "</p>";
    }
    return html;
  }

  function renderTimings(last) {
    const sig = JSON.stringify(last ? [last.id, last.timings] : null);
    if (sig === state.timingsSig) return;
    state.timingsSig = sig;
    const dl = $("timings");
    dl.innerHTML = "";
    if (!last || !last.timings) {
      dl.innerHTML = "<dt>—</dt><dd>send a message</dd>";
      return;
    }
    const t = last.timings;
    const rows = [
      ["ack (long connection)", t.ack],
      ["reaction added", t.reaction],
      ["first reply", t.first_reply],
      ["last update", t.last_update],
      ["done (reaction removed)", t.done],
    ];
    for (const [label, v] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = v == null ? "—" : (v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v} ms`);
      dl.append(dt, dd);
    }
    const dt = document.createElement("dt");
    dt.textContent = "card updates";
    const dd = document.createElement("dd");
    dd.textContent = String(t.updates);
    dl.append(dt, dd);
  }

  // -- actions --------------------------------------------------------------------------------

  function toast(text, level) {
    const node = document.createElement("div");
    node.className = `toast ${level || "info"}`;
    node.textContent = text;
    $("toasts").appendChild(node);
    setTimeout(() => node.remove(), 4000);
  }

  async function post(path, body) {
    const resp = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!resp.ok) throw new Error(await failure(resp));
    return resp.json();
  }

  // Why a request failed: the API's {"error"} or the guard's one-line 403 reason.
  async function failure(resp) {
    const text = (await resp.text().catch(() => "")).trim();
    try {
      return JSON.parse(text).error || `HTTP ${resp.status}`;
    } catch (err) {
      return text || `HTTP ${resp.status}`;
    }
  }

  async function cardAction(messageId, value, tag, name, form) {
    try {
      const data = await post("/api/action", { message_id: messageId, value, tag, name, form_value: form });
      const answer = data.answer || {};
      if (answer.error) toast(answer.error, "error");
      else if (answer.toast) toast(answer.toast.content || (answer.toast.i18n && Object.values(answer.toast.i18n)[0]) || "ok", answer.toast.type);
    } catch (err) {
      toast(String(err.message || err), "error");
    }
  }

  async function send(text) {
    if (!text.trim()) return;
    try {
      await post("/api/send", { chat: state.chat, text, mention: state.chat === "group" && state.mention });
    } catch (err) {
      toast(String(err.message || err), "error");
    }
  }

  async function upload(file) {
    const form = new FormData();
    form.append("chat", state.chat);
    form.append("mention", state.chat === "group" && state.mention ? "1" : "0");
    form.append("file", file, file.name);
    const resp = await fetch("/api/upload", { method: "POST", body: form });
    if (!resp.ok) toast(`upload failed: ${await failure(resp)}`, "error");
  }

  function wire() {
    $("composer").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = $("input");
      const text = input.value;
      input.value = "";
      send(text);
    });
    $("input").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        $("composer").requestSubmit();
      }
    });
    for (const tab of document.querySelectorAll(".chat-tab")) {
      tab.addEventListener("click", () => { state.chat = tab.dataset.chat; renderAll(); });
    }
    $("mention").addEventListener("click", () => { state.mention = !state.mention; renderAll(); });
    for (const b of document.querySelectorAll(".cmd")) {
      b.addEventListener("click", () => send(b.dataset.cmd));
    }
    $("file").addEventListener("change", (ev) => {
      const file = ev.target.files && ev.target.files[0];
      if (file) upload(file);
      ev.target.value = "";
    });
  }

  wire();
  connect();
  window.PG = { state, send, cardAction };
})();
