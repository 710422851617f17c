// Scoping edge cases, as notebook cells rarely but really have them.
export default function main() {
  return helper();
}
export { main as entry, plotTotals };
