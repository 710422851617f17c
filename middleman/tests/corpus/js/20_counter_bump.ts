runs += 10;
runs;
