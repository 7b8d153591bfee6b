// Small DOM and formatting helpers shared by the page's modules.

export const SPEAKER = { inbound: "Caller", outbound: "Agent" };

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** Call-clock seconds as m:ss.s */
export function clock(t) {
  const m = Math.floor(t / 60), s = (t % 60).toFixed(1).padStart(4, "0");
  return `${m}:${s}`;
}

/** A duration in seconds as 1 h 02 min, 3 min 05 s, 12 s. */
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${String(Math.floor(s / 60) % 60).padStart(2, "0")} min`;
  if (s >= 60) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${s} s`;
}

/** Unix seconds as a local date and time the way the user's locale writes it. */
export function when(unix) {
  if (!unix) return "";
  const d = new Date(unix * 1000), today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
}

/** The words of a text as the bridge's search index spells them (lower case, letters and digits). */
export function words(text) {
  return (text.toLowerCase().match(/[\p{L}\p{N}]+(?:'[\p{L}\p{N}]+)*/gu) || []);
}

/** Say something to screen-reader users without moving focus. */
export function announce(text) {
  const live = document.getElementById("announce");
  if (live) { live.textContent = ""; setTimeout(() => { live.textContent = text; }, 50); }
}
