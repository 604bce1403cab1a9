/**
 * Reference Philox-4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel Random Numbers: As Easy as 1, 2, 3",
 * SC'11 — the generator of cuRAND, PyTorch's CUDA RNG and JAX), and the streams voxgen's GPU `rand`/`randn`
 * draw from it.
 *
 * Philox is a keyed bijection of a 128-bit counter: block `b` of the stream of seed `s` is
 * `philox4x32(counter = [b mod 2³², ⌊b / 2³²⌋, 0, 0], key = [s mod 2³², ⌊s / 2³²⌋])`, and element `i` of a draw
 * starting at counter `offset` is word `i mod 4` of block `offset + ⌊i / 4⌋`. Nothing depends on the shape
 * or on how the GPU grid is laid out.
 *
 * The integer arithmetic uses only 32-bit operations (`Math.imul`, and the high word of a 32×32-bit product
 * assembled from 16-bit halves), no BigInt and no float64 tricks, so it is obviously the same computation as
 * the WGSL kernel. The floats are exact: a uniform is `(u >> 8)·2⁻²⁴` (24 random bits, exact in f32), and
 * the normals are computed in float64 from those same uniforms.
 *
 * @module
 */

import { type RefTensor, sizeOf } from "./tensor.ts";

/** Philox-4x32 multipliers. */
export const PHILOX_M = [0xd2511f53, 0xcd9e8d57] as const;
/** Philox-4x32 key increments (the golden ratio and √3 − 1, as 32-bit fractions). */
export const PHILOX_W = [0x9e3779b9, 0xbb67ae85] as const;

/** The 64-bit product of two u32 as `[hi, lo]` words, from 16-bit partial products (each exact in 32 bits). */
export function mulhilo32(a: number, b: number): [number, number] {
  const a0 = a & 0xffff, a1 = a >>> 16;
  const b0 = b & 0xffff, b1 = b >>> 16;
  const w0 = Math.imul(a0, b0) >>> 0;
  // t and w1 stay below 2³²: (2¹⁶ − 1)² + (2¹⁶ − 1) = 2³² − 2¹⁶.
  const t = ((Math.imul(a1, b0) >>> 0) + (w0 >>> 16)) >>> 0;
  const w1 = ((Math.imul(a0, b1) >>> 0) + (t & 0xffff)) >>> 0;
  const hi = ((Math.imul(a1, b1) >>> 0) + (t >>> 16) + (w1 >>> 16)) >>> 0;
  return [hi, Math.imul(a, b) >>> 0];
}

/**
 * The Philox-4x32 bijection of a 4-word counter under a 2-word key (`rounds` = 10 is Philox-4x32-10, the
 * standard variant; the Random123 known-answer tests also cover 7).
 */
export function philox4x32(
  counter: readonly number[],
  key: readonly number[],
  rounds = 10,
): [number, number, number, number] {
  let [c0, c1, c2, c3] = counter.map((w) => w >>> 0);
  let [k0, k1] = key.map((w) => w >>> 0);
  for (let r = 0; r < rounds; r++) {
    if (r > 0) {
      k0 = (k0 + PHILOX_W[0]) >>> 0;
      k1 = (k1 + PHILOX_W[1]) >>> 0;
    }
    const [hi0, lo0] = mulhilo32(PHILOX_M[0], c0);
    const [hi1, lo1] = mulhilo32(PHILOX_M[1], c2);
    [c0, c1, c2, c3] = [(hi1 ^ c1 ^ k0) >>> 0, lo1, (hi0 ^ c3 ^ k1) >>> 0, lo0];
  }
  return [c0, c1, c2, c3];
}

/** The Philox key of a seed (an integer 0 ≤ seed < 2⁵³): its low and high 32-bit words. */
export function seedKey(seed: number): [number, number] {
  if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`seedKey: seed ${seed} is not in [0, 2^53)`);
  return [seed >>> 0, Math.floor(seed / 2 ** 32) >>> 0];
}

/**
 * The raw 32-bit words of a draw of `n` values: element `i` is word `i mod 4` of block `offset + ⌊i/4⌋` of
 * seed `seed`'s stream.
 */
export function philoxBitsRef(n: number, seed: number, offset = 0): Uint32Array {
  const key = seedKey(seed);
  const [offLo, offHi] = seedKey(offset);
  const out = new Uint32Array(n);
  for (let j = 0; 4 * j < n; j++) {
    // 64-bit counter offset + j with an explicit carry (j < 2³⁰ here).
    const lo = (offLo + j) >>> 0;
    const hi = (offHi + (lo < offLo ? 1 : 0)) >>> 0;
    const block = philox4x32([lo, hi, 0, 0], key);
    for (let lane = 0; lane < 4 && 4 * j + lane < n; lane++) out[4 * j + lane] = block[lane];
  }
  return out;
}

/** The uniform in [0, 1) of one 32-bit word: its top 24 bits times 2⁻²⁴ (exact in f32). */
export function uniformOfBits(u: number): number {
  return (u >>> 8) * 2 ** -24;
}

/** Uniform [0, 1) values of the stream of `seed` from counter `offset`, as the GPU's `rand` draws them. */
export function philoxUniformRef(shape: readonly number[], seed: number, offset = 0): RefTensor {
  const bits = philoxBitsRef(sizeOf(shape), seed, offset);
  return { shape: [...shape], data: Float64Array.from(bits, uniformOfBits) };
}

/**
 * Standard normal values of the stream of `seed` from counter `offset`, as the GPU's `randn` draws them, in
 * float64: each block's words (u0, u1, u2, u3) give two Box–Muller pairs, r·cos θ and r·sin θ with
 * r = √(−2 ln(1 − u0)) and θ = 2π·u1 (then the same for u2, u3).
 */
export function philoxNormalRef(shape: readonly number[], seed: number, offset = 0): RefTensor {
  const n = sizeOf(shape);
  const bits = philoxBitsRef(n + 3, seed, offset); // whole blocks: a value's partner may lie past n
  const data = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const pair = i & ~1;
    const r = Math.sqrt(-2 * Math.log(1 - uniformOfBits(bits[pair])));
    const theta = 2 * Math.PI * uniformOfBits(bits[pair + 1]);
    data[i] = i % 2 === 0 ? r * Math.cos(theta) : r * Math.sin(theta);
  }
  return { shape: [...shape], data };
}
