// js-canary's own tests, under Node with the helper's test double:
//   node --import ../js/testing/register.js --test test/
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';

import * as canary from '../canary.js';
import { load, request, response, reset } from '../../js/testing/index.js';

beforeEach(reset);

function run(p, options) {
  const req = request(options);
  const action = p.onRequest(req);
  const resp = response({ status: 200 });
  p.onResponse(req, resp);
  return { action, req, resp };
}

test('declares both hooks and no bodies', () => {
  const p = load(canary, { share: 0.5 });
  assert.deepEqual(p.info, { onRequest: true, onResponse: true, requestBody: false, responseBody: false });
});

test('a marked request is the canary and says so', () => {
  const p = load(canary, { share: 0 });
  for (const options of [{ headers: { 'x-canary': '1' } }, { headers: { cookie: 'a=b; canary=1' } }]) {
    const { action, req, resp } = run(p, options);
    assert.equal(action.tag, 'continue');
    assert.equal(req.headerText('x-canary'), '1');
    assert.equal(resp.headerText('x-canary'), '1');
    assert.equal(resp.headerText('set-cookie'), undefined);
  }
});

test('share 1 assigns every user with a cookie; share 0 none', () => {
  const all = run(load(canary, { share: 1 }), { clientIp: '10.1.2.3' });
  assert.equal(all.resp.headerText('x-canary'), '0');
  assert.match(all.resp.headerText('set-cookie'), /^canary=1; Path=\/; Max-Age=86400/);
  const none = run(load(canary, { share: 0 }), { clientIp: '10.1.2.3' });
  assert.equal(none.resp.headerText('set-cookie'), undefined);
  assert.equal(none.resp.headerText('x-canary'), '0');
});

test('the share holds over many users and a user always lands on the same side', () => {
  const p = load(canary, { share: 0.2, key: 'x-user-id' });
  let assigned = 0;
  for (let i = 0; i < 2000; i += 1) {
    const headers = { 'x-user-id': `user-${i}` };
    const first = run(p, { headers }).resp.headerText('set-cookie') !== undefined;
    const again = run(p, { headers }).resp.headerText('set-cookie') !== undefined;
    assert.equal(first, again, `user-${i} changed sides`);
    if (first) assigned += 1;
  }
  assert.ok(assigned > 330 && assigned < 470, `assigned ${assigned} of 2000 at share 0.2`);
});

test('a bad config is refused with its reason', () => {
  assert.throws(() => load(canary, { share: 2 }), /share must be a number in 0..1/);
  assert.throws(() => load(canary, { share: 0.1, header: 'bad header' }), /header names/);
  assert.throws(() => load(canary, { share: 0.1, cookie: 'a;b' }), /cookie must be/);
});
