type Mutable<T> = { -readonly [K in keyof T]: T[K] };
type Getters<T> = { [K in keyof T & string as `get${Capitalize<K>}`]: () => T[K] };
type ElementOf<T> = T extends readonly (infer U)[] ? U : never;

type Year = ElementOf<typeof YEARS>;
type SaleGetters = Getters<Pick<Sale, "units" | "price">>;
