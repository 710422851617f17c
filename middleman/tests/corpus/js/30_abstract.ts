abstract class Shape {
  abstract area(): number;
  describe() {
    return `${this.constructor.name} with area ${this.area().toFixed(2)}`;
  }
}

class Circle extends Shape {
  constructor(public readonly r: number) {
    super();
  }
  area() {
    return Math.PI * this.r ** 2;
  }
}

class Rect extends Shape {
  constructor(private w: number, private h: number) {
    super();
  }
  area() {
    return this.w * this.h;
  }
}
