// fluxgate-plugin: the JavaScript helper for FluxGate plugins (contract
// fluxgate:plugin@0.2, built with componentize-js). It makes the hooks feel native:
// strings instead of byte arrays, hooks declared by defining them, actions as values.
//
//   import { plugin, Action } from './fluxgate.js';
//   export const { init, onRequest, onResponse } = plugin({
//     init(config) { return { tag: config.tag ?? 'a' }; },      // your state
//     onRequest(req, state) { req.setHeader('x-tag', state.tag); },
//   });
//
// componentize-js builds the module into a component; `testing/` runs it under Node.
import * as host from 'fluxgate:plugin/host@0.2.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A string or bytes as the bytes the contract carries. */
export function toBytes(value) {
  if (typeof value === 'string') return encoder.encode(value);
  if (value instanceof Uint8Array) return value;
  if (Array.isArray(value)) return Uint8Array.from(value);
  throw new TypeError(`expected a string or bytes, got ${typeof value}`);
}

/** Bytes as text (UTF-8, lossy); undefined stays undefined. */
export function toText(bytes) {
  return bytes === undefined || bytes === null ? undefined : decoder.decode(bytes);
}

/** The request a hook borrows: reads and edits go to the gateway's own request. */
export class Request {
  constructor(raw) { this.raw = raw; }
  method() { return this.raw.method(); }
  path() { return this.raw.path(); }
  /** The raw query string without '?', or undefined. */
  query() { return this.raw.query() ?? undefined; }
  /** One query parameter, percent-decoded, or undefined. */
  queryParam(name) {
    const query = this.query();
    return query === undefined ? undefined : (new URLSearchParams(query).get(name) ?? undefined);
  }
  /** The first value of a header as text (name in any case), or undefined. */
  header(name) { return toText(this.raw.header(name)); }
  headerBytes(name) { return this.raw.header(name) ?? undefined; }
  headerValues(name) { return this.raw.headerValues(name).map(toText); }
  hasHeader(name) { return this.raw.header(name) !== undefined && this.raw.header(name) !== null; }
  /** Every header as [name, text]; copies all of them, so prefer `header`. */
  headers() { return this.raw.headers().map(([n, v]) => [n, toText(v)]); }
  /** A cookie of the Cookie header, or undefined. */
  cookie(name) {
    for (const value of this.headerValues('cookie')) {
      for (const part of value.split(';')) {
        const eq = part.indexOf('=');
        if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
      }
    }
    return undefined;
  }
  clientIp() { return this.raw.clientIp(); }
  route() { return this.raw.route(); }
  param(name) { return this.raw.param(name) ?? undefined; }
  params() { return this.raw.params(); }
  /** The body (declare `requestBody: true`), or undefined. */
  body() { return this.raw.body() ?? undefined; }
  bodyText() { return toText(this.body()); }
  bodyJson() { const t = this.bodyText(); return t === undefined ? undefined : JSON.parse(t); }
  setHeader(name, value) { this.raw.setHeader(name, toBytes(value)); }
  appendHeader(name, value) { this.raw.appendHeader(name, toBytes(value)); }
  removeHeader(name) { this.raw.removeHeader(name); }
  setPath(path) { this.raw.setPath(path); }
  /** Replaces the query (without '?'); undefined removes it. */
  setQuery(query) { this.raw.setQuery(query); }
  setBody(body) { this.raw.setBody(toBytes(body)); }
  /** Keeps a value (at most 4 KiB) for this plugin's onResponse of the same request. */
  stash(value) { this.raw.stash(toBytes(value)); }
  stashed() { return this.raw.stashed() ?? undefined; }
  stashedText() { return toText(this.stashed()); }
}

/** The answer an onResponse hook borrows. */
export class Response {
  constructor(raw) { this.raw = raw; }
  status() { return this.raw.status(); }
  setStatus(status) { this.raw.setStatus(status); }
  header(name) { return toText(this.raw.header(name)); }
  headerValues(name) { return this.raw.headerValues(name).map(toText); }
  headers() { return this.raw.headers().map(([n, v]) => [n, toText(v)]); }
  body() { return this.raw.body() ?? undefined; }
  bodyText() { return toText(this.body()); }
  setHeader(name, value) { this.raw.setHeader(name, toBytes(value)); }
  appendHeader(name, value) { this.raw.appendHeader(name, toBytes(value)); }
  removeHeader(name) { this.raw.removeHeader(name); }
  setBody(body) { this.raw.setBody(toBytes(body)); }
  setJson(value) {
    this.setHeader('content-type', 'application/json');
    this.setBody(JSON.stringify(value));
  }
}

function headerList(headers) {
  const entries = Array.isArray(headers) ? headers : Object.entries(headers ?? {});
  return entries.map(([name, value]) => [name.toLowerCase(), toBytes(value)]);
}

/** What onRequest returns: go on (also returning nothing), or answer now. */
export const Action = {
  continue() { return { tag: 'continue' }; },
  /** Answers with `body` (string or bytes) and headers ({name: value} or [[name, value]]). */
  respond(status, body = '', headers = {}) {
    return { tag: 'respond', val: { status, headers: headerList(headers), body: toBytes(body) } };
  },
  text(status, text, headers = {}) {
    return Action.respond(status, text, [['content-type', 'text/plain; charset=utf-8'], ...headerList(headers)]);
  },
  json(status, value, headers = {}) {
    return Action.respond(status, JSON.stringify(value), [['content-type', 'application/json'], ...headerList(headers)]);
  },
  /** The gateway's error shape: {"error", "message", "status"}. */
  error(status, error, message) { return Action.json(status, { error, message, status }); },
};

/** Log lines, tagged with the plugin's name by the gateway (16 per call, 4 KiB each). */
export const log = Object.fromEntries(
  ['trace', 'debug', 'info', 'warn', 'error'].map((level) => [level, (message) => host.log(level, String(message))]),
);

function refusal(e) {
  return new Error(typeof e === 'string' ? e : (e?.payload ?? e?.message ?? String(e)));
}

const ttl = (ms) => (ms === undefined || ms === null ? undefined : BigInt(ms));

/** The plugin's key-value store, shared by its instances in one gateway process. */
export const kv = {
  get(key) { return host.kvGet(key) ?? undefined; },
  getString(key) { return toText(host.kvGet(key) ?? undefined); },
  /** Throws when the store refuses (key or value too long, too many writes). */
  set(key, value, ttlMs) {
    try { host.kvSet(key, toBytes(value), ttl(ttlMs)); } catch (e) { throw refusal(e); }
  },
  delete(key) { return host.kvDelete(key); },
  /** Adds `delta` atomically; the new value as a Number. */
  incr(key, delta = 1, ttlMs) {
    try { return Number(host.kvIncr(key, BigInt(delta), ttl(ttlMs))); } catch (e) { throw refusal(e); }
  },
};

/** Wall-clock milliseconds since the Unix epoch. */
export function nowMs() { return Number(host.nowMs()); }

/**
 * Turns a plugin definition into the contract's exports:
 * `{ init?(config) -> state, onRequest?(req, state) -> Action | undefined,
 *    onResponse?(req, resp, state), requestBody?: bool, responseBody?: bool }`.
 * The hooks defined are the hooks declared (the gateway calls exactly those); a throw
 * in `init` rejects the config with its message; a throw in a hook traps the call
 * (the gateway answers per `plugins.on_error`).
 */
export function plugin(definition) {
  let state;
  const onRequest = typeof definition.onRequest === 'function';
  const onResponse = typeof definition.onResponse === 'function';
  return {
    init(configJson) {
      try {
        const config = JSON.parse(configJson);
        state = definition.init ? definition.init(config) : config;
      } catch (e) {
        // componentize-js makes a thrown string the `err` of the result.
        throw refusal(e).message;
      }
      return {
        onRequest,
        onResponse,
        requestBody: Boolean(definition.requestBody),
        responseBody: Boolean(definition.responseBody),
      };
    },
    onRequest(raw) {
      if (!onRequest) return Action.continue();
      return definition.onRequest(new Request(raw), state) ?? Action.continue();
    },
    onResponse(rawRequest, rawResponse) {
      if (onResponse) definition.onResponse(new Request(rawRequest), new Response(rawResponse), state);
    },
  };
}
