type Result<T, E = Error> = { ok: true; value: T } | { ok: false; error: E };

function tryParse<T>(json: string, guard: (x: unknown) => x is T): Result<T> {
  try {
    const value: unknown = JSON.parse(json);
    return guard(value) ? { ok: true, value } : { ok: false, error: new TypeError("shape") };
  } catch (error) {
    return { ok: false, error: error as Error };
  }
}
