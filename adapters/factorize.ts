/**
 * Channel factorisations used by the tensorised adapters: three factors for TenVOO and QuanTA
 * (C = c0·c1·c2), two for LoKr's Kronecker product (C = m·n).
 *
 * @module
 */

/** Three factors whose product is a channel count, largest first by convention (e.g. 256 → [8, 8, 4]). */
export type Factors3 = readonly [number, number, number];

/**
 * The factorisations of the TenVOO repository (`peft/tenvoo.py`, `TENVOO_LIST`), used as they are so that
 * parameter counts match the paper's model. They are not always the most balanced (64 → 8·4·2, not 4·4·4).
 */
export const TENVOO_FACTORS: Readonly<Record<number, Factors3>> = Object.freeze({
  1: [1, 1, 1],
  2: [2, 1, 1],
  4: [2, 2, 1],
  6: [3, 2, 1],
  8: [2, 2, 2],
  12: [4, 3, 1],
  16: [4, 2, 2],
  24: [4, 3, 2],
  32: [4, 4, 2],
  48: [8, 3, 2],
  64: [8, 4, 2],
  96: [8, 4, 3],
  128: [8, 8, 2],
  192: [8, 6, 4],
  256: [8, 8, 4],
  384: [8, 8, 6],
  512: [16, 8, 4],
  768: [16, 8, 6],
  1024: [16, 16, 4],
});

function checkCount(what: string, n: number): void {
  if (!Number.isInteger(n) || n < 1) {
    throw new Error(`${what}: the count must be a positive integer, got ${n}.`);
  }
}

/**
 * The most balanced three-factor split of `n`, largest first: the one with the smallest largest factor, then
 * the largest smallest factor (e.g. 40 → [4, 5, 2] sorted as [5, 4, 2]; a prime p → [p, 1, 1]).
 */
export function balancedFactors3(n: number): Factors3 {
  checkCount("balancedFactors3", n);
  let best: [number, number, number] = [n, 1, 1];
  for (let c = 1; c * c * c <= n; c++) {
    if (n % c !== 0) continue;
    for (let b = c; b * b <= n / c; b++) {
      if ((n / c) % b !== 0) continue;
      const a = n / c / b;
      if (a < best[0] || (a === best[0] && c > best[2])) best = [a, b, c];
    }
  }
  return best;
}

/**
 * The three factors of `n` for TenVOO and QuanTA: `overrides[n]` when given (checked), else the TenVOO
 * repository's table, else {@linkcode balancedFactors3}.
 */
export function factorize3(n: number, overrides: Readonly<Record<number, readonly number[]>> = {}): Factors3 {
  checkCount("factorize3", n);
  const given = overrides[n];
  if (given !== undefined) {
    if (
      !Array.isArray(given) || given.length !== 3 || !given.every((f) => Number.isInteger(f) && f >= 1) ||
      given[0] * given[1] * given[2] !== n
    ) {
      throw new Error(
        `factorize3: factors for ${n} must be three positive integers whose product is ${n}, got ${
          JSON.stringify(given)
        }.`,
      );
    }
    return [given[0], given[1], given[2]];
  }
  return TENVOO_FACTORS[n] ?? balancedFactors3(n);
}

/**
 * LyCORIS's `factorization(dimension, factor)` for LoKr: n = m·k with m ≤ k. With `factor` > 0 dividing n,
 * the split is (factor, n/factor) ordered; otherwise m steps through the divisors of n up to `factor` (no
 * limit when factor ≤ 0) until it passes √n, which gives the most balanced split (128 → [8, 16], 250 →
 * [10, 25], 127 → [1, 127]; factor 4: 360 → [4, 90]).
 */
export function factorize2(n: number, factor = -1): [number, number] {
  checkCount("factorize2", n);
  if (factor > 0 && n % factor === 0) {
    const m = factor;
    const k = n / factor;
    return m > k ? [k, m] : [m, k];
  }
  const limit = factor > 0 ? factor : n;
  let m = 1;
  let k = n;
  while (m < k) {
    let next = m + 1;
    while (n % next !== 0) next++;
    const nextK = n / next;
    if (next > limit) break;
    m = next;
    k = nextK;
  }
  return m > k ? [k, m] : [m, k];
}
