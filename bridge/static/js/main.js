// The agent-assist page: wires the calls list, the live view, the post-call review and search.

import { AuthError, getJSON } from "./api.js";
import { CallList } from "./calls.js";
import { duration, el, when } from "./dom.js";
import { LiveView } from "./live.js";
import { Review } from "./review.js";
import { Search } from "./search.js";

const callPane = document.getElementById("call");
const review = new Review(document.getElementById("review"));
const calls = new CallList(document.getElementById("calls"), { onOpen: (sid) => openCall(sid) });
const live = new LiveView(callPane, {
  onStarted: () => calls.refresh(),
  onEnded: () => { calls.refresh(); if (live.sid) review.show(live.sid); },
  onAlert: (ev) => calls.noteAlert(ev),
});
new Search(document.getElementById("search"), document.getElementById("search-results"), {
  onOpen: (sid, segment) => openCall(sid, segment),
});

async function openCall(sid, segment = null) {
  calls.select(sid);
  review.clear();
  document.getElementById("title").textContent = sid;
  document.getElementById("details").textContent = "";
  history.replaceState(null, "", `?call=${encodeURIComponent(sid)}`);
  document.body.classList.add("has-call");
  live.open(sid, segment ? segment.seq : 0);
  try {
    const info = await getJSON(`/calls/${encodeURIComponent(sid)}`);
    if (live.sid !== sid) return;
    const span = info.status === "ended" ? ` · ${duration(info.ended_at - info.started_at)}` : "";
    document.getElementById("details").textContent =
      `${info.from_number || "unknown"} → ${info.to_number || "unknown"} · ${when(info.started_at)}${span}`;
    live.setCommit(info.status === "active");
    if (info.status === "ended") review.show(sid);
  } catch (e) {
    if (!(e instanceof AuthError)) document.getElementById("details").append(el("span", "pending", ` (${e.message})`));
  }
}

document.getElementById("back").addEventListener("click", () => {
  document.body.classList.remove("has-call");
  document.querySelector("#calls li.selected button")?.focus();
});

// "/" jumps to the search box from anywhere but a text field (as on many sites).
document.addEventListener("keydown", (e) => {
  if (e.key !== "/" || e.ctrlKey || e.metaKey || e.altKey || e.target.closest?.("input, textarea, [contenteditable]")) return;
  e.preventDefault();
  document.getElementById("q").focus();
});

calls.start();
const wanted = new URLSearchParams(location.search).get("call");
if (wanted) openCall(wanted);
