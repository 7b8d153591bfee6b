// Talking to the bridge. The subscriber token never goes in a URL the page requests: it arrives in the
// page's fragment (/#token=…, which browsers do not send to servers), is kept in sessionStorage and
// dropped from the address bar; REST calls send it as "Authorization: Bearer", the live socket as a
// subprotocol, and downloads (recording, exports) are fetched with the header and handed to the page as
// Blob URLs, never as links carrying the token.

const TOKEN_KEY = "bridge.token";

function takeToken() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const query = new URLSearchParams(location.search);
  const given = hash.get("token") || query.get("token");  // ?token= only from old links
  if (given) sessionStorage.setItem(TOKEN_KEY, given);
  if (hash.has("token") || query.has("token")) {
    hash.delete("token"); query.delete("token");
    const q = query.toString(), h = hash.toString();
    history.replaceState(null, "", location.pathname + (q ? "?" + q : "") + (h ? "#" + h : ""));
  }
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export const token = takeToken();
const authHeaders = token ? { Authorization: "Bearer " + token } : {};
export const protocols = token ? ["bridge.live", "bridge.token." + token] : ["bridge.live"];

/** The token was refused (401/403): retrying cannot help until the page gets a new one. */
export class AuthError extends Error {
  constructor(status, reason) { super(reason); this.status = status; }
}

/** Any other failure worth showing (the endpoint is missing, the store is away…). */
export class HttpError extends Error {
  constructor(status, reason) { super(reason); this.status = status; }
}

let deniedShown = false;
/** Show why access was refused, once, with what to do about it. */
export function denied(message) {
  const box = document.getElementById("auth");
  box.textContent = `${message}. Open the dashboard again with a fresh link (…/#token=…).`;
  box.hidden = false;
  deniedShown = true;
}
export function isDenied() { return deniedShown; }

/** fetch() with the token; throws AuthError (after showing it) or HttpError; returns the Response. */
export async function request(path, init = {}) {
  const r = await fetch(path, { ...init, headers: { ...authHeaders, ...(init.headers || {}) } });
  if (r.status === 401 || r.status === 403) {
    const body = await r.json().catch(() => ({}));
    const reason = body.error || "token refused";
    denied(`Access denied (${r.status}: ${reason})`);
    throw new AuthError(r.status, reason);
  }
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    throw new HttpError(r.status, body.error || r.statusText || String(r.status));
  }
  return r;
}

export async function getJSON(path) { return (await request(path)).json(); }

/** A Blob URL of what ``path`` serves (revoke it when done). */
export async function blobUrl(path) {
  return URL.createObjectURL(await (await request(path)).blob());
}

/** Save what ``path`` serves as ``filename`` (the download carries the header, not the URL). */
export async function download(path, filename) {
  const url = await blobUrl(path);
  const a = document.createElement("a");
  a.href = url; a.download = filename; a.hidden = true;
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

/** Exponential backoff with jitter: attempt 0, 1, 2… -> ms, capped. */
export function backoff(attempt, base = 1000, cap = 30000) {
  return Math.min(base * 2 ** attempt, cap) * (0.5 + Math.random() / 2);
}
