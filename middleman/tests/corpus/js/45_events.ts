class Emitter<Events extends Record<string, unknown[]>> {
  private handlers: { [E in keyof Events]?: Array<(...args: Events[E]) => void> } = {};
  on<E extends keyof Events>(event: E, handler: (...args: Events[E]) => void) {
    (this.handlers[event] ??= []).push(handler);
    return () => this.off(event, handler);
  }
  off<E extends keyof Events>(event: E, handler: (...args: Events[E]) => void) {
    this.handlers[event] = this.handlers[event]?.filter((h) => h !== handler);
  }
  emit<E extends keyof Events>(event: E, ...args: Events[E]) {
    this.handlers[event]?.forEach((h) => h(...args));
  }
}

const bus = new Emitter<{ sale: [Sale]; reset: [] }>();
const unsubscribe = bus.on("sale", (s) => console.log(s.id));
