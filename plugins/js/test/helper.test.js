// The helper and its test double: `node --import ./testing/register.js --test test/`.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';

import { plugin, Action, kv, log, nowMs } from '../fluxgate.js';
import { load, request, response, answer, reset, logs, setClock } from '../testing/index.js';

beforeEach(reset);

test('the hooks defined are the hooks declared, bodies only when asked', () => {
  const none = load(plugin({}));
  assert.deepEqual(none.info, { onRequest: false, onResponse: false, requestBody: false, responseBody: false });
  const both = load(plugin({ onRequest() {}, onResponse() {}, requestBody: true }));
  assert.deepEqual(both.info, { onRequest: true, onResponse: true, requestBody: true, responseBody: false });
});

test('init gets the parsed config and its throw is the refusal', () => {
  let seen;
  load(plugin({ init(config) { seen = config; } }), { a: [1, 2] });
  assert.deepEqual(seen, { a: [1, 2] });
  assert.throws(() => load(plugin({ init() { throw new Error('no way'); } })), /init refused the config: no way/);
});

test('requests read as text and edit in place; undefined from a hook continues', () => {
  const p = load(plugin({
    onRequest(req) {
      assert.equal(req.method(), 'POST');
      assert.equal(req.queryParam('q'), 'a b');
      assert.equal(req.cookie('session'), 'xyz');
      assert.equal(req.header('X-Key'), 'k');
      assert.equal(req.bodyText(), '{"n":1}');
      req.setHeader('x-seen', 'yes');
      req.setPath('/rewritten');
      req.stash('from-request');
    },
    onResponse(req, resp) {
      resp.setHeader('x-stashed', req.stashedText());
      resp.setStatus(201);
    },
    requestBody: true,
  }));
  const req = request({ method: 'POST', path: '/p', query: 'q=a%20b', headers: { 'x-key': 'k', cookie: 'a=1; session=xyz' }, body: '{"n":1}' });
  assert.equal(p.onRequest(req).tag, 'continue');
  assert.equal(req.headerText('x-seen'), 'yes');
  assert.equal(req.path(), '/rewritten');
  const resp = response();
  p.onResponse(req, resp);
  assert.equal(resp.headerText('x-stashed'), 'from-request');
  assert.equal(resp.status(), 201);
});

test('actions carry status, headers and body', () => {
  const p = load(plugin({ onRequest: () => Action.error(401, 'unauthorized', 'no key') }));
  const a = answer(p.onRequest(request()));
  assert.equal(a.status, 401);
  assert.equal(a.headers['content-type'], 'application/json');
  assert.deepEqual(JSON.parse(a.body), { error: 'unauthorized', message: 'no key', status: 401 });
});

test("the gateway's rules are enforced like the gateway does", () => {
  const edit = (fn) => () => load(plugin({ onRequest: fn })).onRequest(request());
  assert.throws(edit((req) => req.setHeader('content-length', '1')), /is the gateway's/);
  assert.throws(edit((req) => req.setHeader('x-a', 'a\r\nb')), /control character/);
  assert.throws(edit((req) => req.setHeader('bad name', 'v')), /not an HTTP token/);
  assert.throws(edit((req) => req.setPath('relative')), /must start with '\/'/);
  assert.throws(edit((req) => req.stash('x'.repeat(4097))), /larger than 4096/);
  assert.throws(edit((req) => req.setBody('b')), /without declaring the body/);
  assert.throws(edit(() => Action.text(101, 'x')), /not in 200-599/);
  const late = load(plugin({ onResponse: (req) => req.setHeader('x-late', '1') }));
  assert.throws(() => late.onResponse(request(), response()), /after it went upstream/);
});

test('kv, log and the clock go to the fake host', () => {
  const p = load(plugin({
    onRequest() {
      kv.set('k', 'v', 1000);
      log.info(`count ${kv.incr('n', 2)}`);
    },
  }));
  p.onRequest(request());
  assert.equal(kv.getString('k'), 'v');
  assert.equal(kv.getString('n'), '2');
  assert.deepEqual(logs(), [{ level: 'info', message: 'count 2' }]);
  setClock(nowMs() + 1001);
  assert.equal(kv.get('k'), undefined, 'expired');
  const flood = load(plugin({ onRequest() { for (let i = 0; i < 65; i += 1) kv.set(`k${i}`, 'v'); } }));
  assert.throws(() => flood.onRequest(request()), /more than 64 writes/);
});
