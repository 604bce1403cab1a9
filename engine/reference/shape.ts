/**
 * Shape ops: reshape, permute, transpose, slice, concat, stack, pad, expand / broadcastTo, squeeze and
 * unsqueeze. Every op returns a fresh contiguous tensor (references never alias their inputs).
 *
 * @module
 */

import {
  broadcastIndex,
  checkTensor,
  formatShape,
  normalizeAxis,
  type RefTensor,
  sizeOf,
  strideOffsets,
  stridesOf,
} from "./tensor.ts";

/** Gathers `x.data` at `offsets` into a new tensor of shape `shape`. */
function gather(x: RefTensor, shape: number[], offsets: Int32Array): RefTensor {
  const data = new Float64Array(offsets.length);
  for (let i = 0; i < data.length; i++) data[i] = x.data[offsets[i]];
  return { shape, data };
}

/**
 * The same elements in a new shape (row-major order is kept). One entry may be −1: it is inferred from
 * the element count. Throws when the counts differ.
 */
export function reshape(x: RefTensor, shape: readonly number[]): RefTensor {
  checkTensor(x, "reshape: x");
  const out = [...shape];
  const free = out.flatMap((d, i) => (d === -1 ? [i] : []));
  if (free.length > 1) throw new Error(`reshape: at most one -1 allowed in ${JSON.stringify(shape)}`);
  for (const d of out) {
    if (d !== -1 && (!Number.isInteger(d) || d < 0)) {
      throw new Error(`reshape: invalid size ${d} in ${JSON.stringify(shape)}`);
    }
  }
  const n = x.data.length;
  if (free.length === 1) {
    const known = out.reduce((p, d) => (d === -1 ? p : p * d), 1);
    if (known === 0 || n % known !== 0) {
      throw new Error(
        `reshape: cannot infer -1 in ${JSON.stringify(shape)} for ${n} elements (${formatShape(x.shape)})`,
      );
    }
    out[free[0]] = n / known;
  }
  if (sizeOf(out) !== n) {
    throw new Error(`reshape: cannot reshape ${formatShape(x.shape)} (${n} elements) to ${formatShape(out)}`);
  }
  return { shape: out, data: new Float64Array(x.data) };
}

/** Reorders the axes: output axis i is input axis `perm[i]` (negative entries allowed). */
export function permute(x: RefTensor, perm: readonly number[]): RefTensor {
  checkTensor(x, "permute: x");
  const rank = x.shape.length;
  if (perm.length !== rank) {
    throw new Error(`permute: perm ${JSON.stringify(perm)} has length ${perm.length}, rank is ${rank}`);
  }
  const p = perm.map((a) => normalizeAxis(a, rank, "permute: axis"));
  if (new Set(p).size !== rank) throw new Error(`permute: ${JSON.stringify(perm)} is not a permutation`);
  const strides = stridesOf(x.shape);
  const shape = p.map((a) => x.shape[a]);
  return gather(x, shape, strideOffsets(shape, p.map((a) => strides[a])));
}

/** Swaps axes `a` and `b` (default: the last two, PyTorch `.mT`). */
export function transpose(x: RefTensor, a = -2, b = -1): RefTensor {
  const rank = x.shape.length;
  const i = normalizeAxis(a, rank, "transpose: axis");
  const j = normalizeAxis(b, rank, "transpose: axis");
  const perm = Array.from({ length: rank }, (_, k) => k);
  perm[i] = j;
  perm[j] = i;
  return permute(x, perm);
}

/**
 * Python-style slicing `x[s0:e0:k0, s1:e1:k1, ...]`. `starts`/`ends` may be shorter than the rank (the
 * remaining axes are taken whole); negative indices count from the end, and out-of-range indices clamp
 * (±Infinity is fine, e.g. `ends = [Infinity]` for "to the end"). `steps` default to 1 and must be
 * positive integers.
 */
export function slice(
  x: RefTensor,
  starts: readonly number[],
  ends: readonly number[],
  steps?: readonly number[],
): RefTensor {
  checkTensor(x, "slice: x");
  const rank = x.shape.length;
  if (starts.length > rank || ends.length > rank || (steps && steps.length > rank)) {
    throw new Error(`slice: more indices than the rank ${rank} of ${formatShape(x.shape)}`);
  }
  const strides = stridesOf(x.shape);
  const shape: number[] = [];
  const outStrides: number[] = [];
  let base = 0;
  for (let k = 0; k < rank; k++) {
    const dim = x.shape[k];
    const step = steps?.[k] ?? 1;
    if (!Number.isInteger(step) || step <= 0) {
      throw new Error(`slice: step ${step} on axis ${k} must be a positive integer`);
    }
    const norm = (v: number, what: string): number => {
      if (!Number.isInteger(v) && Math.abs(v) !== Infinity) {
        throw new Error(`slice: ${what} ${v} on axis ${k} is not an integer`);
      }
      const r = v < 0 ? v + dim : v;
      return Math.min(Math.max(r, 0), dim);
    };
    const s = k < starts.length ? norm(starts[k], "start") : 0;
    const e = k < ends.length ? norm(ends[k], "end") : dim;
    const n = e > s ? Math.ceil((e - s) / step) : 0;
    shape.push(n);
    outStrides.push(strides[k] * step);
    if (n > 0) base += s * strides[k];
  }
  return gather(x, shape, strideOffsets(shape, outStrides, base));
}

/** Joins tensors along `axis` (default 0); all other sizes must agree. */
export function concat(list: readonly RefTensor[], axis = 0): RefTensor {
  if (list.length === 0) throw new Error("concat: empty list");
  const rank = list[0].shape.length;
  const ax = normalizeAxis(axis, rank, "concat: axis");
  list.forEach((t, i) => {
    checkTensor(t, `concat: tensor ${i}`);
    if (t.shape.length !== rank || t.shape.some((d, k) => k !== ax && d !== list[0].shape[k])) {
      throw new Error(
        `concat: tensor ${i} has shape ${formatShape(t.shape)}, incompatible with ${
          formatShape(list[0].shape)
        } along axis ${ax}`,
      );
    }
  });
  const shape = [...list[0].shape];
  shape[ax] = list.reduce((s, t) => s + t.shape[ax], 0);
  const out = new Float64Array(sizeOf(shape));
  const outStrides = stridesOf(shape);
  let offset = 0; // position along `axis` where the current piece starts
  for (const t of list) {
    const dst = strideOffsets(t.shape, outStrides, offset * outStrides[ax]);
    for (let i = 0; i < dst.length; i++) out[dst[i]] = t.data[i];
    offset += t.shape[ax];
  }
  return { shape, data: out };
}

/** Stacks equal-shaped tensors along a new axis `axis` (default 0; `axis` may be −1 for a new last axis). */
export function stack(list: readonly RefTensor[], axis = 0): RefTensor {
  if (list.length === 0) throw new Error("stack: empty list");
  const ax = normalizeAxis(axis, list[0].shape.length + 1, "stack: axis");
  return concat(list.map((t) => unsqueeze(t, ax)), ax);
}

/**
 * Constant padding: `pads[k] = [before, after]` for every axis k (one pair per dimension, outermost first —
 * NOT the reversed, last-axis-first order of `torch.nn.functional.pad`). Pads are non-negative integers.
 */
export function pad(x: RefTensor, pads: ReadonlyArray<readonly [number, number]>, value = 0): RefTensor {
  checkTensor(x, "pad: x");
  if (pads.length !== x.shape.length) {
    throw new Error(
      `pad: need one [before, after] pair per dimension of ${formatShape(x.shape)}, got ${pads.length}`,
    );
  }
  for (const [b, a] of pads) {
    if (!Number.isInteger(b) || !Number.isInteger(a) || b < 0 || a < 0) {
      throw new Error(`pad: pads ${JSON.stringify(pads)} must be non-negative integers`);
    }
  }
  const shape = x.shape.map((d, k) => d + pads[k][0] + pads[k][1]);
  const outStrides = stridesOf(shape);
  const base = pads.reduce((s, [b], k) => s + b * outStrides[k], 0);
  const out = new Float64Array(sizeOf(shape)).fill(value);
  const dst = strideOffsets(x.shape, outStrides, base);
  for (let i = 0; i < dst.length; i++) out[dst[i]] = x.data[i];
  return { shape, data: out };
}

/** NumPy `broadcast_to`: repeats size-1 (and missing leading) axes to reach `shape`. */
export function broadcastTo(x: RefTensor, shape: readonly number[]): RefTensor {
  checkTensor(x, "broadcastTo: x");
  const s = [...shape];
  return gather(x, s, broadcastIndex(x.shape, s));
}

/**
 * PyTorch `expand`: like {@linkcode broadcastTo}, but an entry of −1 keeps the existing size of that axis
 * (only allowed for axes that exist in `x`, i.e. not for new leading axes).
 */
export function expand(x: RefTensor, shape: readonly number[]): RefTensor {
  const lead = shape.length - x.shape.length;
  const s = shape.map((d, k) => {
    if (d !== -1) return d;
    if (k < lead) {
      throw new Error(`expand: -1 is not allowed for new leading axis ${k} of ${JSON.stringify(shape)}`);
    }
    return x.shape[k - lead];
  });
  return broadcastTo(x, s);
}

/** Inserts a size-1 axis at `axis` (in `[-rank-1, rank]`, like `torch.unsqueeze`). */
export function unsqueeze(x: RefTensor, axis: number): RefTensor {
  const ax = normalizeAxis(axis, x.shape.length + 1, "unsqueeze: axis");
  const shape = [...x.shape];
  shape.splice(ax, 0, 1);
  return reshape(x, shape);
}

/** Removes size-1 axes: the given ones (which must have size 1), or all of them when `axes` is undefined. */
export function squeeze(x: RefTensor, axes?: number | readonly number[]): RefTensor {
  const rank = x.shape.length;
  let drop: Set<number>;
  if (axes === undefined) {
    drop = new Set(x.shape.flatMap((d, k) => (d === 1 ? [k] : [])));
  } else {
    drop = new Set(
      (typeof axes === "number" ? [axes] : axes).map((a) => normalizeAxis(a, rank, "squeeze: axis")),
    );
    for (const k of drop) {
      if (x.shape[k] !== 1) {
        throw new Error(`squeeze: axis ${k} of ${formatShape(x.shape)} has size ${x.shape[k]}, not 1`);
      }
    }
  }
  return reshape(x, x.shape.filter((_, k) => !drop.has(k)));
}
