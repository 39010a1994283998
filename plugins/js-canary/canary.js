// js-canary: sends a share of users to a canary upstream, FluxGate's way.
//
// Routing happens before plugins run (docs/ROUTING.md), so the plugin does not pick the
// upstream itself: two routes with the same path do, one of them per-user on the canary
// marks, e.g.
//
//   [[routes]]                           # stable
//   path = "/app/*"
//   upstream = "stable"
//   plugins = [{ name = "js-canary", config = { share = 0.1 } }]
//   [[routes]]                           # canary: requests carrying a mark
//   path = "/app/*"
//   upstream = "canary"
//   users = ["1"]
//   user_id_key = ["header:x-canary", "cookie:canary"]
//   plugins = [{ name = "js-canary", config = { share = 0.1 } }]
//
// A request with `x-canary: 1` (a tester's opt-in) or the `canary=1` cookie goes to
// the canary route. For the others the plugin decides once per user: a stable hash of
// the user key (a header, else the client address) below `share` puts the user in the
// canary, and the answer sets the cookie, so the user's next requests go there. Every
// answer says which side served it (`x-canary: 1` or `0`), and the canary's upstream
// gets `x-canary: 1`.
import { plugin } from '../js/fluxgate.js';

/** FNV-1a of a string, as a bucket in 0..9999: stable across instances and restarts. */
export function bucket(key) {
  let hash = 0x811c9dc5;
  for (let i = 0; i < key.length; i += 1) {
    hash ^= key.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash % 10000;
}

const NAME = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/;

export const { init, onRequest, onResponse } = plugin({
  init(config) {
    const share = config.share ?? 0;
    if (typeof share !== 'number' || !(share >= 0 && share <= 1)) {
      throw new Error(`share must be a number in 0..1, got ${JSON.stringify(config.share)}`);
    }
    const settings = {
      share,
      header: (config.header ?? 'x-canary').toLowerCase(),
      cookie: config.cookie ?? 'canary',
      key: config.key === undefined ? undefined : String(config.key).toLowerCase(),
      maxAge: config.max_age_s ?? 86400,
    };
    if (!NAME.test(settings.header) || (settings.key !== undefined && !NAME.test(settings.key))) {
      throw new Error('header and key must be header names');
    }
    if (!/^[A-Za-z0-9_-]+$/.test(settings.cookie)) {
      throw new Error('cookie must be letters, digits, - or _');
    }
    return settings;
  },

  onRequest(req, s) {
    const marked = req.header(s.header) === '1' || req.cookie(s.cookie) === '1';
    if (marked) {
      req.setHeader(s.header, '1');
      req.stash('canary');
      return;
    }
    const key = (s.key && req.header(s.key)) || req.clientIp();
    req.stash(bucket(key) < s.share * 10000 ? 'assign' : 'stable');
  },

  onResponse(req, resp, s) {
    const side = req.stashedText();
    resp.setHeader(s.header, side === 'canary' ? '1' : '0');
    if (side === 'assign') {
      resp.appendHeader('set-cookie', `${s.cookie}=1; Path=/; Max-Age=${s.maxAge}; HttpOnly`);
    }
  },
});
