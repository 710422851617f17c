// Module resolution hook for the runner's VU threads: maps k6's built-in modules to the
// implementations next to this file. Any other `k6/...` module is not implemented here.
const MODULES = {
  k6: 'k6.mjs',
  'k6/metrics': 'metrics.mjs',
  'k6/net/grpc': 'grpc.mjs',
  'k6/websockets': 'websockets.mjs',
  'k6/experimental/websockets': 'websockets.mjs',
  'k6/timers': 'timers.mjs',
  'k6/execution': 'execution.mjs',
};

export async function resolve(specifier, context, next) {
  if (specifier === 'k6' || specifier.startsWith('k6/')) {
    const file = MODULES[specifier];
    if (!file) {
      throw new Error(`module ${specifier} is not implemented by loadtest/k6/run.mjs`);
    }
    return { url: new URL(file, import.meta.url).href, shortCircuit: true };
  }
  return next(specifier, context);
}
