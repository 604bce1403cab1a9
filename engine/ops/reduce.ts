/**
 * Reductions over axes (`sum`, `mean`, `max`, `min`) with `keepDims`, and `sumTo` for broadcasting
 * backward passes. The reduced axes are moved last (a view), made contiguous if needed, and reduced as rows.
 *
 * @module
 */

import { REDUCE_UNIFORMS, reduceKernel, type ReduceOp, threadsPerRow } from "../../kernels/reduce.ts";
import { WG } from "../../kernels/types.ts";
import { record } from "../autograd.ts";
import { bindRange, dispatch, windowElements } from "../runtime.ts";
import { formatShape, normalizeAxes, sizeOf } from "../shape.ts";
import { fromData, Tensor } from "../tensor.ts";
import { contiguous, map } from "./map.ts";
import { permuteView, viewAs } from "./view.ts";

/** Axes argument of a reduction: one axis, a list, or undefined for all axes. */
export type Axes = number | readonly number[] | undefined;

const CHUNK = 4096;

/**
 * Reduces `rows` rows of `n` elements of the contiguous `src` starting at element `first` into `out` from
 * element `outFirst` on; the range fits one binding.
 */
function reducePiece(
  op: ReduceOp,
  src: Tensor,
  first: number,
  rows: number,
  n: number,
  scale: number,
  out: Tensor,
  outFirst: number,
): void {
  const splitRows = n > 2 * CHUNK && rows < 1024;
  const chunks = splitRows ? Math.ceil(n / CHUNK) : 1;
  const chunkLen = splitRows ? CHUNK : n;
  const virtualRows = rows * chunks;
  const dst = splitRows ? fromData(null, [virtualRows]) : out;
  const tpr = threadsPerRow(chunkLen);
  const input = bindRange(src.storage(op).buffer, first, first + rows * n);
  const output = bindRange(
    dst.storage(op).buffer,
    splitRows ? 0 : outFirst,
    (splitRows ? 0 : outFirst) + virtualRows,
  );
  const params = REDUCE_UNIFORMS.pack({
    rows: virtualRows,
    n,
    chunks,
    chunkLen,
    srcOffset: first - input.shift,
    scale: splitRows ? 1 : scale,
    dstOffset: (splitRows ? 0 : outFirst) - output.shift,
  });
  dispatch(
    reduceKernel(op, tpr),
    params,
    [input.binding, output.binding],
    Math.ceil(virtualRows / (WG / tpr)),
  );
  if (!splitRows) return;
  reducePiece(op, dst, 0, rows, chunks, scale, out, outFirst);
  dst.dispose();
}

/**
 * Reduces a contiguous `[rows, n]` buffer region into a new `[rows]` tensor. Regions larger than one
 * storage binding are reduced in pieces of whole rows, and rows longer than a binding in column pieces whose
 * partial results are reduced again.
 */
function reduceRows(op: ReduceOp, src: Tensor, rows: number, n: number, scale: number): Tensor {
  const max = windowElements();
  const out = fromData(null, [rows]);
  if (n > max) {
    const parts = Math.ceil(n / max);
    const len = Math.ceil(n / parts);
    const partial = fromData(null, [rows * parts]);
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < parts; j++) {
        const cols = Math.min(len, n - j * len);
        reducePiece(op, src, src.offset + r * n + j * len, 1, cols, 1, partial, r * parts + j);
      }
    }
    reducePiece(op, partial, 0, rows, parts, scale, out, 0);
    partial.dispose();
    return out;
  }
  const perPiece = Math.max(1, Math.floor(max / n));
  for (let r0 = 0; r0 < rows; r0 += perPiece) {
    reducePiece(op, src, src.offset + r0 * n, Math.min(perPiece, rows - r0), n, scale, out, r0);
  }
  return out;
}

/** Forward of a reduction without autograd. */
function reduceRaw(
  op: ReduceOp,
  name: string,
  x: Tensor,
  axes: number[],
  keepDims: boolean,
  mean: boolean,
): Tensor {
  const rank = x.rank;
  const kept = [...Array(rank).keys()].filter((d) => !axes.includes(d));
  const keptShape = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
  const outShape = keepDims ? keptShape : kept.map((d) => x.shape[d]);
  const n = sizeOf(axes.map((d) => x.shape[d]));
  const rows = sizeOf(kept.map((d) => x.shape[d]));
  if (n === 0) {
    if (op !== "sum") {
      throw new Error(
        `${name}: cannot reduce over an empty axis of shape ${formatShape(x.shape)} (axes ${
          JSON.stringify(axes)
        }); ` +
          "max/min need at least one element.",
      );
    }
    return map("fill", "s0", [], [mean ? NaN : 0], outShape);
  }
  const moved = permuteView(x, [...kept, ...axes]);
  const dense = contiguous(moved);
  moved.dispose();
  const flat = reduceRows(op, dense, rows, n, mean ? 1 / n : 1);
  dense.dispose();
  const out = viewAs(flat, outShape);
  flat.dispose();
  return out;
}

function reduce(
  op: ReduceOp,
  name: string,
  x: Tensor,
  axesArg: Axes,
  keepDims: boolean,
  isMean = false,
): Tensor {
  if (!(x instanceof Tensor)) throw new Error(`${name}: x must be a Tensor.`);
  x.storage(name);
  const axes = normalizeAxes(name, axesArg, x.rank);
  const y = reduceRaw(op, name, x, axes, keepDims, isMean);
  const keptShape = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
  const n = sizeOf(axes.map((d) => x.shape[d]));
  return record(name, y, [x], (g, saved) => {
    // The incoming gradient may be a strided view (e.g. from a transpose's backward).
    const dense = contiguous(g);
    const gk = viewAs(dense, keptShape);
    dense.dispose();
    try {
      if (op === "sum") {
        return [map(isMean ? "mean_grad" : "copy_scaled", "a * s0", [gk], [isMean ? 1 / n : 1], x.shape)];
      }
      // max/min: the gradient goes to every position attaining the extreme, shared equally between ties.
      const [xs, ys] = saved;
      const yk = viewAs(ys, keptShape);
      const mask = map("eq_mask", "select(0.0, 1.0, a == b)", [xs, yk]);
      const count = reduceRaw("sum", "count", mask, axes, true, false);
      const gx = map("extreme_grad", "a * b / c", [gk, mask, count]);
      yk.dispose();
      mask.dispose();
      count.dispose();
      return [gx];
    } finally {
      gk.dispose();
    }
  }, op === "sum" ? [] : [x, y]);
}

/** Sum over `axes` (all when omitted). */
export function sum(x: Tensor, axes?: Axes, keepDims = false): Tensor {
  return reduce("sum", "sum", x, axes, keepDims);
}

/** Mean over `axes` (all when omitted); NaN over empty axes, like NumPy. */
export function mean(x: Tensor, axes?: Axes, keepDims = false): Tensor {
  return reduce("sum", "mean", x, axes, keepDims, true);
}

/** Maximum over `axes` (all when omitted). Ties share the gradient equally. */
export function max(x: Tensor, axes?: Axes, keepDims = false): Tensor {
  return reduce("max", "max", x, axes, keepDims);
}

/** Minimum over `axes` (all when omitted). Ties share the gradient equally. */
export function min(x: Tensor, axes?: Axes, keepDims = false): Tensor {
  return reduce("min", "min", x, axes, keepDims);
}

/** Sums `g` down to `shape` (the inverse of broadcasting `shape` up to `g.shape`). */
export function sumTo(g: Tensor, shape: readonly number[]): Tensor {
  const lead = g.rank - shape.length;
  if (lead < 0) throw new Error(`sumTo: ${formatShape(g.shape)} cannot reduce to ${formatShape(shape)}`);
  const axes: number[] = [];
  for (let i = 0; i < g.rank; i++) {
    if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) axes.push(i);
  }
  const s = sum(g, axes, true);
  const out = viewAs(s, shape);
  s.dispose();
  return out;
}
