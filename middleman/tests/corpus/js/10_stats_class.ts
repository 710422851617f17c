class RunningStats {
  #n = 0;
  #mean = 0;
  #m2 = 0;

  push(x: number): this {
    this.#n += 1;
    const delta = x - this.#mean;
    this.#mean += delta / this.#n;
    this.#m2 += delta * (x - this.#mean);
    return this;
  }

  get mean() {
    return this.#mean;
  }

  get variance() {
    return this.#n > 1 ? this.#m2 / (this.#n - 1) : NaN;
  }

  static of(values: Iterable<number>): RunningStats {
    const s = new RunningStats();
    for (const v of values) s.push(v);
    return s;
  }
}
