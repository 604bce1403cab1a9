/**
 * Tensor constructors: from data, constant fills and ranges.
 *
 * @module
 */

import { checkShape, formatShape, sizeOf } from "../shape.ts";
import { fromData, type Tensor } from "../tensor.ts";
import { mapInto } from "./map.ts";

/** Options for creating a leaf tensor. */
export interface TensorOptions {
  /** Track gradients for this tensor (a trainable leaf). */
  requiresGrad?: boolean;
}

/**
 * A tensor with the given values (row-major) and shape. `data.length` must equal the product of `shape`.
 *
 * @example
 * ```ts
 * const x = tensor([1, 2, 3, 4, 5, 6], [2, 3]);
 * ```
 */
export function tensor(
  data: Float32Array | readonly number[],
  shape: readonly number[],
  opts: TensorOptions = {},
): Tensor {
  checkShape("tensor", shape);
  if (!(data instanceof Float32Array) && !Array.isArray(data)) {
    throw new Error("tensor(data, shape): data must be a Float32Array or an array of numbers.");
  }
  const size = sizeOf(shape);
  if (data.length !== size) {
    throw new Error(
      `tensor(data, shape): data has ${data.length} values but shape ${formatShape(shape)} needs ${size}.`,
    );
  }
  const values = data instanceof Float32Array ? data : Float32Array.from(data);
  return fromData(values, shape, { requiresGrad: opts.requiresGrad });
}

/** A tensor of `shape` filled with `value`. */
export function full(shape: readonly number[], value: number, opts: TensorOptions = {}): Tensor {
  checkShape("full", shape);
  if (typeof value !== "number") throw new Error(`full: value must be a number, got ${typeof value}.`);
  const out = fromData(null, shape, { requiresGrad: opts.requiresGrad });
  mapInto(out, "fill", "s0", [], [value]);
  return out;
}

/** A tensor of zeros. */
export function zeros(shape: readonly number[], opts: TensorOptions = {}): Tensor {
  return full(shape, 0, opts);
}

/** A tensor of ones. */
export function ones(shape: readonly number[], opts: TensorOptions = {}): Tensor {
  return full(shape, 1, opts);
}

/** Zeros with the shape of `t`. */
export function zerosLike(t: Tensor): Tensor {
  return full(t.shape, 0);
}

/** Ones with the shape of `t`. */
export function onesLike(t: Tensor): Tensor {
  return full(t.shape, 1);
}

/**
 * Values `start, start + step, …` below `stop` (like `numpy.arange`). With one argument, `arange(n)` is
 * `0 … n-1`.
 */
export function arange(start: number, stop?: number, step = 1): Tensor {
  if (stop === undefined) [start, stop] = [0, start];
  if (![start, stop, step].every(Number.isFinite) || step === 0) {
    throw new Error(
      `arange(${start}, ${stop}, ${step}): start, stop and step must be finite and step non-zero.`,
    );
  }
  const n = Math.max(0, Math.ceil((stop - start) / step));
  const out = fromData(null, [n]);
  // The index is exact in f32 up to 2^24; compute start + i·step in the kernel from the flat index.
  mapInto(out, "arange", "s0 + f32(i) * s1", [], [start, step]);
  return out;
}
