// A small renderer for the markdown Feishu cards show (Card "markdown" / "lark_md"):
// headings, bold, italic, strikethrough, inline code, fenced code, links, lists, quotes,
// <font color>, <at>, and line breaks. Input is escaped first; only the tags made here survive.
"use strict";

(function (global) {
  function esc(s) {
    return String(s)
      .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;");
  }

  const COLORS = { red: 1, green: 1, blue: 1, grey: 1, gray: 1, orange: 1, yellow: 1,
    purple: 1, violet: 1, wathet: 1, turquoise: 1, indigo: 1, carmine: 1 };

  function inline(text) {
    const codes = [];
    let s = esc(text).replace(/`([^`\n]+)`/g, (_, c) => {
      codes.push(c);
      return "\u0000" + (codes.length - 1) + "\u0000";
    });
    s = s
      .replace(/&lt;font color=(?:&quot;|')?(\w+)(?:&quot;|')?&gt;([\s\S]*?)&lt;\/font&gt;/g,
        (_, c, t) => COLORS[c.toLowerCase()] ? `<span class="fc-${c.toLowerCase()}">${t}</span>` : t)
      .replace(/&lt;at (?:id|user_id|email)=(?:&quot;|')?([^&'\s]+)(?:&quot;|')?&gt;&lt;\/at&gt;/g,
        (_, id) => `<span class="at">@${id === "all" ? "all" : id}</span>`)
      .replace(/\*\*([^*\n]+)\*\*/g, "<b>$1</b>")
      .replace(/(^|[^*])\*([^*\n]+)\*/g, "$1<i>$2</i>")
      .replace(/~~([^~\n]+)~~/g, "<s>$1</s>")
      .replace(/\[([^\]\n]+)\]\((https?:\/\/[^)\s]+)\)/g,
        '<a href="$2" target="_blank" rel="noopener">$1</a>');
    return s.replace(/\u0000(\d+)\u0000/g, (_, i) => `<code>${codes[+i]}</code>`);
  }

  function render(src) {
    const lines = String(src == null ? "" : src).split("\n");
    const out = [];
    let list = null; // "ul" | "ol"
    const closeList = () => { if (list) { out.push(`</${list}>`); list = null; } };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const fence = line.match(/^\s*(`{3,}|~{3,})\s*([\w+-]*)/);
      if (fence) {
        closeList();
        const body = [];
        i++;
        while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
        const lang = fence[2] ? ` data-lang="${esc(fence[2])}"` : "";
        out.push(`<pre class="code"${lang}><code>${esc(body.join("\n"))}</code></pre>`);
        continue;
      }
      let m;
      if ((m = line.match(/^(#{1,6})\s+(.*)$/))) {
        closeList();
        const level = Math.min(m[1].length + 2, 6);
        out.push(`<h${level}>${inline(m[2])}</h${level}>`);
      } else if ((m = line.match(/^\s*[-*+]\s+(.*)$/))) {
        if (list !== "ul") { closeList(); out.push("<ul>"); list = "ul"; }
        out.push(`<li>${inline(m[1])}</li>`);
      } else if ((m = line.match(/^\s*\d+[.)]\s+(.*)$/))) {
        if (list !== "ol") { closeList(); out.push("<ol>"); list = "ol"; }
        out.push(`<li>${inline(m[1])}</li>`);
      } else if ((m = line.match(/^>\s?(.*)$/))) {
        closeList();
        out.push(`<blockquote>${inline(m[1])}</blockquote>`);
      } else if (/^\s*(-{3,}|\*{3,})\s*$/.test(line)) {
        closeList();
        out.push("<hr>");
      } else if (line.trim() === "") {
        closeList();
        out.push('<div class="gap"></div>');
      } else {
        closeList();
        out.push(`<p>${inline(line)}</p>`);
      }
    }
    closeList();
    return out.join("");
  }

  global.PGMarkdown = { render, esc, inline };
})(window);
