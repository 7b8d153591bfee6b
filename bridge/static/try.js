// /try: the microphone as a call. Captures with an AudioWorklet (capture-worklet.js: 8 kHz mu-law,
// 20 ms frames) over WS /browser/media, then follows the call's live feed like the dashboard does.
//
// A capture token (bridge token --capture) arrives in the fragment (/try#token=…, never sent to a
// server), is kept in sessionStorage and goes out only as a WebSocket subprotocol. The server answers
// with the call's own read token, used for the live feed and the Commit button.

const TOKEN_KEY = "bridge.capture-token";
const OPTIONS = ["recognizer", "language", "endpointing", "utterance_end", "keyterms", "redact"];
const $ = (id) => document.getElementById(id);
const state = { ws: null, live: null, ctx: null, media: null, node: null, callSid: "", readToken: "", lastSeq: 0, partial: null };

function takeToken() {
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, hash.get("token"));
    hash.delete("token");
    const h = hash.toString();
    history.replaceState(null, "", location.pathname + location.search + (h ? "#" + h : ""));
  }
  return sessionStorage.getItem(TOKEN_KEY) || "";
}
const captureToken = takeToken();

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function status(text) { $("status").textContent = text; }

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

function setRunning(running) {
  $("start").disabled = running;
  $("stop").disabled = !running;
  $("commit").disabled = !running || !state.callSid;
}

// Why getUserMedia failed, in words a user can act on.
function micError(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone permission denied: allow the microphone for this site and press Start again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone found: connect one and press Start again.";
    case "NotReadableError":
      return "The microphone is busy or unavailable (another application may be using it).";
    default:
      return `Cannot use the microphone: ${(err && err.message) || err}`;
  }
}

function line(ev, cls) {
  const row = el("div", `line ${ev.track} ${cls}`);
  row.append(el("span", "time", fmt(ev.start || 0)), el("span", "who", "You"), el("span", "text", ev.text));
  return row;
}

function onEvent(ev) {
  const box = $("transcript");
  if (ev.type === "final") {
    if (ev.seq && ev.seq <= state.lastSeq) return;
    state.lastSeq = ev.seq || state.lastSeq;
    const row = line(ev, "final");
    if (state.partial) { state.partial.replaceWith(row); state.partial = null; } else box.append(row);
  } else if (ev.type === "partial") {
    const row = line(ev, "partial");
    if (state.partial) state.partial.replaceWith(row); else box.append(row);
    state.partial = row;
  } else if (ev.type === "utterance_end") {
    if (state.partial) { state.partial.remove(); state.partial = null; }
  } else if (ev.type === "recognizer_status") {
    status(`recognizer: ${ev.state}${ev.detail ? " (" + ev.detail + ")" : ""}`);
  } else if (ev.type === "call_ended") {
    box.append(el("div", "notice", `Call ended (${ev.reason || "stop"}), ${Math.round(ev.duration || 0)} s`));
    if (state.live) state.live.close(1000);
  }
}

function follow() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const protocols = state.readToken ? ["bridge.live", "bridge.token." + state.readToken] : ["bridge.live"];
  const url = `${proto}//${location.host}/calls/${encodeURIComponent(state.callSid)}/live?after=${state.lastSeq}`;
  const live = new WebSocket(url, protocols);
  state.live = live;
  live.onmessage = (m) => onEvent(JSON.parse(m.data));
  live.onclose = (e) => {
    if (state.live !== live) return;
    state.live = null;
    if (e.code >= 4000) showError(`The live transcript was refused (${e.code}: ${e.reason})`);
    else if (state.ws && e.code !== 1000) setTimeout(() => { if (!state.live && state.callSid) follow(); }, 1000);
  };
}

function stopAudio() {
  if (state.node) { state.node.port.postMessage("stop"); state.node.disconnect(); state.node = null; }
  if (state.media) { for (const t of state.media.getTracks()) t.stop(); state.media = null; }
  if (state.ctx) { state.ctx.close(); state.ctx = null; }
  $("level").value = 0;
}

// Browsers may keep audio suspended until the user interacts with the page (autoplay policy; an
// autostarted kiosk page has had no click yet): then the first click anywhere starts it.
async function resumeAudio() {
  const ctx = state.ctx;
  if (ctx.state !== "suspended") return;
  await Promise.race([ctx.resume(), new Promise((r) => setTimeout(r, 500))]);
  if (ctx.state === "running") return;
  showError("The browser holds the microphone's audio until you click: click anywhere on the page.");
  document.addEventListener("click", () => {
    if (state.ctx === ctx) ctx.resume().then(() => showError(""));
  }, { once: true });
}

async function start() {
  showError("");
  // A new capture is a new call: forget the last one (its live feed, its transcript).
  if (state.live) { const old = state.live; state.live = null; old.close(1000); }
  Object.assign(state, { callSid: "", readToken: "", lastSeq: 0, partial: null });
  delete document.body.dataset.callSid;
  $("call").textContent = "";
  $("transcript").replaceChildren();
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.AudioWorkletNode) {
    showError("This browser cannot capture here: the microphone needs https (or localhost) and AudioWorklet support.");
    return;
  }
  setRunning(true);
  status("asking for the microphone…");
  try {
    state.media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
  } catch (err) {
    setRunning(false);
    status("stopped");
    showError(micError(err));
    return;
  }
  try {
    state.ctx = new AudioContext();
    await state.ctx.audioWorklet.addModule("/try/capture-worklet.js");
    const source = state.ctx.createMediaStreamSource(state.media);
    state.node = new AudioWorkletNode(state.ctx, "mulaw-capture", { numberOfInputs: 1, numberOfOutputs: 1 });
    const mute = state.ctx.createGain();
    mute.gain.value = 0; // pulled by the destination so the worklet runs; nothing is played back
    source.connect(state.node).connect(mute).connect(state.ctx.destination);
    await resumeAudio();
  } catch (err) {
    stopAudio();
    setRunning(false);
    showError(`Cannot start audio capture: ${err.message || err}`);
    return;
  }
  connect();
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const protocols = captureToken ? ["bridge.capture", "bridge.token." + captureToken] : ["bridge.capture"];
  // The call's options (as a Twilio stream's <Parameter>s), from this page's query: /try?language=es
  const page = new URLSearchParams(location.search);
  const options = new URLSearchParams();
  for (const name of OPTIONS) if (page.has(name)) options.set(name, page.get(name));
  const query = options.toString() ? "?" + options.toString() : "";
  const ws = new WebSocket(`${proto}//${location.host}/browser/media${query}`, protocols);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  status("connecting…");
  state.node.port.onmessage = (e) => {
    $("level").value = Math.max(0, Math.min(1, (20 * Math.log10(e.data.level + 1e-9) + 60) / 60));
    if (ws.readyState === WebSocket.OPEN && state.callSid) ws.send(e.data.frame);
  };
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type !== "started") return;
    state.callSid = msg.call_sid;
    state.readToken = msg.token || "";
    document.body.dataset.callSid = msg.call_sid;
    $("call").textContent = msg.call_sid;
    status("listening");
    setRunning(true);
    follow();
  };
  ws.onclose = (e) => {
    state.ws = null;
    stopAudio();
    setRunning(false);
    $("commit").disabled = true;
    if (e.code === 1000) status("stopped");
    else {
      status(`stopped (${e.code})`);
      showError(`The server ${state.callSid ? "ended" : "refused"} the capture (${e.code}${e.reason ? ": " + e.reason : ""})`);
    }
  };
}

function stop() {
  if (state.node) state.node.port.onmessage = null; // no audio after stop
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify({ type: "stop" }));
  else stopAudio();
  $("stop").disabled = true;
}

async function commit() {
  const headers = { "Content-Type": "application/json" };
  if (state.readToken) headers.Authorization = "Bearer " + state.readToken;
  const r = await fetch(`/calls/${encodeURIComponent(state.callSid)}/commit`, {
    method: "POST", headers, body: JSON.stringify({ track: "inbound" }),
  });
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    showError(`Commit refused (${r.status}: ${body.error || r.statusText})`);
  }
}

$("start").onclick = start;
$("stop").onclick = stop;
$("commit").onclick = commit;
if (new URLSearchParams(location.search).get("autostart") === "1") start();
