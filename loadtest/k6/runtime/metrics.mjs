// `k6/metrics`: custom Counter, Gauge, Rate and Trend metrics.
import { emit } from './context.mjs';

class Metric {
  constructor(name, type, isTime = false) {
    if (!/^[a-zA-Z_][a-zA-Z0-9_]{0,127}$/.test(name)) throw new Error(`bad metric name ${name}`);
    this.name = name;
    this.type = type;
    this.contains = isTime ? 'time' : 'default';
    // Declared, so that a metric without samples still has a type (a Counter counts 0).
    emit(name, type, null, {}, this.contains);
  }
  add(value, tags = {}) {
    const v = this.type === 'rate' ? (value ? 1 : 0) : Number(value);
    emit(this.name, this.type, v, tags, this.contains);
  }
}

export class Counter extends Metric {
  constructor(name, isTime) {
    super(name, 'counter', isTime);
  }
}
export class Gauge extends Metric {
  constructor(name, isTime) {
    super(name, 'gauge', isTime);
  }
}
export class Rate extends Metric {
  constructor(name) {
    super(name, 'rate');
  }
}
export class Trend extends Metric {
  constructor(name, isTime) {
    super(name, 'trend', isTime);
  }
}
export default { Counter, Gauge, Rate, Trend };
