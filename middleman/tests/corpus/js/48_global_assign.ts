function resetAll() {
  runs = 0;
  verbose = false;
  lastReset = new Date();
}
resetAll();
