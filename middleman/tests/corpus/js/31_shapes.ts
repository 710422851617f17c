const shapes: Shape[] = [new Circle(1), new Rect(2, 3), new Circle(0.5)];
shapes.map((s) => s.describe());
