verbose = true;
const trackedRolling = track(rolling);
trackedRolling([1, 2, 3, 4], 2);
