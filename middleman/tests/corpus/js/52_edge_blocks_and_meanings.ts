// A function in a block is block-scoped (strict); a type and a value may share a name.
{
  function inner() {}
  inner();
}
inner();
interface Foo {
  a: number;
}
Foo;
const Bar = 1;
let b: Bar;
