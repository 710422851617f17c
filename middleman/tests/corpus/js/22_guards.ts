const isCustomer = (x: unknown): x is Customer =>
  typeof x === "object" && x !== null && "id" in x && "spend" in x;

const parsed = tryParse<Customer>('{"id":"c1","name":"Ada","spend":12}', isCustomer);
if (parsed.ok) {
  console.log(parsed.value.name, tierOf(parsed.value.spend));
} else {
  console.error(parsed.error.message);
}
