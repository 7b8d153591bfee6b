// The search box: GET /search?q=… (newest calls first), each result a button that opens the call at
// the line where the phrase was said.

import { AuthError, getJSON } from "./api.js";
import { SPEAKER, announce, clock, el, when } from "./dom.js";

export class Search {
  constructor(form, results, { onOpen }) {
    this.form = form; this.results = results; this.onOpen = onOpen; this.seq = 0;
    this.input = form.querySelector("input[type=search]");
    form.addEventListener("submit", (e) => { e.preventDefault(); this.run(); });
    this.input.addEventListener("search", () => { if (!this.input.value.trim()) this.hide(); });  // the clear (x) button
    this.input.addEventListener("keydown", (e) => { if (e.key === "Escape") { this.input.value = ""; this.hide(); } });
  }

  hide() { this.results.hidden = true; this.results.replaceChildren(); }

  async run() {
    const q = this.input.value.trim();
    if (!q) { this.hide(); return; }
    const mine = ++this.seq;
    document.body.classList.remove("has-call");  // on a phone the results are where the list is
    this.results.hidden = false;
    this.results.replaceChildren(el("p", "pending", "Searching…"));
    let body;
    try {
      body = await getJSON(`/search?q=${encodeURIComponent(q)}&limit=20`);
    } catch (e) {
      if (mine !== this.seq) return;
      this.results.replaceChildren(el("p", "error", e instanceof AuthError ? "Search refused: the token was not accepted." : `Search failed: ${e.message}`));
      return;
    }
    if (mine !== this.seq) return;
    const head = el("div", "results-head");
    head.append(el("h2", "", `${body.calls.length} call${body.calls.length === 1 ? "" : "s"} said “${q}”`));
    const close = el("button", "link", "Clear");
    close.type = "button";
    close.onclick = () => { this.input.value = ""; this.hide(); this.input.focus(); };
    head.append(close);
    const list = el("ul", "results");
    for (const call of body.calls) {
      for (const seg of call.segments) {
        const li = el("li", "result");
        li.dataset.sid = call.call_sid;
        const b = el("button", "open-result");
        b.type = "button";
        const top = el("span", "row meta", `${when(call.started_at)} · ${call.from_number || "unknown"} → ${call.to_number || "unknown"} · ${clock(seg.start)} ${SPEAKER[seg.track] || seg.track}`);
        const text = el("span", "text");
        this.mark(text, seg.text, body.words);
        b.append(top, text);
        b.onclick = () => this.onOpen(call.call_sid, seg);
        li.append(b);
        list.append(li);
      }
    }
    this.results.replaceChildren(head, body.calls.length ? list : el("p", "empty", "No stored call said that."));
    announce(`${body.calls.length} calls found`);
  }

  /** The segment's text with the query's words in <mark>. */
  mark(box, text, wanted) {
    const set = new Set(wanted);
    for (const token of text.split(/(\s+)/)) {
      const norm = token.toLowerCase().replace(/[^\p{L}\p{N}']/gu, "");
      if (norm && set.has(norm)) box.append(el("mark", "", token)); else box.append(document.createTextNode(token));
    }
  }
}
