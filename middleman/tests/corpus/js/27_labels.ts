let firstDup: [number, number] | undefined;
search: for (let i = 0; i < sales.length; i++) {
  for (let j = i + 1; j < sales.length; j++) {
    if (sales[i].product === sales[j].product && sales[i].date.getTime() === sales[j].date.getTime()) {
      firstDup = [i, j];
      break search;
    }
  }
}
firstDup;
