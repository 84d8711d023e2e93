// The playground page: two chats fed by the /api/feed websocket. Every item is a message the
// simulator saw (the user's, pushed as an event; the bot's, created/replied/PATCHed through
// the REST API); items are upserted by id, so a card that changes is just rendered again.
"use strict";

(function () {
  const md = window.PGMarkdown;
  const state = {
    chat: "p2p",
    items: new Map(),   // id -> item
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
    ws.onclose = () => { setConn("down"); setTimeout(connect, 1000); };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.type === "hello") onHello(msg.info);
      else if (msg.type === "snapshot") { state.items.clear(); upsert(msg.items); }
      else if (msg.type === "items") upsert(msg.items);
      else if (msg.type === "health") onHealth(msg);
    };
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
    const notice = $("notice");
    if (info.notice) {
      notice.hidden = false;
      notice.textContent = info.notice.text;
      notice.className = `notice ${info.notice.level || "info"}`;
    } else if (!info.offline && !info.credentials) {
      notice.hidden = false;
      notice.className = "notice error";
      notice.textContent = "No Claude credentials found: answers will fail. Set ANTHROPIC_API_KEY " +
        "(or log the claude CLI in), or restart with `feishu-bot playground --offline` for the demo.";
    } else {
      notice.hidden = true;
    }
    renderAll();
  }

  function onHealth(msg) {
    state.health = msg;
    $("health-line").textContent = msg.line || "(no health line yet; one every 10 s)";
    $("healthz").textContent = JSON.stringify(msg.healthz, null, 2);
  }

  function upsert(items) {
    for (const item of items) state.items.set(item.id, item);
    renderAll();
  }

  // -- rendering ------------------------------------------------------------------------------

  function sortedItems(chat) {
    return [...state.items.values()]
      .filter((i) => i.chat === chat)
      .sort((a, b) => a.created_at - b.created_at);
  }

  function renderAll() {
    const box = $("messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    const items = sortedItems(state.chat);
    const existing = new Map([...box.children].map((n) => [n.dataset.id, n]));
    const wanted = new Set(items.map((i) => i.id));
    for (const [id, node] of existing) if (!wanted.has(id)) node.remove();
    let prev = null;
    for (const item of items) {
      let node = existing.get(item.id);
      const sig = JSON.stringify(item) + JSON.stringify(state.info.offline);
      if (!node || node.dataset.sig !== sig) {
        const fresh = renderItem(item);
        fresh.dataset.sig = sig;
        if (node) node.replaceWith(fresh); else box.appendChild(fresh);
        node = fresh;
      }
      if (prev ? node.previousElementSibling !== prev : box.firstElementChild !== node) {
        if (prev) prev.after(node); else box.prepend(node);
      }
      prev = node;
    }
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
    // The latest turn: the latest message the bot worked on (commands get no reaction).
    const mine = items.filter((i) => i.from === "user");
    renderTimings(mine.filter((i) => i.timings && i.timings.reaction != null).pop() || mine.pop());
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
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
    return data;
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
    if (!resp.ok) {
      const data = await resp.json().catch(() => ({}));
      toast(data.error || `upload failed (HTTP ${resp.status})`, "error");
    }
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
