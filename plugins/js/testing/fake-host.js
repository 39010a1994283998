// The host imports of fluxgate:plugin@0.2 in memory: a key-value store with TTLs, a
// settable clock, captured log lines. The harness (index.js) reads and resets them.
export const state = { kv: new Map(), logs: [], clock: 1_700_000_000_000, writes: 0 };

const MAX_KEY = 1024;
const MAX_VALUE = 64 * 1024;
const MAX_WRITES = 64;

function live(key) {
  const entry = state.kv.get(key);
  if (entry && entry.expires !== undefined && entry.expires <= state.clock) {
    state.kv.delete(key);
    return undefined;
  }
  return entry;
}

function write(key, value) {
  if (key.length > MAX_KEY) throw `key longer than ${MAX_KEY} bytes`;
  if (value.length > MAX_VALUE) throw `value longer than ${MAX_VALUE} bytes`;
  state.writes += 1;
  if (state.writes > MAX_WRITES) throw `more than ${MAX_WRITES} writes in one hook call`;
}

export function log(level, message) {
  state.logs.push({ level, message: String(message).slice(0, 4096) });
}

export function kvGet(key) {
  return live(key)?.value;
}

export function kvSet(key, value, ttlMs) {
  write(key, value);
  state.kv.set(key, { value: Uint8Array.from(value), expires: ttlMs === undefined ? undefined : state.clock + Number(ttlMs) });
}

export function kvDelete(key) {
  const found = live(key) !== undefined;
  state.kv.delete(key);
  return found;
}

export function kvIncr(key, delta, ttlMs) {
  const entry = live(key);
  const current = entry ? Number(new TextDecoder().decode(entry.value)) || 0 : 0;
  const next = current + Number(delta);
  const value = new TextEncoder().encode(String(next));
  write(key, value);
  const expires = entry ? entry.expires : (ttlMs === undefined ? undefined : state.clock + Number(ttlMs));
  state.kv.set(key, { value, expires });
  return BigInt(next);
}

export function nowMs() {
  return BigInt(state.clock);
}
