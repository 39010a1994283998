// Module resolution hook: the contract's host import → fake-host.js.
const FAKE = new URL('./fake-host.js', import.meta.url).href;

export async function resolve(specifier, context, next) {
  if (specifier.startsWith('fluxgate:plugin/host')) {
    return { url: FAKE, shortCircuit: true };
  }
  return next(specifier, context);
}
