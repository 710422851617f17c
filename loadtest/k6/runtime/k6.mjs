// `k6`: check, group, sleep, fail.
import { emit } from './context.mjs';

export function check(value, sets, tags = {}) {
  let all = true;
  for (const [name, test] of Object.entries(sets)) {
    const ok = Boolean(typeof test === 'function' ? test(value) : test);
    emit('checks', 'rate', ok ? 1 : 0, { ...tags, check: name }, 'default');
    all &&= ok;
  }
  return all;
}

export function group(name, fn) {
  return fn();
}

// k6's sleep blocks the VU; here it returns a promise, which `await sleep(x)` handles in both.
export function sleep(seconds) {
  return new Promise((resolve) => setTimeout(resolve, seconds * 1000));
}

export function fail(message) {
  throw new Error(message);
}

export default { check, group, sleep, fail };
