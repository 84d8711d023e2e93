// Renders Feishu interactive cards (Card JSON 1.0 and 2.0) the way the Feishu client shows
// them: coloured header, markdown / lark_md / div / note / hr / columns / panels / images, and
// buttons. A button with a callback value calls onAction(value, tag, name); a URL button opens
// its link. Elements this renderer does not know yet show as a small grey "[tag]" box, so a
// card using something new is still visible.
"use strict";

(function (global) {
  const md = global.PGMarkdown;
  const HEADER_COLORS = ["blue", "wathet", "turquoise", "green", "yellow", "orange", "red",
    "carmine", "violet", "purple", "indigo", "grey", "default"];

  function el(tag, cls, html) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (html != null) node.innerHTML = html;
    return node;
  }

  function textOf(obj) {
    if (obj == null) return "";
    if (typeof obj === "string") return md.esc(obj);
    if (obj.i18n) obj = { ...obj, content: Object.values(obj.i18n)[0] };
    const content = obj.content != null ? obj.content : (obj.text != null ? obj.text : "");
    return obj.tag === "lark_md" || obj.tag === "markdown" ? md.render(content) : md.esc(content);
  }

  function firstLocale(map) {
    if (!map || typeof map !== "object") return null;
    return map.zh_cn || map.en_us || Object.values(map)[0] || null;
  }

  function buttonValue(btn) {
    // Card 2.0: behaviors [{type: "callback", value}, {type: "open_url", default_url}]
    for (const b of btn.behaviors || []) {
      if (b.type === "callback") return { kind: "callback", value: b.value };
      if (b.type === "open_url") return { kind: "url", url: b.default_url || b.url };
      if (b.type === "form_action") return { kind: "form", value: b.value };
    }
    if (btn.url || btn.multi_url) return { kind: "url", url: btn.url || btn.multi_url.url };
    if (btn.value !== undefined) return { kind: "callback", value: btn.value };
    if (btn.form_action_type) return { kind: "form", value: {} };
    return { kind: "none" };
  }

  function renderButton(btn, ctx) {
    const type = String(btn.type || "default").replace("_filled", "").replace("_text", "");
    const node = el("button", `card-btn btn-${type}`, textOf(btn.text) || "button");
    node.type = "button";
    const action = buttonValue(btn);
    node.dataset.kind = action.kind;
    if (btn.disabled || ctx.readOnly) node.disabled = true;
    node.addEventListener("click", () => {
      if (btn.confirm && !window.confirm(md.esc(btn.confirm.title && btn.confirm.title.content || "Sure?"))) return;
      if (action.kind === "url") window.open(action.url, "_blank", "noopener");
      else if (action.kind === "callback" || action.kind === "form") {
        node.disabled = true;
        const form = action.kind === "form" ? ctx.formValues() : undefined;
        Promise.resolve(ctx.onAction(action.value, btn.tag || "button", btn.name, form))
          .finally(() => { node.disabled = !!btn.disabled; });
      }
    });
    return node;
  }

  function renderSelect(sel, ctx) {
    const node = el("select", "card-select");
    const ph = el("option", null, textOf(sel.placeholder) || "choose…");
    ph.value = "";
    node.appendChild(ph);
    for (const opt of sel.options || []) {
      const o = el("option", null, textOf(opt.text));
      o.value = typeof opt.value === "string" ? opt.value : JSON.stringify(opt.value);
      node.appendChild(o);
    }
    node.addEventListener("change", () => {
      if (!node.value) return;
      const value = { ...(sel.value || {}), option: node.value };
      ctx.onAction(value, sel.tag, sel.name);
    });
    return node;
  }

  function renderElements(list, ctx, parent) {
    for (const item of list || []) {
      const node = renderElement(item, ctx);
      if (node) parent.appendChild(node);
    }
    return parent;
  }

  function renderElement(e, ctx) {
    if (!e || typeof e !== "object") return null;
    switch (e.tag) {
      case "markdown":
      case "lark_md": {
        const node = el("div", "card-md", md.render(e.content || ""));
        if (e.text_align) node.style.textAlign = e.text_align;
        if (e.element_id) node.dataset.elementId = e.element_id;
        return node;
      }
      case "plain_text":
        return el("div", "card-text", md.esc(e.content || ""));
      case "div": {
        const node = el("div", "card-div");
        if (e.text) node.appendChild(el("div", "card-md", textOf(e.text)));
        if (e.fields && e.fields.length) {
          const grid = el("div", "card-fields");
          for (const f of e.fields) grid.appendChild(el("div", f.is_short ? "short" : "long", textOf(f.text)));
          node.appendChild(grid);
        }
        if (e.extra) { const x = renderElement(e.extra, ctx); if (x) node.appendChild(x); }
        return node;
      }
      case "hr":
        return el("hr", "card-hr");
      case "note": {
        const node = el("div", "card-note");
        for (const n of e.elements || []) {
          if (n.tag === "img") node.appendChild(el("span", "note-img", "🖼"));
          else node.appendChild(el("span", null, textOf(n)));
        }
        return node;
      }
      case "action": {
        const node = el("div", "card-actions");
        for (const a of e.actions || []) {
          const child = a.tag === "button" ? renderButton(a, ctx)
            : (a.tag === "select_static" || a.tag === "overflow") ? renderSelect(a, ctx)
            : renderElement(a, ctx);
          if (child) node.appendChild(child);
        }
        return node;
      }
      case "button":
        return el("div", "card-actions").appendChild(renderButton(e, ctx)).parentNode;
      case "select_static":
      case "overflow":
        return renderSelect(e, ctx);
      case "column_set": {
        const node = el("div", "card-columns");
        for (const col of e.columns || []) {
          const c = renderElements(col.elements, ctx, el("div", "card-column"));
          if (col.weight) c.style.flex = String(col.weight);
          node.appendChild(c);
        }
        return node;
      }
      case "collapsible_panel": {
        const node = el("details", "card-panel");
        if (e.expanded) node.open = true;
        const title = e.header && e.header.title;
        node.appendChild(el("summary", null, textOf(title) || "details"));
        return renderElements(e.elements, ctx, node);
      }
      case "form": {
        const node = el("form", "card-form");
        node.addEventListener("submit", (ev) => ev.preventDefault());
        return renderElements(e.elements, ctx, node);
      }
      case "input": {
        const node = el("input", "card-input");
        node.name = e.name || "";
        node.placeholder = (e.placeholder && e.placeholder.content) || "";
        return node;
      }
      case "interactive_container":
        return renderElements(e.elements, ctx, el("div", "card-container"));
      case "img":
      case "image": {
        const key = e.img_key || e.image_key;
        const node = el("img", "card-img");
        node.alt = (e.alt && e.alt.content) || key || "image";
        if (key) node.src = `/api/resource/${encodeURIComponent(key)}`;
        return node;
      }
      default:
        return el("div", "card-unknown", `[${md.esc(e.tag || "element")}]`);
    }
  }

  // ctx: {onAction(value, tag, name, form), readOnly}
  function renderCard(card, ctx) {
    const root = el("div", "card");
    if (!card || typeof card !== "object") return root;
    if (card._missing_card) {
      root.appendChild(el("div", "card-unknown", `CardKit card ${md.esc(card._missing_card)} (not known to this simulator)`));
      return root;
    }
    if (card.type === "template") {
      root.appendChild(el("div", "card-unknown", "[template card]"));
      return root;
    }
    const schema2 = card.schema === "2.0";
    root.dataset.schema = schema2 ? "2.0" : "1.0";
    const header = card.header || firstLocale(card.i18n_header);
    if (header) {
      const color = HEADER_COLORS.includes(header.template) ? header.template : "default";
      const h = el("div", `card-header tpl-${color}`);
      h.dataset.template = header.template || "default";
      h.appendChild(el("div", "card-title", textOf(header.title)));
      if (header.subtitle) h.appendChild(el("div", "card-subtitle", textOf(header.subtitle)));
      for (const tag of header.text_tag_list || []) {
        h.appendChild(el("span", `card-tag tag-${tag.color || "neutral"}`, textOf(tag.text)));
      }
      root.appendChild(h);
    }
    const body = el("div", "card-body");
    const ctx2 = {
      ...ctx,
      formValues() {
        const out = {};
        for (const input of body.querySelectorAll(".card-input")) out[input.name] = input.value;
        return out;
      },
    };
    const elements = schema2 ? (card.body && card.body.elements) : (card.elements || firstLocale(card.i18n_elements));
    renderElements(elements, ctx2, body);
    const streaming = card._streaming || (card.config && card.config.streaming_mode);
    if (streaming) {
      root.classList.add("streaming");
      body.appendChild(el("span", "cursor", "▍"));
    }
    root.appendChild(body);
    return root;
  }

  global.PGCards = { renderCard };
})(window);
