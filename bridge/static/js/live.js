// The live view of one call over WS /calls/{sid}/live: caller and agent apart, partials settling
// into finals in place, auto-scroll that pauses while the user reads further up, a visible
// reconnecting state (with backoff), alerts highlighted on the line that raised them, and a Commit
// button per track (POST /calls/{sid}/commit: finalize what the recognizer holds now).

import { AuthError, HttpError, backoff, denied, protocols, request } from "./api.js";
import { SPEAKER, announce, clock, el } from "./dom.js";

// Close codes after which reconnecting cannot help (bad request, token refused, unknown call).
const FINAL_CODES = { 4400: "bad request", 4401: "token missing, invalid or expired", 4403: "token does not grant this call", 4404: "unknown call" };
const FOLLOW_SLACK_PX = 40;

export class LiveView {
  constructor(root, { onStarted, onEnded, onAlert }) {
    this.box = root.querySelector("#transcript");
    this.status = root.querySelector("#status");
    this.conn = root.querySelector("#conn");
    this.jump = root.querySelector("#jump");
    this.alertList = root.querySelector("#alerts");
    this.commits = root.querySelector("#commit");
    this.onStarted = onStarted; this.onEnded = onEnded; this.onAlert = onAlert;
    this.sid = null; this.socket = null; this.retry = 0; this.retryTimer = null;
    this.lastSeq = 0; this.partials = {}; this.pendingAlerts = new Map(); this.follow = true; this.unseen = 0;
    this.box.addEventListener("scroll", () => {
      this.follow = this.atBottom();
      if (this.follow) { this.unseen = 0; this.jump.hidden = true; }
    });
    this.jump.addEventListener("click", () => { this.scrollToEnd(); this.box.focus(); });
    for (const button of this.commits.querySelectorAll("button[data-track]")) {
      button.addEventListener("click", () => this.commit(button.dataset.track, button));
    }
  }

  /** Follow call ``sid``; ``focusSeq``: the final to show when it arrives (a search result). */
  open(sid, focusSeq = 0) {
    this.close();
    this.focusSeq = focusSeq;
    this.sid = sid; this.lastSeq = 0; this.retry = 0; this.follow = true; this.unseen = 0;
    this.partials = {}; this.pendingAlerts.clear();
    this.box.replaceChildren();
    this.alertList.replaceChildren(); this.alertList.hidden = true;
    this.jump.hidden = true;
    this.setCommit(false);
    this.connect();
  }

  close() {
    clearTimeout(this.retryTimer);
    if (this.socket) { this.socket.onclose = null; this.socket.onmessage = null; this.socket.close(); this.socket = null; }
    this.sid = null;
  }

  setConn(state, text) {
    this.conn.dataset.state = state;
    this.conn.textContent = text;
  }

  connect() {
    const sid = this.sid;
    if (!sid) return;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    let socket;
    try {
      socket = new WebSocket(`${proto}//${location.host}/calls/${encodeURIComponent(sid)}/live?after=${this.lastSeq}`, protocols);
    } catch (e) {  // a token that cannot even be offered as a subprotocol
      denied("Access denied (malformed token)");
      this.setConn("stopped", "Stopped");
      return;
    }
    this.socket = socket;
    if (this.retry === 0) this.setConn("connecting", "Connecting…");
    socket.onopen = () => { this.setConn("live", "Live"); this.status.textContent = ""; };
    socket.onmessage = (m) => { this.retry = 0; if (sid === this.sid) this.onEvent(JSON.parse(m.data)); };
    socket.onclose = (e) => {
      if (sid !== this.sid) return;
      this.socket = null;
      if (e.code === 1000) { this.setConn("ended", "Ended"); return; }
      const final = FINAL_CODES[e.code];
      if (final) {
        this.status.textContent = `stopped (${e.code} ${e.reason || final})`;
        this.setConn("stopped", "Stopped");
        if (e.code === 4401 || e.code === 4403) denied(`Access denied (${e.code}: ${e.reason || final})`);
        return;  // reconnecting would fail the same way
      }
      const delay = backoff(this.retry++);
      this.setConn("reconnecting", `Reconnecting in ${Math.max(1, Math.round(delay / 1000))} s…`);
      this.status.textContent = `reconnecting (${e.code}${e.reason ? " " + e.reason : ""})`;
      this.retryTimer = setTimeout(() => this.connect(), delay);
    };
  }

  atBottom() { return this.box.scrollTop + this.box.clientHeight >= this.box.scrollHeight - FOLLOW_SLACK_PX; }

  scrollToEnd() {
    this.box.scrollTop = this.box.scrollHeight;
    this.follow = true; this.unseen = 0; this.jump.hidden = true;
  }

  line(ev, cls) {
    const row = el("div", `line ${ev.track} ${cls}`);
    row.append(el("span", "time", clock(ev.start || 0)), el("span", "who", SPEAKER[ev.track] || ev.track),
               el("span", "text", ev.text));
    if (cls === "final") { row.dataset.id = ev.id; row.dataset.seq = ev.seq; row.dataset.start = ev.start; }
    return row;
  }

  onEvent(ev) {
    const follow = this.follow;
    let added = false;
    if (ev.type === "final") {
      if (ev.seq && ev.seq <= this.lastSeq) return;  // already shown (resume after reconnect)
      this.lastSeq = ev.seq || this.lastSeq;
      const row = this.line(ev, "final");
      const p = this.partials[ev.track];
      if (p) { p.replaceWith(row); delete this.partials[ev.track]; } else { this.box.append(row); added = true; }
      if (this.focusSeq && ev.seq === this.focusSeq) this.reveal(row);
      const waiting = this.pendingAlerts.get(ev.id);
      if (waiting) { this.pendingAlerts.delete(ev.id); for (const a of waiting) this.markAlert(row, a); }
    } else if (ev.type === "partial") {
      const row = this.line(ev, "partial");
      if (this.partials[ev.track]) this.partials[ev.track].replaceWith(row); else { this.box.append(row); added = true; }
      this.partials[ev.track] = row;
    } else if (ev.type === "utterance_end") {
      const p = this.partials[ev.track]; if (p) { p.remove(); delete this.partials[ev.track]; }
    } else if (ev.type === "recognizer_status") {
      this.status.textContent = `recognizer ${ev.track}: ${ev.state}${ev.detail ? " (" + ev.detail + ")" : ""}`;
    } else if (ev.type === "alert") {
      this.alert(ev);
    } else if (ev.type === "call_started") {
      this.setCommit(true);
      this.onStarted?.(ev);
    } else if (ev.type === "call_ended") {
      for (const p of Object.values(this.partials)) p.remove();
      this.partials = {};
      this.box.append(el("div", "notice", `Call ended (${ev.reason || "stop"}), ${Math.round(ev.duration || 0)} s`));
      added = true;
      this.status.textContent = "";
      this.setConn("ended", "Ended");
      this.setCommit(false);
      this.onEnded?.(ev);
    }
    if (this.follow && follow) this.box.scrollTop = this.box.scrollHeight;
    else if (added) { this.unseen++; this.jump.hidden = false; this.jump.textContent = `${this.unseen} new ↓ Jump to live`; }
  }

  /** Show a line found by search: highlighted, scrolled to, and auto-scroll paused so it stays. */
  reveal(row) {
    this.focusSeq = 0;
    row.classList.add("found");
    row.tabIndex = -1;
    this.follow = false;
    requestAnimationFrame(() => { row.scrollIntoView({ block: "center" }); row.focus({ preventScroll: true }); });
  }

  alert(ev) {
    const item = el("li", "alert-item");
    const seek = el("button", "link", `${ev.rule}`);
    seek.type = "button";
    item.append(el("span", "time", clock(ev.start || 0)), seek, el("span", "who", SPEAKER[ev.track] || ev.track),
                el("span", "text", ev.text));
    this.alertList.append(item); this.alertList.hidden = false;
    const row = ev.final_id ? this.box.querySelector(`.line.final[data-id="${CSS.escape(ev.final_id)}"]`) : null;
    if (row) this.markAlert(row, ev);
    else if (ev.final_id) this.pendingAlerts.set(ev.final_id, [...(this.pendingAlerts.get(ev.final_id) || []), ev]);
    seek.onclick = () => {
      const target = this.box.querySelector(`.line.final[data-id="${CSS.escape(ev.final_id || "")}"]`);
      if (target) { target.scrollIntoView({ block: "center" }); target.focus(); }
    };
    announce(`Alert: ${ev.rule}`);
    this.onAlert?.(ev);
  }

  markAlert(row, ev) {
    row.classList.add("alert");
    row.tabIndex = -1;
    const rules = new Set((row.dataset.rules || "").split(" ").filter(Boolean));
    rules.add(ev.rule);
    row.dataset.rules = [...rules].join(" ");
    let badge = row.querySelector(".rule");
    if (!badge) { badge = el("span", "rule"); row.append(badge); }
    badge.textContent = `⚠ ${[...rules].join(", ")}`;
  }

  setCommit(on) {
    this.commits.hidden = !on;
    for (const b of this.commits.querySelectorAll("button")) b.disabled = !on;
  }

  async commit(track, button) {
    if (!this.sid) return;
    button.disabled = true;
    const note = this.commits.querySelector(".commit-note");
    try {
      await request(`/calls/${encodeURIComponent(this.sid)}/commit`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ track }),
      });
      note.textContent = `${SPEAKER[track]} committed`;
    } catch (e) {
      if (!(e instanceof AuthError)) note.textContent = `Commit failed (${e instanceof HttpError ? e.status + " " : ""}${e.message})`;
    } finally {
      button.disabled = this.commits.hidden;
    }
  }
}
