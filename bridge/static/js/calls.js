// The calls list: active calls first (newest first), then ended ones; from/to, start, duration,
// recognizer state, alert and compliance badges. It polls GET /calls (one request every few
// seconds whatever the number of viewers' calls) and refreshes at once when the open call starts or
// ends. A refused token stops the polling from hammering: it backs off up to five minutes.

import { AuthError, HttpError, getJSON } from "./api.js";
import { duration, el, when } from "./dom.js";

const POLL_MS = 3000;
const COMPLIANCE_RECHECK_MS = 30000;
const COMPLIANCE_PER_REFRESH = 10;
const STATE_RANK = { failed: 4, reconnecting: 3, connecting: 2, closed: 1, connected: 0 };

export class CallList {
  constructor(list, { onOpen }) {
    this.list = list;
    this.onOpen = onOpen;
    this.current = null;
    this.calls = [];
    this.alerts = new Map();       // sid -> Set of alerts seen live on this page ("final_id|rule")
    this.compliance = new Map();   // sid -> {passed, alerts} | {pending: true, checked}
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

  async checkCompliance() {
    const now = Date.now();
    const due = this.calls.filter((c) => c.status === "ended").filter((c) => {
      const known = this.compliance.get(c.call_sid);
      // Not made yet (404): ask again later, less and less often (a call may never get a batch pass).
      return !known || (known.pending && now - known.checked > Math.min(COMPLIANCE_RECHECK_MS * 2 ** known.tries, 600000));
    }).slice(0, COMPLIANCE_PER_REFRESH);
    let changed = false;
    for (const c of due) {
      try {
        const report = await getJSON(`/calls/${encodeURIComponent(c.call_sid)}/compliance`);
        this.compliance.set(c.call_sid, { passed: !!report.passed, alerts: (report.alerts || []).length });
        changed = true;
      } catch (e) {
        if (e instanceof AuthError) return;
        const tries = (this.compliance.get(c.call_sid)?.tries ?? -1) + 1;
        this.compliance.set(c.call_sid, { pending: true, checked: now, tries, missing: e instanceof HttpError && e.status === 404 });
      }
    }
    if (changed) this.render();
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
      if (known && !known.pending) {
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
