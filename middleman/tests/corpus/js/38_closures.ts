function makeCounter(start = 0) {
  let count = start;
  return {
    inc: () => ++count,
    reset() {
      count = start;
    },
    get value() {
      return count;
    },
  };
}
const counter = makeCounter(5);
counter.inc();
