// {{name}}: a FluxGate plugin. It adds a header to every answer the client gets; the
// value comes from the route's config (`config = { greeting = "..." }`).
import { plugin } from './fluxgate.js';

export const { init, onRequest, onResponse } = plugin({
  init(config) {
    const greeting = config.greeting ?? 'hello from {{name}}';
    if (typeof greeting !== 'string' || /[\x00-\x08\x0a-\x1f\x7f]/.test(greeting)) {
      throw new Error('greeting must be a valid header value');
    }
    return { greeting };
  },

  onResponse(req, resp, state) {
    resp.setHeader('x-greeting', state.greeting);
  },
});
