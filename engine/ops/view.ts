/**
 * Shape ops: `reshape`, `permute`, `transpose`, `slice`, `expand` are views (no copy) wherever strides
 * allow; `concat` and `pad` write into slices of a new tensor. All are differentiable.
 *
 * @module
 */

import { record } from "../autograd.ts";
import { checkShape, contiguousStrides, formatShape, normalizeAxis, sizeOf } from "../shape.ts";
import { fromData, Tensor } from "../tensor.ts";
import { contiguous, copyInto, map } from "./map.ts";
// Cyclic (reduce.ts uses views); safe because neither module calls the other at load time.
import { sumTo } from "./reduce.ts";

function checkTensor(op: string, x: unknown): Tensor {
  if (!(x instanceof Tensor)) {
    throw new Error(`${op}: expected a Tensor, got ${x === null ? "null" : typeof x}.`);
  }
  x.storage(op);
  return x;
}

/** Internal: a view of `x`'s storage with the given layout (no autograd). */
export function view(
  x: Tensor,
  shape: readonly number[],
  strides: readonly number[],
  offset: number,
): Tensor {
  const storage = x.storage("view");
  storage.retain();
  return new Tensor({ shape, strides, offset, storage, dtype: x.dtype });
}

/** Internal: a contiguous `x` seen with another shape of the same size (no autograd). */
export function viewAs(x: Tensor, shape: readonly number[]): Tensor {
  if (!x.isContiguous) throw new Error(`viewAs: tensor ${formatShape(x.shape)} is not contiguous`);
  return view(x, shape, contiguousStrides(shape), x.offset);
}

/** Internal: `x` with its dimensions reordered (no autograd). */
export function permuteView(x: Tensor, perm: readonly number[]): Tensor {
  return view(x, perm.map((p) => x.shape[p]), perm.map((p) => x.strides[p]), x.offset);
}

/** Resolves a shape with at most one −1 against `size`. */
function resolveShape(op: string, from: readonly number[], shape: readonly number[]): number[] {
  const size = sizeOf(from);
  const unknown = shape.filter((d) => d === -1).length;
  if (unknown > 1 || shape.some((d) => !Number.isInteger(d) || d < -1)) {
    throw new Error(
      `${op}: invalid target shape ${formatShape(shape)}; use non-negative sizes and at most one -1.`,
    );
  }
  const known = sizeOf(shape.filter((d) => d !== -1));
  const out = shape.map((d) => (d === -1 ? (known === 0 ? 0 : size / known) : d));
  if (sizeOf(out) !== size || out.some((d) => !Number.isInteger(d))) {
    throw new Error(
      `${op}: cannot reshape ${formatShape(from)} (${size} elements) into ${formatShape(shape)}; ` +
        "the number of elements must stay the same.",
    );
  }
  return out;
}

/** The same values with another shape (one dimension may be −1). A view when `x` is contiguous. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  checkTensor("reshape", x);
  const target = resolveShape("reshape", x.shape, shape);
  const dense = contiguous(x);
  const out = viewAs(dense, target);
  dense.dispose();
  const inShape = x.shape;
  return record("reshape", out, [x], (g) => [reshapeRaw(g, inShape)]);
}

function reshapeRaw(g: Tensor, shape: readonly number[]): Tensor {
  const dense = contiguous(g);
  const out = viewAs(dense, shape);
  dense.dispose();
  return out;
}

/** Reorders dimensions: `out.shape[i] = x.shape[perm[i]]`. A view. */
export function permute(x: Tensor, perm: readonly number[]): Tensor {
  checkTensor("permute", x);
  const axes = perm.map((p) => normalizeAxis("permute", p, x.rank));
  if (axes.length !== x.rank || new Set(axes).size !== x.rank) {
    throw new Error(
      `permute: ${JSON.stringify(perm)} is not a permutation of the ${x.rank} axes of ${
        formatShape(x.shape)
      }.`,
    );
  }
  const out = permuteView(x, axes);
  const inverse = new Array<number>(axes.length);
  axes.forEach((p, i) => (inverse[p] = i));
  return record("permute", out, [x], (g) => [permuteView(g, inverse)]);
}

/** Swaps two axes (the last two by default). A view. */
export function transpose(x: Tensor, axis0 = -2, axis1 = -1): Tensor {
  checkTensor("transpose", x);
  if (x.rank < 2 && axis0 === -2 && axis1 === -1) {
    throw new Error(`transpose: tensor ${formatShape(x.shape)} has fewer than 2 dimensions.`);
  }
  const a = normalizeAxis("transpose", axis0, x.rank);
  const b = normalizeAxis("transpose", axis1, x.rank);
  const perm = [...Array(x.rank).keys()];
  [perm[a], perm[b]] = [perm[b], perm[a]];
  return permute(x, perm);
}

/**
 * The sub-tensor `starts[i] ≤ index < ends[i]` (step `steps[i]`) along each leading dimension; dimensions
 * past the given lists are kept whole. Negative indices count from the end, like Python. A view.
 */
export function slice(
  x: Tensor,
  starts: readonly number[],
  ends: readonly number[],
  steps?: readonly number[],
): Tensor {
  checkTensor("slice", x);
  if (starts.length !== ends.length || starts.length > x.rank || (steps && steps.length !== starts.length)) {
    throw new Error(
      `slice: starts ${JSON.stringify(starts)}, ends ${JSON.stringify(ends)}${
        steps ? `, steps ${JSON.stringify(steps)}` : ""
      } ` +
        `must have equal lengths of at most the rank of ${formatShape(x.shape)}.`,
    );
  }
  const shape = [...x.shape];
  const strides = [...x.strides];
  let offset = x.offset;
  const begin: number[] = [];
  for (let i = 0; i < starts.length; i++) {
    const n = x.shape[i];
    const step = steps?.[i] ?? 1;
    if (!Number.isInteger(step) || step < 1) {
      throw new Error(`slice: step ${step} on axis ${i} must be a positive integer.`);
    }
    if (!Number.isInteger(starts[i]) || !Number.isInteger(ends[i])) {
      throw new Error(`slice: start/end on axis ${i} must be integers, got ${starts[i]}, ${ends[i]}.`);
    }
    const s = Math.min(Math.max(starts[i] < 0 ? starts[i] + n : starts[i], 0), n);
    const e = Math.min(Math.max(ends[i] < 0 ? ends[i] + n : ends[i], s), n);
    shape[i] = Math.ceil((e - s) / step);
    strides[i] = x.strides[i] * step;
    offset += s * x.strides[i];
    begin.push(s);
  }
  const out = view(x, shape, strides, offset);
  const inShape = x.shape;
  const stepList = starts.map((_, i) => steps?.[i] ?? 1);
  return record("slice", out, [x], (g) => {
    const gx = map("fill", "s0", [], [0], inShape);
    const target = sliceView(gx, begin, shape, stepList);
    copyInto(target, g);
    target.dispose();
    return [gx];
  });
}

/** Internal: the view of `x` starting at `begin` with `shape`, taking every `steps[i]`-th element. */
function sliceView(
  x: Tensor,
  begin: readonly number[],
  shape: readonly number[],
  steps?: readonly number[],
): Tensor {
  let offset = x.offset;
  const strides = [...x.strides];
  begin.forEach((b, i) => {
    offset += b * x.strides[i];
    strides[i] = x.strides[i] * (steps?.[i] ?? 1);
  });
  return view(x, shape, strides, offset);
}

/** Broadcasts `x` to `shape` (NumPy rules) without copying. */
export function expand(x: Tensor, shape: readonly number[]): Tensor {
  checkTensor("expand", x);
  checkShape("expand", shape);
  const lead = shape.length - x.rank;
  const ok = lead >= 0 && x.shape.every((d, i) => d === shape[lead + i] || d === 1);
  if (!ok) throw new Error(`expand: cannot broadcast ${formatShape(x.shape)} to ${formatShape(shape)}.`);
  const strides = shape.map((_, i) => (i < lead || x.shape[i - lead] === 1 ? 0 : x.strides[i - lead]));
  const out = view(x, shape, strides, x.offset);
  const inShape = x.shape;
  return record("expand", out, [x], (g) => [sumTo(g, inShape)]);
}

/** Joins tensors along `axis`; all other dimensions must match. */
export function concat(tensors: readonly Tensor[], axis = 0): Tensor {
  if (!Array.isArray(tensors) || tensors.length === 0) {
    throw new Error("concat: expected a non-empty list of tensors.");
  }
  tensors.forEach((t) => checkTensor("concat", t));
  const first = tensors[0];
  const ax = normalizeAxis("concat", axis, first.rank);
  for (const t of tensors) {
    if (t.rank !== first.rank || t.shape.some((d: number, i: number) => i !== ax && d !== first.shape[i])) {
      throw new Error(
        `concat: shapes ${tensors.map((s) => formatShape(s.shape)).join(", ")} differ outside axis ${ax}; ` +
          "all dimensions but the concatenation axis must match.",
      );
    }
  }
  const shape = [...first.shape];
  shape[ax] = tensors.reduce((n, t) => n + t.shape[ax], 0);
  const out = fromData(null, shape);
  const begins: number[] = [];
  let at = 0;
  for (const t of tensors) {
    const begin = shape.map((_, i) => (i === ax ? at : 0));
    begins.push(at);
    const target = sliceView(out, begin, t.shape);
    copyInto(target, t);
    target.dispose();
    at += t.shape[ax];
  }
  const shapes = tensors.map((t) => t.shape);
  return record(
    "concat",
    out,
    tensors,
    (g, _saved, needs) =>
      shapes.map((s, k) =>
        needs[k] ? sliceView(g, s.map((_: number, i: number) => (i === ax ? begins[k] : 0)), s) : null
      ),
  );
}

/** Pads each dimension with `pads[i] = [before, after]` elements of `value` (trailing dims may be omitted). */
export function pad(x: Tensor, pads: ReadonlyArray<readonly [number, number]>, value = 0): Tensor {
  checkTensor("pad", x);
  if (
    pads.length > x.rank || pads.some((p) => p.length !== 2 || p.some((v) => !Number.isInteger(v) || v < 0))
  ) {
    throw new Error(
      `pad: ${JSON.stringify(pads)} is invalid for ${formatShape(x.shape)}; ` +
        "give one [before, after] pair of non-negative integers per leading dimension.",
    );
  }
  const begin = x.shape.map((_, i) => pads[i]?.[0] ?? 0);
  const shape = x.shape.map((d, i) => d + (pads[i]?.[0] ?? 0) + (pads[i]?.[1] ?? 0));
  const out = map("fill", "s0", [], [value], shape);
  const interior = sliceView(out, begin, x.shape);
  copyInto(interior, x);
  interior.dispose();
  const inShape = x.shape;
  return record("pad", out, [x], (g) => [sliceView(g, begin, inShape)]);
}
