let runs = 0;
function track<A extends unknown[], R>(fn: (...args: A) => R): (...args: A) => R {
  return (...args) => {
    runs++;
    if (verbose) console.log(`call #${runs}`, args);
    return fn(...args);
  };
}
