// `npm test`: the plugin under Node, through the helper's test double (the gateway's
// rules enforced, only the declared hooks called).
import { test } from 'node:test';
import assert from 'node:assert/strict';

import * as plugin from './plugin.js';
import { load, request, response } from './fluxgate-testing/index.js';

test('every answer gets the greeting', () => {
  const p = load(plugin, { greeting: 'hi' });
  const req = request({ path: '/anything' });
  p.onRequest(req);
  const resp = response({ status: 200 });
  p.onResponse(req, resp);
  assert.equal(resp.headerText('x-greeting'), 'hi');
  assert.throws(() => load(plugin, { greeting: 'a\nb' }), /valid header value/);
});
