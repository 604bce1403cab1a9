/**
 * The reference tensor type and the shape arithmetic shared by every reference op.
 *
 * A {@linkcode RefTensor} is a plain row-major contiguous float64 array with a shape. The reference ops are
 * written for obviousness, not speed, and compute in float64 so that they are more accurate than the f32
 * GPU kernels they check. This module deliberately shares no code with the GPU engine, so that a bug in the
 * engine's shape logic cannot hide itself by also being in the reference.
 *
 * @module
 */

/** A dense, row-major, contiguous float64 tensor. */
export interface RefTensor {
  /** Dimension sizes, outermost first; `[]` is a scalar (one element). */
  shape: number[];
  /** The elements in row-major order; `data.length === sizeOf(shape)`. */
  data: Float64Array;
}

/** A tensor, or a number standing for a scalar (shape `[]`) tensor. */
export type TensorLike = RefTensor | number;

/** `[2, 3]`, for error messages. */
export function formatShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

/** Throws unless every dimension of `shape` is a non-negative integer. */
export function checkShape(shape: readonly number[], what = "shape"): void {
  if (!Array.isArray(shape)) throw new Error(`${what}: expected an array of sizes, got ${String(shape)}`);
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) {
      throw new Error(`${what} ${JSON.stringify(shape)}: every size must be a non-negative integer`);
    }
  }
}

/** Number of elements of a shape (1 for the scalar shape `[]`). */
export function sizeOf(shape: readonly number[]): number {
  checkShape(shape);
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Row-major (C-order) strides of a shape, in elements. */
export function stridesOf(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

/** True when two shapes are identical. */
export function shapesEqual(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/**
 * A tensor holding a float64 copy of `data`. `shape` defaults to `[data.length]`; its size must equal
 * `data.length`.
 */
export function ref(data: ArrayLike<number>, shape?: readonly number[]): RefTensor {
  const s = shape === undefined ? [data.length] : [...shape];
  const n = sizeOf(s);
  if (n !== data.length) {
    throw new Error(`ref: shape ${formatShape(s)} has ${n} elements but data has ${data.length}`);
  }
  return { shape: s, data: Float64Array.from(data) };
}

/** A tensor of the given shape filled with zeros. */
export function refZeros(shape: readonly number[]): RefTensor {
  return { shape: [...shape], data: new Float64Array(sizeOf(shape)) };
}

/** A tensor of the given shape filled with `value`. */
export function refFull(shape: readonly number[], value: number): RefTensor {
  return { shape: [...shape], data: new Float64Array(sizeOf(shape)).fill(value) };
}

/** A scalar (shape `[]`) tensor. */
export function refScalar(value: number): RefTensor {
  return { shape: [], data: Float64Array.of(value) };
}

/** `[0, 1, ..., n - 1]` reshaped to `shape` (default `[n]`), handy for hand-checked tests. */
export function arange(n: number, shape?: readonly number[]): RefTensor {
  const data = new Float64Array(n);
  for (let i = 0; i < n; i++) data[i] = i;
  return ref(data, shape ?? [n]);
}

/** Wraps a number as a scalar tensor; tensors pass through unchanged. */
export function asTensor(x: TensorLike): RefTensor {
  return typeof x === "number" ? refScalar(x) : x;
}

/** A deep copy of a tensor. */
export function cloneRef(x: RefTensor): RefTensor {
  return { shape: [...x.shape], data: new Float64Array(x.data) };
}

/**
 * The same tensor with every element rounded to the nearest float32, i.e. exactly the values a GPU kernel
 * sees after upload. Feed these to both the reference and the GPU so input rounding is not counted as error.
 */
export function roundToF32(x: RefTensor): RefTensor {
  const data = new Float64Array(x.data.length);
  for (let i = 0; i < data.length; i++) data[i] = Math.fround(x.data[i]);
  return { shape: [...x.shape], data };
}

/**
 * `v` rounded to the nearest IEEE binary16 value, ties to even; magnitudes that round above the largest
 * finite value (65504) become ±Infinity, as IEEE round-to-nearest does. Computed in float64 from the
 * format's definition (11 significant bits; exponent at least −14, below which the spacing stays 2^−24).
 */
export function f16Round(v: number): number {
  if (!Number.isFinite(v) || v === 0) return v;
  const a = Math.abs(v);
  let e = Math.max(Math.floor(Math.log2(a)), -14);
  if (e > -14 && 2 ** e > a) e--; // log2 rounded up just below a power of two
  if (2 ** (e + 1) <= a) e++;
  const quantum = 2 ** (e - 10);
  const m = a / quantum;
  const f = Math.floor(m);
  const r = m - f > 0.5 || (m - f === 0.5 && f % 2 === 1) ? f + 1 : f;
  const rounded = r * quantum;
  return Math.sign(v) * (rounded > 65504 ? Infinity : rounded);
}

/** Rounds every element to IEEE binary16 ({@linkcode f16Round}): the values an f16 tensor can hold. */
export function roundToF16(x: RefTensor): RefTensor {
  return { shape: [...x.shape], data: x.data.map(f16Round) };
}

/** The elements as a Float32Array (for upload to the GPU). */
export function toF32(x: RefTensor): Float32Array {
  return Float32Array.from(x.data);
}

/** Throws unless `x.data.length` matches its shape; returns `x`. */
export function checkTensor(x: RefTensor, what = "tensor"): RefTensor {
  if (!x || !Array.isArray(x.shape) || !(x.data instanceof Float64Array)) {
    throw new Error(`${what}: expected a RefTensor { shape: number[]; data: Float64Array }`);
  }
  checkShape(x.shape, `${what} shape`);
  const n = sizeOf(x.shape);
  if (x.data.length !== n) {
    throw new Error(`${what}: shape ${formatShape(x.shape)} has ${n} elements but data has ${x.data.length}`);
  }
  return x;
}

/**
 * Resolves a possibly negative axis against `rank` (`-1` is the last axis). Throws when it is not an
 * integer in `[-rank, rank - 1]`.
 */
export function normalizeAxis(axis: number, rank: number, what = "axis"): number {
  if (!Number.isInteger(axis) || axis < -rank || axis >= rank) {
    throw new Error(`${what} ${axis} is out of range for a tensor of rank ${rank}`);
  }
  return axis < 0 ? axis + rank : axis;
}

/**
 * Resolves an axis list: `undefined` means every axis, a number means one axis. Negative axes are
 * allowed; duplicates (after resolution) throw. The result is sorted ascending.
 */
export function normalizeAxes(axes: number | readonly number[] | undefined, rank: number): number[] {
  if (axes === undefined) return Array.from({ length: rank }, (_, i) => i);
  const list = typeof axes === "number" ? [axes] : [...axes];
  const out = list.map((a) => normalizeAxis(a, rank));
  const seen = new Set<number>();
  for (const a of out) {
    if (seen.has(a)) throw new Error(`axes ${JSON.stringify(list)}: axis ${a} is repeated`);
    seen.add(a);
  }
  return out.sort((a, b) => a - b);
}

/**
 * NumPy broadcasting: shapes are right-aligned, and in each position the sizes must be equal or 1 (a 1
 * stretches to the other size; 0 is a size like any other). Throws naming the shapes when they do not
 * broadcast.
 */
export function broadcastShapes(...shapes: ReadonlyArray<readonly number[]>): number[] {
  const rank = Math.max(0, ...shapes.map((s) => s.length));
  const out = new Array<number>(rank).fill(1);
  for (const s of shapes) {
    for (let i = 0; i < s.length; i++) {
      const k = rank - s.length + i;
      const d = s[i];
      if (d === out[k] || d === 1) continue;
      if (out[k] === 1) {
        out[k] = d;
        continue;
      }
      throw new Error(
        `shapes ${shapes.map(formatShape).join(", ")} do not broadcast (axis ${k - rank}: ${out[k]} vs ${d})`,
      );
    }
  }
  return out;
}

/**
 * For every element of `shape` in row-major order, the offset `base + Σ index[k] * strides[k]`. This one
 * helper expresses broadcasting (stride 0), permutation (permuted strides), slicing (scaled strides plus a
 * base) and reduction (stride 0 on reduced axes of the output).
 */
export function strideOffsets(shape: readonly number[], strides: readonly number[], base = 0): Int32Array {
  if (strides.length !== shape.length) throw new Error("strideOffsets: shape and strides differ in rank");
  const n = sizeOf(shape);
  const out = new Int32Array(n);
  const rank = shape.length;
  const idx = new Array<number>(rank).fill(0);
  let off = base;
  for (let i = 0; i < n; i++) {
    out[i] = off;
    // Odometer step: bump the last index, carrying into earlier axes.
    for (let k = rank - 1; k >= 0; k--) {
      idx[k]++;
      off += strides[k];
      if (idx[k] < shape[k]) break;
      off -= strides[k] * shape[k];
      idx[k] = 0;
    }
  }
  return out;
}

/**
 * For every element of `outShape`, the flat index of the element of a tensor of shape `inShape` that
 * NumPy broadcasting maps to it. Throws if `inShape` does not broadcast to `outShape`.
 */
export function broadcastIndex(inShape: readonly number[], outShape: readonly number[]): Int32Array {
  if (inShape.length > outShape.length) {
    throw new Error(`cannot broadcast ${formatShape(inShape)} to ${formatShape(outShape)}: rank is larger`);
  }
  const lead = outShape.length - inShape.length;
  const inStrides = stridesOf(inShape);
  const strides = outShape.map((d, k) => {
    if (k < lead) return 0;
    const s = inShape[k - lead];
    if (s === d) return s === 1 ? 0 : inStrides[k - lead];
    if (s === 1) return 0;
    throw new Error(
      `cannot broadcast ${formatShape(inShape)} to ${formatShape(outShape)} (axis ${k}: ${s} vs ${d})`,
    );
  });
  return strideOffsets(outShape, strides);
}

/** The multi-index of flat (row-major) position `flat` in `shape`. */
export function unravelIndex(flat: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length);
  let r = flat;
  for (let k = shape.length - 1; k >= 0; k--) {
    idx[k] = shape[k] === 0 ? 0 : r % shape[k];
    r = shape[k] === 0 ? 0 : Math.floor(r / shape[k]);
  }
  return idx;
}

/** The flat (row-major) position of multi-index `idx` in `shape`; throws if out of bounds. */
export function ravelIndex(idx: readonly number[], shape: readonly number[]): number {
  if (idx.length !== shape.length) {
    throw new Error(`index ${JSON.stringify(idx)} has the wrong rank for ${formatShape(shape)}`);
  }
  let flat = 0;
  for (let k = 0; k < shape.length; k++) {
    if (!Number.isInteger(idx[k]) || idx[k] < 0 || idx[k] >= shape[k]) {
      throw new Error(`index ${JSON.stringify(idx)} is out of bounds for ${formatShape(shape)}`);
    }
    flat = flat * shape[k] + idx[k];
  }
  return flat;
}

/** The element at multi-index `idx` (negative indices are not allowed). */
export function at(x: RefTensor, idx: readonly number[]): number {
  return x.data[ravelIndex(idx, x.shape)];
}
