const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

const timings = await mapPool(YEARS.slice(), 2, async (year) => {
  const started = performance.now();
  await sleep(10);
  return { year, took: performance.now() - started };
});
timings;
