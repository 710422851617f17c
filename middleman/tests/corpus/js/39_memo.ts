const memo = <A extends string | number, R>(fn: (a: A) => R) => {
  const cache = new Map<A, R>();
  return (a: A): R => {
    if (!cache.has(a)) cache.set(a, fn(a));
    return cache.get(a)!;
  };
};

const fib: (n: number) => number = memo((n: number) => (n < 2 ? n : fib(n - 1) + fib(n - 2)));
fib(80);
