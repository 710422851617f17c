function logged(target: (...args: any[]) => any, context: ClassMethodDecoratorContext) {
  return function (this: unknown, ...args: any[]) {
    if (verbose) console.log(`-> ${String(context.name)}`);
    return target.apply(this, args);
  };
}

class Report {
  constructor(private rows: Sale[]) {}
  @logged
  total() {
    return d3.sum(this.rows, (r) => r.units * r.price);
  }
}
new Report(sales).total();
