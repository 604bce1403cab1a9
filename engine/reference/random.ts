/**
 * Seeded, platform-independent random data for tests: the same seed gives the same numbers everywhere.
 *
 * @module
 */

import { type RefTensor, sizeOf } from "./tensor.ts";

/**
 * A mulberry32 generator: returns a function giving uniform numbers in [0, 1) with 32 random bits each.
 * Small, fast and deterministic; for tests, not for cryptography.
 */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A tensor of uniform numbers in [lo, hi) from `rng(seed)`. */
export function randomRef(shape: readonly number[], seed: number, lo = -1, hi = 1): RefTensor {
  const next = rng(seed);
  const data = new Float64Array(sizeOf(shape));
  for (let i = 0; i < data.length; i++) data[i] = lo + (hi - lo) * next();
  return { shape: [...shape], data };
}

/** A tensor of standard normal numbers (mean 0, variance 1) from `rng(seed)` by the Box–Muller transform. */
export function randnRef(shape: readonly number[], seed: number): RefTensor {
  const next = rng(seed);
  const data = new Float64Array(sizeOf(shape));
  for (let i = 0; i < data.length; i += 2) {
    const u1 = 1 - next(); // in (0, 1]: log is finite
    const u2 = next();
    const r = Math.sqrt(-2 * Math.log(u1));
    data[i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < data.length) data[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return { shape: [...shape], data };
}

/** A tensor of uniform integers in [lo, hi) (as float64 values), e.g. labels or indices. */
export function randomIntRef(shape: readonly number[], seed: number, lo: number, hi: number): RefTensor {
  const next = rng(seed);
  const data = new Float64Array(sizeOf(shape));
  for (let i = 0; i < data.length; i++) data[i] = lo + Math.floor((hi - lo) * next());
  return { shape: [...shape], data };
}
