// After the call: the batch transcript beside the live one with their differences marked, the
// quality (live-vs-batch WER), the compliance result with its evidence, the (redacted) recording
// with the word being played highlighted, and the exports. Everything the batch pass has not made yet
// is a 404: the panel says "pending" and asks again with a growing delay while the call is open.

import { AuthError, HttpError, blobUrl, download, getJSON } from "./api.js";
import { SPEAKER, clock, el, words } from "./dom.js";
import { commonWords } from "./diff.js";

const EXPORTS = [["vtt", "WebVTT", "vtt"], ["srt", "SubRip", "srt"], ["json", "JSON", "json"], ["text", "Text", "txt"]];
const RETRY_MS = [2000, 3000, 5000, 8000, 10000];
const MAX_ATTEMPTS = 90;  // about a quarter of an hour: then reopening the call asks again

export class Review {
  constructor(root) {
    this.root = root;
    this.sid = null; this.timer = null; this.attempt = 0; this.audioUrl = null; this.words = []; this.current = null;
    this.audio = root.querySelector("#recording");
    this.audio.addEventListener("timeupdate", () => this.highlight());
    this.audio.addEventListener("seeked", () => this.highlight());
    this.audio.addEventListener("play", () => this.follow());
    for (const [format, label, ext] of EXPORTS) {
      const b = el("button", "export", label);
      b.type = "button";
      b.dataset.format = format;
      b.onclick = () => this.export(format, ext);
      root.querySelector("#exports").append(b);
    }
  }

  clear() {
    clearTimeout(this.timer);
    this.loading = false;
    this.sid = null; this.attempt = 0; this.words = []; this.current = null;
    this.root.hidden = true;
    this.audio.pause(); this.audio.removeAttribute("src");
    if (this.audioUrl) { URL.revokeObjectURL(this.audioUrl); this.audioUrl = null; }
    for (const id of ["#live-col", "#batch-col", "#quality", "#compliance", "#recording-note"]) this.root.querySelector(id).replaceChildren();
    this.root.querySelector("#player").hidden = true;
    this.have = {};
  }

  /** Show what exists for an ended call, and keep asking for what the batch pass has not made yet. */
  show(sid) {
    if (this.sid !== sid) { this.clear(); this.sid = sid; }
    this.root.hidden = false;
    if (!this.loading) this.load();  // one round of requests at a time, one retry timer
  }

  async load() {
    const sid = this.sid, base = `/calls/${encodeURIComponent(sid)}`;
    clearTimeout(this.timer);
    this.loading = true;
    try { await this.loadOnce(sid, base); } finally { if (sid === this.sid) this.loading = false; }
  }

  async loadOnce(sid, base) {
    const wanted = ["batch", "quality", "compliance", "recording"].filter((k) => !this.have[k]);
    const tries = wanted.map(async (k) => {
      try {
        if (k === "batch") {
          const [live, batch] = await Promise.all([getJSON(`${base}/transcript?format=json`), getJSON(`${base}/transcript?format=json&source=batch`)]);
          if (sid === this.sid) this.renderDiff(live, batch);
        } else if (k === "quality") {
          const q = await getJSON(`${base}/quality`);
          if (sid === this.sid) this.renderQuality(q);
        } else if (k === "compliance") {
          const c = await getJSON(`${base}/compliance`);
          if (sid === this.sid) this.renderCompliance(c);
        } else {
          const url = await blobUrl(`${base}/recording`);
          if (sid !== this.sid) { URL.revokeObjectURL(url); return; }
          this.audioUrl = url; this.audio.src = url;
          this.root.querySelector("#player").hidden = false;
          this.root.querySelector("#recording-note").textContent = "";
        }
        this.have[k] = true;
      } catch (e) {
        if (e instanceof AuthError) throw e;
        if (sid === this.sid) this.pending(k, e);
      }
    });
    try { await Promise.all(tries); } catch (e) { return; }  // a refused token: the banner says it, stop asking
    if (sid === this.sid && wanted.some((k) => !this.have[k]) && this.attempt < MAX_ATTEMPTS) {
      this.timer = setTimeout(() => this.load(), RETRY_MS[Math.min(this.attempt++, RETRY_MS.length - 1)]);
    }
  }

  pending(kind, e) {
    const why = e instanceof HttpError && e.status === 404 ? "not available yet (the batch pass makes it)" : `unavailable (${e.message})`;
    const target = { batch: "#batch-col", quality: "#quality", compliance: "#compliance", recording: "#recording-note" }[kind];
    const box = this.root.querySelector(target);
    const label = { batch: "Batch transcript", quality: "Quality", compliance: "Compliance", recording: "Recording" }[kind];
    box.replaceChildren(el("p", "pending", `${label}: ${why}`));
  }

  renderQuality(q) {
    const box = this.root.querySelector("#quality");
    const pct = (x) => (x === null || x === undefined ? "n/a" : `${(x * 100).toFixed(1)} %`);
    box.replaceChildren(el("h3", "", "Quality"));
    const p = el("p", `wer ${q.flagged ? "flagged" : ""}`, `Live vs batch WER ${pct(q.wer)}${q.flagged ? " — flagged" : ""}`);
    box.append(p);
    const ul = el("ul", "tracks");
    for (const t of q.tracks || []) ul.append(el("li", "", `${SPEAKER[t.track] || t.track}: ${pct(t.wer)} (${t.substitutions} sub, ${t.deletions} del, ${t.insertions} ins)`));
    box.append(ul);
  }

  renderCompliance(c) {
    const box = this.root.querySelector("#compliance");
    box.replaceChildren(el("h3", "", "Compliance"));
    box.append(el("p", `verdict ${c.passed ? "pass" : "fail"}`, c.passed ? "Compliant" : "Not compliant"));
    const ul = el("ul", "rules");
    for (const rule of c.rules || []) {
      // Alert rules never fail a call: they list where they matched.
      const alertRule = rule.kind === "alert";
      const li = el("li", `rule-result ${alertRule ? "alert-rule" : rule.passed ? "pass" : "fail"}`);
      li.append(el("strong", "", `${alertRule ? "⚑" : rule.passed ? "✓" : "✗"} ${rule.id}`));
      if (rule.description) li.title = rule.description;
      const ev = el("ul", "evidence");
      for (const e of rule.evidence || []) {
        const item = el("li");
        const seek = el("button", "link", clock(e.start || 0));
        seek.type = "button";
        seek.setAttribute("aria-label", `Play from ${clock(e.start || 0)}`);
        seek.onclick = () => this.seek(e.start || 0);
        item.append(seek, el("span", "who", ` ${SPEAKER[e.track] || e.track}: `), el("q", "", e.text));
        ev.append(item);
      }
      li.append(ev);
      ul.append(li);
    }
    box.append(ul);
    if ((c.alerts || []).length) box.append(el("p", "", `${c.alerts.length} alert(s) raised during the call`));
  }

  /** Live finals and batch utterances side by side, per track the words one has and the other not marked. */
  renderDiff(live, batch) {
    const liveCol = this.root.querySelector("#live-col"), batchCol = this.root.querySelector("#batch-col");
    const liveRows = live.map((f) => ({ track: f.track, start: f.start, text: f.text, words: null }));
    const batchRows = (batch.utterances || []).filter((u) => u.text).map((u) => ({ track: u.track, start: u.start, text: u.text, words: u.words || [] }));
    const spans = { live: [], batch: [] };
    const render = (col, title, rows, side) => {
      col.replaceChildren(el("h3", "", title));
      for (const row of rows) {
        const line = el("div", `line ${row.track}`);
        line.append(el("span", "time", clock(row.start || 0)), el("span", "who", SPEAKER[row.track] || row.track));
        const textBox = el("span", "text");
        const timed = row.words && row.words.length ? row.words : null;
        const parts = timed ? timed.map((w) => ({ text: w.punctuated_word || w.word, start: w.start, end: w.end })) : row.text.split(/\s+/).filter(Boolean).map((t) => ({ text: t }));
        for (const part of parts) {
          const span = el("span", "w", part.text);
          if (part.start !== undefined) { span.dataset.start = part.start; span.dataset.end = part.end; }
          const norm = words(part.text);
          span.dataset.norm = norm.join(" ");
          spans[side].push({ track: row.track, span, norm });
          textBox.append(span, document.createTextNode(" "));
          if (side === "batch" && part.start !== undefined) this.words.push({ start: part.start, end: part.end, span });
        }
        line.append(textBox);
        col.append(line);
      }
    };
    this.words = [];
    render(liveCol, "Live (as heard)", liveRows, "live");
    render(batchCol, "Batch (after the fact)", batchRows, "batch");
    let differences = 0;
    for (const track of ["inbound", "outbound"]) {
      // Each side's words of the track in order, each pointing back to its span.
      const flat = (side) => spans[side].filter((s) => s.track === track).flatMap((s) => s.norm.map((w) => ({ w, span: s.span })));
      const a = flat("live"), b = flat("batch");
      const common = commonWords(a.map((x) => x.w), b.map((x) => x.w));
      if (!common) { liveCol.append(el("p", "pending", `${SPEAKER[track]}: too long to mark differences`)); continue; }
      a.forEach((x, i) => { if (!common.inA[i]) { x.span.classList.add("only-live"); differences++; } });
      b.forEach((x, i) => { if (!common.inB[i]) { x.span.classList.add("only-batch"); differences++; } });
    }
    for (const s of this.root.querySelectorAll(".only-live")) s.title = "heard live, not in the batch transcript";
    for (const s of this.root.querySelectorAll(".only-batch")) s.title = "in the batch transcript, not heard live";
    this.root.querySelector("#diff-summary").textContent = differences
      ? `${differences} word(s) differ: struck through = live only, underlined = batch only` : "Live and batch transcripts agree";
    this.words.sort((x, y) => x.start - y.start);
  }

  seek(t) {
    if (!this.audio.src) return;
    this.audio.currentTime = t;
    this.audio.play().catch(() => {});
  }

  follow() {
    const step = () => { this.highlight(); if (!this.audio.paused && !this.audio.ended) requestAnimationFrame(step); };
    requestAnimationFrame(step);
  }

  /** Highlight the batch word being played (word timings of the batch transcript). */
  highlight() {
    const t = this.audio.currentTime;
    let found = null;
    for (const w of this.words) { if (w.start <= t && t < w.end) { found = w; break; } if (w.start > t) break; }
    if (found === this.current) return;
    this.current?.span.classList.remove("current");
    this.current = found;
    if (found) { found.span.classList.add("current"); found.span.scrollIntoView({ block: "nearest" }); }
  }

  async export(format, ext) {
    if (!this.sid) return;
    const note = this.root.querySelector("#export-note");
    try {
      await download(`/calls/${encodeURIComponent(this.sid)}/transcript?format=${format}`, `${this.sid}.${ext}`);
      note.textContent = "";
    } catch (e) {
      if (!(e instanceof AuthError)) note.textContent = `${format.toUpperCase()} export unavailable (${e.message})`;
    }
  }
}
