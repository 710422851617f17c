class K {
  static x = K.y;
  [computed] = 1;
  m(@dec p: number) {
    return p;
  }
}
const f = function* () {
  yield* src;
};
cacheHits ??= 1;
misses ||= 2;
delete obj.prop;
for (key in table) {
}
