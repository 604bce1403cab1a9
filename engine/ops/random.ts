/**
 * Reproducible random tensors from the counter-based Philox-4x32-10 generator: the same seed and offset give
 * the same values on every run and every machine, whatever the shape or the launch grid.
 *
 * A draw of `n` values from seed `s` starting at counter `offset` reads Philox blocks `offset …
 * offset + ⌈n/4⌉ − 1` (four values per block) in row-major order. So a larger draw begins with a smaller one,
 * and `offset + ⌈n/4⌉` continues a stream where a draw of `n` values stopped. Random tensors are constants:
 * they never require gradients.
 *
 * @module
 */

import { type RandomDistribution, randomKernel, randomParams } from "../../kernels/random.ts";
import { WG } from "../../kernels/types.ts";
import { limit } from "../device.ts";
import { bindRange, dispatch, windowElements } from "../runtime.ts";
import { checkShape, sizeOf } from "../shape.ts";
import { fromData, type Tensor } from "../tensor.ts";

/** Where a random draw comes from. */
export interface RandomOptions {
  /** The stream: an integer 0 ≤ seed < 2⁵³ (its low and high 32 bits are the Philox key). */
  seed: number;
  /**
   * The Philox counter of the first block, an integer 0 ≤ offset < 2⁵³ (default 0). Each block gives four
   * values: after drawing `n` values, `offset + Math.ceil(n / 4)` continues the same stream.
   */
  offset?: number;
}

/** The low and high 32-bit words of an integer below 2⁵³. */
function words(x: number): [number, number] {
  return [x >>> 0, Math.floor(x / 2 ** 32) >>> 0];
}

function checkOptions(op: string, opts: RandomOptions): { seed: number; offset: number } {
  if (typeof opts !== "object" || opts === null) {
    throw new Error(`${op}(shape, { seed, offset? }): options with an integer seed are required.`);
  }
  const { seed, offset = 0 } = opts;
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new Error(`${op}: seed ${seed} is invalid; accepted: an integer 0 ≤ seed < 2^53.`);
  }
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new Error(
      `${op}: offset ${offset} is invalid; accepted: an integer 0 ≤ offset < 2^53 (a Philox counter: ` +
        "four values per step).",
    );
  }
  return { seed, offset };
}

function draw(op: string, dist: RandomDistribution, shape: readonly number[], opts: RandomOptions): Tensor {
  checkShape(op, shape);
  const { seed, offset } = checkOptions(op, opts);
  const n = sizeOf(shape);
  if (n > 2 ** 32 - 1) throw new Error(`${op}: ${n} elements exceed the 2^32 − 1 one kernel can address.`);
  const out = fromData(null, shape, { dtype: dist === "bits" ? "int32" : "float32" });
  if (n === 0) return out;
  // Larger than one storage binding: pieces of whole Philox blocks (4 values) at aligned starts, each
  // continuing the counter where the previous ended.
  const step = Math.max(4, limit("minStorageBufferOffsetAlignment") / 4);
  const perPiece = Math.floor(windowElements() / step) * step;
  const buffer = out.storage(op).buffer;
  for (let first = 0; first < n; first += perPiece) {
    const count = Math.min(perPiece, n - first);
    const params = randomParams(count, [...words(offset + first / 4), 0, 0], words(seed));
    const { binding } = bindRange(buffer, first, first + count);
    dispatch(randomKernel(dist), params, [binding], Math.ceil(Math.ceil(count / 4) / WG));
  }
  return out;
}

/**
 * Standard normal values (mean 0, variance 1) of the given shape, drawn by Box–Muller from the Philox
 * stream of `opts.seed` at counter `opts.offset`. One kernel dispatch; not differentiable.
 *
 * @example
 * ```ts
 * const noise = randn([1, 1, 32, 32, 32], { seed: 42 }); // the same noise on every machine
 * ```
 */
export function randn(shape: readonly number[], opts: RandomOptions): Tensor {
  return draw("randn", "normal", shape, opts);
}

/**
 * Uniform values in [0, 1) of the given shape (24 random bits each: multiples of 2⁻²⁴), from the Philox
 * stream of `opts.seed` at counter `opts.offset`. One kernel dispatch; not differentiable.
 */
export function rand(shape: readonly number[], opts: RandomOptions): Tensor {
  return draw("rand", "uniform", shape, opts);
}

/**
 * The raw 32-bit Philox words of the same stream (an `int32` tensor holding the u32 bit patterns), for
 * tests and for kernels that need random bits (masks, dropout).
 */
export function randomBits(shape: readonly number[], opts: RandomOptions): Tensor {
  return draw("randomBits", "bits", shape, opts);
}
