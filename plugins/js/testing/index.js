// fluxgate-plugin/testing: runs a plugin's exports under Node the way the gateway calls
// them — init with a JSON config, only the hooks init declared, the stash carried from
// onRequest to onResponse, and the gateway's rules enforced on every edit (a broken
// rule throws an Error naming it, where the gateway would fail the call).
//
//   import * as plugin from '../canary.js';
//   import { load, request, response } from '../../js/testing/index.js';
//   const p = load(plugin, { share: 1 });
//   const req = request({ path: '/x', headers: { 'x-user-id': 'u1' } });
//   p.onRequest(req);                       // the action; edits are applied to req
//   assert.equal(req.headerText('x-canary'), '1');
//
// Run with `node --import <helper>/testing/register.js --test`.
import { state } from './fake-host.js';

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const RESERVED = new Set(['content-length', 'transfer-encoding', 'connection', 'keep-alive', 'upgrade', 'te', 'trailer', 'proxy-connection']);
const MAX_FIELDS = 256;
const MAX_HEADER_BYTES = 64 * 1024;
const MAX_STASH = 4096;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function rule(message) {
  throw new Error(`plugin broke a rule: ${message}`);
}

function bytes(value) {
  if (typeof value === 'string') return encoder.encode(value);
  if (value instanceof Uint8Array) return value;
  rule(`expected bytes, got ${typeof value}`);
}

function checkName(name) {
  if (!TOKEN.test(name)) rule(`header name ${JSON.stringify(name)} is not an HTTP token`);
  const lower = name.toLowerCase();
  if (RESERVED.has(lower)) rule(`header ${lower} is the gateway's: framing and connection headers cannot be edited`);
  return lower;
}

function checkValue(name, value) {
  for (const b of value) {
    if ((b < 0x20 && b !== 0x09) || b === 0x7f) rule(`the value of header ${name} holds a control character (CR, LF, NUL, ...)`);
  }
  return Uint8Array.from(value);
}

/** Headers as an ordered list of [lower-case name, bytes], with the gateway's bounds. */
class Fields {
  constructor(init) {
    const entries = Array.isArray(init) ? init : Object.entries(init ?? {});
    this.list = entries.map(([n, v]) => [n.toLowerCase(), bytes(v)]);
  }
  get(name) { const f = this.list.find(([n]) => n === name.toLowerCase()); return f ? f[1] : undefined; }
  all(name) { return this.list.filter(([n]) => n === name.toLowerCase()).map(([, v]) => v); }
  bound() {
    if (this.list.length > MAX_FIELDS) rule(`more than ${MAX_FIELDS} header fields`);
    const size = this.list.reduce((sum, [n, v]) => sum + n.length + v.length, 0);
    if (size > MAX_HEADER_BYTES) rule(`more than ${MAX_HEADER_BYTES} bytes of headers`);
  }
  set(name, value) {
    const n = checkName(name);
    const v = checkValue(n, bytes(value));
    this.list = this.list.filter(([m]) => m !== n);
    this.list.push([n, v]);
    this.bound();
  }
  append(name, value) {
    const n = checkName(name);
    this.list.push([n, checkValue(n, bytes(value))]);
    this.bound();
  }
  remove(name) {
    const n = checkName(name);
    this.list = this.list.filter(([m]) => m !== n);
  }
  text(name) { const v = this.get(name); return v === undefined ? undefined : decoder.decode(v); }
}

/** A fake of the contract's `request` resource (what a hook borrows). */
export class TestRequest {
  constructor({ method = 'GET', path = '/', query, headers = {}, clientIp = '127.0.0.1', route = 'test', params = [], body } = {}) {
    this._method = method;
    this._path = path;
    this._query = query;
    this.fields = new Fields(headers);
    this._clientIp = clientIp;
    this._route = route;
    this._params = Object.entries(Array.isArray(params) ? Object.fromEntries(params) : params);
    this._body = body === undefined ? undefined : bytes(body);
    this._stash = undefined;
    this.bodyDeclared = false;
    this.gone = false;
  }
  edit() { if (this.gone) rule('the request was edited in on-response, after it went upstream'); }
  method() { return this._method; }
  path() { return this._path; }
  query() { return this._query; }
  header(name) { return this.fields.get(name); }
  headerValues(name) { return this.fields.all(name); }
  headers() { return this.fields.list.map(([n, v]) => [n, v]); }
  clientIp() { return this._clientIp; }
  route() { return this._route; }
  param(name) { return this._params.find(([n]) => n === name)?.[1]; }
  params() { return this._params; }
  body() { return this.bodyDeclared ? this._body : undefined; }
  setHeader(name, value) { this.edit(); this.fields.set(name, value); }
  appendHeader(name, value) { this.edit(); this.fields.append(name, value); }
  removeHeader(name) { this.edit(); this.fields.remove(name); }
  setPath(path) {
    this.edit();
    if (!path.startsWith('/')) rule(`path ${JSON.stringify(path)}: must start with '/'`);
    if (/[?#\s]/.test(path)) rule(`path ${JSON.stringify(path)}: holds '?', '#' or whitespace`);
    this._path = path;
  }
  setQuery(query) {
    this.edit();
    if (query !== undefined && /[#\s]/.test(query)) rule(`query ${JSON.stringify(query)} is not a valid query`);
    this._query = query;
  }
  setBody(body) {
    this.edit();
    if (!this.bodyDeclared) rule('set-body without declaring the body in plugin-info');
    this._body = bytes(body);
  }
  stash(value) {
    this.edit();
    const v = bytes(value);
    if (v.length > MAX_STASH) rule(`a stash of ${v.length} bytes is larger than ${MAX_STASH}`);
    this._stash = Uint8Array.from(v);
  }
  stashed() { return this._stash; }
  /** For assertions: a header's first value as text. */
  headerText(name) { return this.fields.text(name); }
}

/** A fake of the contract's `response` resource. */
export class TestResponse {
  constructor({ status = 200, headers = {}, body } = {}) {
    this._status = status;
    this.fields = new Fields(headers);
    this._body = body === undefined ? undefined : bytes(body);
    this.bodyDeclared = false;
  }
  status() { return this._status; }
  setStatus(status) {
    if (!Number.isInteger(status) || status < 200 || status > 599) rule(`status ${status} is not in 200-599`);
    this._status = status;
  }
  header(name) { return this.fields.get(name); }
  headerValues(name) { return this.fields.all(name); }
  headers() { return this.fields.list.map(([n, v]) => [n, v]); }
  body() { return this.bodyDeclared ? this._body : undefined; }
  setHeader(name, value) { this.fields.set(name, value); }
  appendHeader(name, value) { this.fields.append(name, value); }
  removeHeader(name) { this.fields.remove(name); }
  setBody(body) { this._body = bytes(body); }
  headerText(name) { return this.fields.text(name); }
  bodyText() { return this._body === undefined ? undefined : decoder.decode(this._body); }
}

export function request(options) { return new TestRequest(options); }
export function response(options) { return new TestResponse(options); }

/** A direct answer's headers as {name: text} and body as text, for assertions. */
export function answer(action) {
  if (action?.tag !== 'respond') return undefined;
  const { status, headers, body } = action.val;
  return {
    status,
    headers: Object.fromEntries(headers.map(([n, v]) => [n, decoder.decode(v)])),
    body: decoder.decode(body),
  };
}

function checkAction(action) {
  if (action?.tag === 'continue') return action;
  if (action?.tag !== 'respond') rule(`onRequest returned ${JSON.stringify(action)}, not an action`);
  const { status, headers, body } = action.val;
  if (!Number.isInteger(status) || status < 200 || status > 599) rule(`status ${status} is not in 200-599`);
  const fields = new Fields([]);
  for (const [n, v] of headers) fields.append(n, v);
  bytes(body);
  return action;
}

/**
 * Initialises a plugin module's exports (`init`, `onRequest`, `onResponse`) with
 * `config` (an object, or JSON text). Throws an Error with the plugin's refusal when
 * init returns an error. The harness calls only the hooks init declared.
 */
export function load(exports, config = {}) {
  const json = typeof config === 'string' ? config : JSON.stringify(config);
  let info;
  try {
    info = exports.init(json);
  } catch (e) {
    throw new Error(`init refused the config: ${typeof e === 'string' ? e : (e?.payload ?? e?.message ?? e)}`);
  }
  return {
    info,
    /** Runs onRequest (if declared) on a TestRequest; its edits stay on `req`. */
    onRequest(req) {
      req.bodyDeclared = info.requestBody;
      state.writes = 0;
      if (!info.onRequest) return { tag: 'continue' };
      return checkAction(exports.onRequest(req));
    },
    /** Runs onResponse (if declared): `req` as it went upstream, edits on `resp`. */
    onResponse(req, resp) {
      resp.bodyDeclared = info.responseBody;
      state.writes = 0;
      if (!info.onResponse) return;
      req.gone = true;
      try {
        exports.onResponse(req, resp);
      } finally {
        req.gone = false;
      }
    },
  };
}

/** Log lines written so far ({level, message}). */
export function logs() { return state.logs; }

/** Forgets the key-value store, the logs and the clock. */
export function reset() {
  state.kv.clear();
  state.logs.length = 0;
  state.clock = 1_700_000_000_000;
  state.writes = 0;
}

/** Sets the fake clock (milliseconds since the epoch). */
export function setClock(ms) { state.clock = ms; }
