/**
 * Reductions (sum, mean, max, min, variance), softmax / logSoftmax along an axis, and the MSE loss.
 *
 * Axis arguments: `undefined` reduces every axis; a number or a list reduces those axes (negative axes count
 * from the end; a repeated axis throws). An empty list reduces nothing (NumPy's `axis=()`; note PyTorch's
 * `dim=[]` would reduce everything). With `keepDims` the reduced axes stay as size 1.
 *
 * @module
 */

import { zipWith } from "./elementwise.ts";
import {
  checkTensor,
  formatShape,
  normalizeAxes,
  normalizeAxis,
  type RefTensor,
  sizeOf,
  strideOffsets,
  stridesOf,
  type TensorLike,
} from "./tensor.ts";

/** Output shape and, for every input element, the flat index of the output element it reduces into. */
function reductionPlan(
  x: RefTensor,
  axes: number | readonly number[] | undefined,
  keepDims: boolean,
): { shape: number[]; target: Int32Array; count: number } {
  checkTensor(x, "x");
  const rank = x.shape.length;
  const red = new Set(normalizeAxes(axes, rank));
  const keptShape = x.shape.map((d, k) => (red.has(k) ? 1 : d));
  const keptStrides = stridesOf(keptShape);
  // Walking the input, a reduced axis does not move the output position: stride 0.
  const target = strideOffsets(x.shape, x.shape.map((_, k) => (red.has(k) ? 0 : keptStrides[k])));
  const shape = keepDims ? keptShape : x.shape.filter((_, k) => !red.has(k));
  let count = 1;
  for (const k of red) count *= x.shape[k];
  return { shape, target, count };
}

/** Sum over `axes` (all when undefined). The sum of no elements is 0. */
export function sum(x: RefTensor, axes?: number | readonly number[], keepDims = false): RefTensor {
  const { shape, target } = reductionPlan(x, axes, keepDims);
  const data = new Float64Array(sizeOf(shape));
  for (let i = 0; i < target.length; i++) data[target[i]] += x.data[i];
  return { shape, data };
}

/** Arithmetic mean over `axes` (all when undefined). The mean of no elements is NaN, as in PyTorch. */
export function mean(x: RefTensor, axes?: number | readonly number[], keepDims = false): RefTensor {
  const { shape, target, count } = reductionPlan(x, axes, keepDims);
  const data = new Float64Array(sizeOf(shape));
  for (let i = 0; i < target.length; i++) data[target[i]] += x.data[i];
  for (let j = 0; j < data.length; j++) data[j] /= count;
  return { shape, data };
}

/**
 * Variance over `axes` with `correction` subtracted from the count (0 = biased/population variance, the
 * normalisation layers' convention; 1 = Bessel's correction). Two-pass: mean first, then squared deviations.
 */
export function variance(
  x: RefTensor,
  axes?: number | readonly number[],
  keepDims = false,
  correction = 0,
): RefTensor {
  const { shape, target, count } = reductionPlan(x, axes, keepDims);
  const m = new Float64Array(sizeOf(shape));
  for (let i = 0; i < target.length; i++) m[target[i]] += x.data[i];
  for (let j = 0; j < m.length; j++) m[j] /= count;
  const data = new Float64Array(m.length);
  for (let i = 0; i < target.length; i++) {
    const d = x.data[i] - m[target[i]];
    data[target[i]] += d * d;
  }
  for (let j = 0; j < data.length; j++) data[j] /= count - correction;
  return { shape, data };
}

function extremum(
  name: string,
  x: RefTensor,
  axes: number | readonly number[] | undefined,
  keepDims: boolean,
  better: (v: number, acc: number) => boolean,
): RefTensor {
  const { shape, target, count } = reductionPlan(x, axes, keepDims);
  if (count === 0) {
    throw new Error(`${name}: cannot reduce over an empty axis (input shape ${formatShape(x.shape)})`);
  }
  const data = new Float64Array(sizeOf(shape));
  const seen = new Uint8Array(data.length);
  for (let i = 0; i < target.length; i++) {
    const t = target[i];
    const v = x.data[i];
    if (!seen[t]) {
      data[t] = v;
      seen[t] = 1;
    } else if (Number.isNaN(v) || better(v, data[t])) {
      data[t] = v; // a NaN is sticky: no comparison with it is ever true, so it is never replaced
    }
  }
  return { shape, data };
}

/** Maximum over `axes`; NaN if any reduced element is NaN (PyTorch). Throws on an empty reduction. */
export function max(x: RefTensor, axes?: number | readonly number[], keepDims = false): RefTensor {
  return extremum("max", x, axes, keepDims, (v, acc) => v > acc);
}

/** Minimum over `axes`; NaN if any reduced element is NaN (PyTorch). Throws on an empty reduction. */
export function min(x: RefTensor, axes?: number | readonly number[], keepDims = false): RefTensor {
  return extremum("min", x, axes, keepDims, (v, acc) => v < acc);
}

/** Calls `f(offsets)` once per lane along `axis`, with the flat offsets of that lane's elements. */
function forEachLane(x: RefTensor, axis: number, f: (offsets: Int32Array) => void): void {
  const ax = normalizeAxis(axis, x.shape.length);
  const strides = stridesOf(x.shape);
  const n = x.shape[ax];
  const laneShape = x.shape.map((d, k) => (k === ax ? 1 : d));
  const starts = strideOffsets(laneShape, strides);
  const offsets = new Int32Array(n);
  for (const s of starts) {
    for (let j = 0; j < n; j++) offsets[j] = s + j * strides[ax];
    f(offsets);
  }
}

/**
 * softmax along `axis` (default last): exp(x − max) / Σ exp(x − max). A lane that is all −∞ gives NaN, as in
 * PyTorch.
 */
export function softmax(x: RefTensor, axis = -1): RefTensor {
  checkTensor(x, "x");
  const data = new Float64Array(x.data.length);
  forEachLane(x, axis, (offs) => {
    let m = -Infinity;
    for (const o of offs) m = Math.max(m, x.data[o]);
    let s = 0;
    for (const o of offs) s += Math.exp(x.data[o] - m);
    for (const o of offs) data[o] = Math.exp(x.data[o] - m) / s;
  });
  return { shape: [...x.shape], data };
}

/** log-softmax along `axis` (default last): x − max − log Σ exp(x − max). */
export function logSoftmax(x: RefTensor, axis = -1): RefTensor {
  checkTensor(x, "x");
  const data = new Float64Array(x.data.length);
  forEachLane(x, axis, (offs) => {
    let m = -Infinity;
    for (const o of offs) m = Math.max(m, x.data[o]);
    let s = 0;
    for (const o of offs) s += Math.exp(x.data[o] - m);
    const lse = m + Math.log(s);
    for (const o of offs) data[o] = x.data[o] - lse;
  });
  return { shape: [...x.shape], data };
}

/**
 * Mean squared error mean((a − b)²) as a scalar (shape `[]`) tensor, like PyTorch's `mse_loss` with
 * `reduction='mean'`. The operands broadcast (PyTorch warns but also broadcasts).
 */
export function mseLoss(a: TensorLike, b: TensorLike): RefTensor {
  const sq = zipWith(a, b, (x, y) => (x - y) * (x - y));
  return mean(sq);
}
