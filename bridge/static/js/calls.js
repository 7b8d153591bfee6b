// The calls list: active calls first (newest first), then ended ones; from/to, start, duration,
// recognizer state, alert and compliance badges. It polls GET /calls every 3 s (and GET /compliance
// every 15 s for the verdicts), and refreshes at once when the open call starts or ends. A refused
// token stops the polling from hammering: it backs off up to five minutes.

import { AuthError, getJSON } from "./api.js";
import { duration, el, when } from "./dom.js";

const POLL_MS = 3000;
const VERDICTS_MS = 15000;
const VERDICTS_LIMIT = 200;
const REPORTS_PER_ROUND = 10;
const STATE_RANK = { failed: 4, reconnecting: 3, connecting: 2, closed: 1, connected: 0 };

export class CallList {
  constructor(list, { onOpen }) {
    this.list = list;
    this.onOpen = onOpen;
    this.current = null;
    this.calls = [];
    this.alerts = new Map();       // sid -> Set of alerts seen live on this page ("final_id|rule")
    this.compliance = new Map();   // sid -> {passed, alerts}: calls the batch pass has judged
    this.verdictsAt = 0;
    this.delay = POLL_MS;
    this.timer = null;
    this.ticker = setInterval(() => this.tick(), 1000);
  }

  start() { this.refresh(); }

  /** Refresh now (the open call started or ended), then keep polling. */
  async refresh() {
    clearTimeout(this.timer);
    try {
      this.calls = await getJSON("/calls?limit=50");
      this.delay = POLL_MS;
      this.render();
      this.checkCompliance();
    } catch (e) {
      if (e instanceof AuthError) this.delay = Math.min(this.delay * 2, 300000);  // a token does not heal
      // other failures: keep the last list and try again
    } finally {
      this.timer = setTimeout(() => this.refresh(), this.delay);
    }
  }

  select(sid) {
    this.current = sid;
    for (const li of this.list.querySelectorAll("li[data-sid]")) {
      const on = li.dataset.sid === sid;
      li.classList.toggle("selected", on);
      li.querySelector("button").setAttribute("aria-current", on ? "true" : "false");
    }
  }

  /** An alert seen live; the same one again (a reopened call's snapshot) is not counted twice. */
  noteAlert(ev) {
    const seen = this.alerts.get(ev.call_sid) || new Set();
    const key = `${ev.final_id}|${ev.rule}`;
    if (seen.has(key)) return;
    seen.add(key);
    this.alerts.set(ev.call_sid, seen);
    this.render();
  }

  /** Verdicts of every call with a report, in one request (GET /compliance) every 15 s; then, once per
   * call, its report for the number of alerts it raised. */
  async checkCompliance() {
    const now = Date.now();
    if (now - this.verdictsAt < VERDICTS_MS) return;
    this.verdictsAt = now;
    try {
      const body = await getJSON(`/compliance?limit=${VERDICTS_LIMIT}`);
      for (const row of body.calls || []) {
        this.compliance.set(row.call_sid, { ...(this.compliance.get(row.call_sid) || {}), passed: !!row.passed });
      }
      const unread = this.calls.filter((c) => this.compliance.get(c.call_sid)?.alerts === undefined)
        .filter((c) => this.compliance.has(c.call_sid)).slice(0, REPORTS_PER_ROUND);
      for (const c of unread) {
        const report = await getJSON(`/calls/${encodeURIComponent(c.call_sid)}/compliance`).catch((e) => {
          if (e instanceof AuthError) throw e;
          return { alerts: [] };
        });
        this.compliance.get(c.call_sid).alerts = (report.alerts || []).length;
      }
    } catch (e) {
      return;  // a refused token shows its banner; anything else: the next round asks again
    }
    this.render();
  }

  render() {
    const focused = document.activeElement?.closest?.("#calls li")?.dataset.sid;
    this.list.replaceChildren();
    if (!this.calls.length) this.list.append(el("li", "empty", "No calls yet"));
    for (const c of this.calls) {
      const li = el("li", c.call_sid === this.current ? "selected" : "");
      li.dataset.sid = c.call_sid;
      li.dataset.status = c.status || "";
      const open = el("button", "open-call");
      open.type = "button";
      open.setAttribute("aria-current", c.call_sid === this.current ? "true" : "false");
      const top = el("span", "row");
      top.append(el("span", `state ${c.status === "active" ? "live" : "ended"}`, c.status === "active" ? "Live" : "Ended"));
      top.append(el("span", "parties", `${c.from_number || "unknown"} → ${c.to_number || "unknown"}`));
      const meta = el("span", "row meta");
      meta.append(el("span", "started", when(c.started_at)));
      const dur = el("span", "duration", duration(this.seconds(c)));
      dur.dataset.started = c.started_at || 0;
      if (c.status === "active") dur.dataset.ticking = "1";
      meta.append(dur);
      const badges = el("span", "row badges");
      const states = Object.values(c.recognizers || {});
      if (c.status === "active" && states.length) {
        const worst = states.sort((a, b) => (STATE_RANK[b] ?? 0) - (STATE_RANK[a] ?? 0))[0];
        badges.append(el("span", `badge recognizer ${worst}`, `recognizer ${worst}`));
      }
      const known = this.compliance.get(c.call_sid);
      const alerts = Math.max(this.alerts.get(c.call_sid)?.size || 0, known?.alerts || 0);
      if (alerts) badges.append(el("span", "badge alert", `${alerts} alert${alerts > 1 ? "s" : ""}`));
      if (known) {
        badges.append(el("span", `badge compliance ${known.passed ? "pass" : "fail"}`, known.passed ? "compliant" : "non-compliant"));
      } else if (c.status === "ended") {
        badges.append(el("span", "badge pending", "review pending"));
      }
      badges.append(el("span", "sid", c.call_sid));
      open.append(top, meta, badges);
      open.onclick = () => this.onOpen(c.call_sid);
      li.append(open);
      this.list.append(li);
    }
    if (focused) this.list.querySelector(`li[data-sid="${CSS.escape(focused)}"] button`)?.focus();
  }

  seconds(c) {
    if (c.status === "active") return c.started_at ? Date.now() / 1000 - c.started_at : 0;
    return c.ended_at && c.started_at ? c.ended_at - c.started_at : 0;
  }

  tick() {
    for (const d of this.list.querySelectorAll(".duration[data-ticking]")) {
      d.textContent = duration(Date.now() / 1000 - Number(d.dataset.started));
    }
  }
}
