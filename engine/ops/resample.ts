/**
 * Resampling ops with PyTorch semantics: `interpolate` (nearest, bilinear, trilinear; align_corners=False)
 * and average pooling without padding (`avgPool2d`, `avgPool3d`). All are differentiable; backward passes
 * gather over input positions (no atomics).
 *
 * Interpolation coordinates follow ATen in float32: the ratio is 1/scaleFactor when a scale factor is given
 * (PyTorch's default `recompute_scale_factor=None`) and in/out when a size is given;
 * nearest: src = min(⌊dst·ratio⌋, in − 1); linear: src = max(ratio·(dst + 0.5) − 0.5, 0), neighbours
 * ⌊src⌋ and ⌊src⌋ + 1 clamped to the edge, and an axis whose size does not change is copied. Nearest does
 * not take ATen's legacy `out = in` / `out = 2·in` shortcuts, which only PyTorch's channels-last CPU path
 * applies (its NCHW CPU and CUDA kernels do not): they differ only for scale factors like 1.1 on 5 voxels.
 *
 * The kernels compute taps on the GPU; the backward weighs each output with the same tap arithmetic, so it
 * is the adjoint of the forward as computed. Only the output ranges it visits per input come from the CPU
 * (`rangeTable`); should a fused multiply-add move a linear source coordinate across an integer, the one
 * contribution that could be skipped has a weight of about one ulp.
 *
 * @module
 */

import {
  avgPoolGradKernel,
  avgPoolKernel,
  avgPoolUniforms,
  interpolateGradKernel,
  interpolateKernel,
  type InterpolateKind,
  interpolateUniforms,
  type ResampleVec,
} from "../../kernels/resample.ts";
import { WG } from "../../kernels/types.ts";
import { record } from "../autograd.ts";
import { dispatch } from "../runtime.ts";
import { formatShape } from "../shape.ts";
import { fromData, Tensor } from "../tensor.ts";
import { byRows } from "./blocks.ts";
import { contiguous } from "./map.ts";

/** Options of {@linkcode interpolate}: exactly one of `size` and `scaleFactor`, and a mode. */
export interface InterpolateOptions {
  /** Output spatial size, one entry per spatial axis. */
  size?: readonly number[];
  /** Scale factor (> 0): one for every spatial axis, or one per axis. Output size is ⌊in·scale⌋. */
  scaleFactor?: number | readonly number[];
  /** "nearest" (PyTorch's legacy nearest), "bilinear" (x `[N, C, H, W]`) or "trilinear" (x `[N, C, D, H, W]`). */
  mode: "nearest" | "bilinear" | "trilinear";
}

const MODES = ["nearest", "bilinear", "trilinear"];

function checkInput(op: string, x: unknown): Tensor {
  if (!(x instanceof Tensor)) {
    throw new Error(`${op}: x must be a Tensor, got ${x === null ? "null" : typeof x}.`);
  }
  x.storage(op);
  if (x.dtype !== "float32") throw new Error(`${op}: x must be float32, got ${x.dtype}.`);
  return x;
}

/** One spatial axis of an interpolation: sizes and the scale factor PyTorch passes to its kernel. */
interface Axis {
  inSize: number;
  outSize: number;
  /** The user's scale factor, or undefined when the size was given (ratio in/out). */
  scale: number | undefined;
}

/** Validates the options against x and returns the mode family and per-axis plan. */
function planInterpolate(x: Tensor, opts: InterpolateOptions): { kind: InterpolateKind; axes: Axis[] } {
  const op = "interpolate";
  if (typeof opts !== "object" || opts === null || !MODES.includes(opts.mode)) {
    throw new Error(
      `${op}: mode ${
        JSON.stringify(opts?.mode)
      } is not supported; accepted: "nearest", "bilinear", "trilinear".`,
    );
  }
  const nd = x.rank - 2;
  const wanted = opts.mode === "bilinear" ? [2] : opts.mode === "trilinear" ? [3] : [1, 2, 3];
  if (!wanted.includes(nd)) {
    const accepted = opts.mode === "bilinear"
      ? "[N, C, H, W]"
      : opts.mode === "trilinear"
      ? "[N, C, D, H, W]"
      : "[N, C, W], [N, C, H, W] or [N, C, D, H, W]";
    throw new Error(`${op}: mode "${opts.mode}" needs x ${accepted}, got ${formatShape(x.shape)}.`);
  }
  const inDims = x.shape.slice(2);
  if ((opts.size === undefined) === (opts.scaleFactor === undefined)) {
    throw new Error(`${op}: give exactly one of size and scaleFactor (x ${formatShape(x.shape)}).`);
  }
  let outDims: number[];
  let scales: Array<number | undefined>;
  if (opts.size !== undefined) {
    const size = opts.size;
    if (!Array.isArray(size) || size.length !== nd || size.some((d) => !Number.isInteger(d) || d < 1)) {
      throw new Error(
        `${op}: size ${JSON.stringify(size)} must list ${nd} positive integers, one per spatial axis of x ` +
          `${formatShape(x.shape)}.`,
      );
    }
    outDims = [...size];
    scales = new Array(nd).fill(undefined);
  } else {
    const sf = opts.scaleFactor!;
    const list = typeof sf === "number" ? new Array<number>(nd).fill(sf) : Array.isArray(sf) ? [...sf] : [];
    if (list.length !== nd || list.some((f) => typeof f !== "number" || !(f > 0) || !Number.isFinite(f))) {
      throw new Error(
        `${op}: scaleFactor ${JSON.stringify(sf)} must be a positive finite number or ${nd} of them ` +
          `(x ${formatShape(x.shape)}).`,
      );
    }
    outDims = inDims.map((d, a) => Math.floor(d * list[a]));
    scales = list;
  }
  if (outDims.some((d) => d < 1) || inDims.some((d) => d < 1)) {
    throw new Error(
      `${op}: input ${formatShape(x.shape)} and output spatial size ${
        formatShape(outDims)
      } must be non-empty.`,
    );
  }
  const axes = inDims.map((inSize, a) => ({ inSize, outSize: outDims[a], scale: scales[a] }));
  return { kind: opts.mode === "nearest" ? "nearest" : "linear", axes };
}

/** ATen's source-to-destination ratio of one axis, in float32. */
function ratioOf(axis: Axis): number {
  return Math.fround(axis.scale !== undefined ? 1 / axis.scale : axis.inSize / axis.outSize);
}

/** The input indices output `o` of `axis` reads: ATen's taps, in float32 (as the kernels compute them). */
function tapsOf(kind: InterpolateKind, axis: Axis, ratio: number): (o: number) => number[] {
  const { inSize, outSize } = axis;
  const r = Math.fround;
  if (kind === "nearest") return (o) => [Math.min(Math.floor(r(o * ratio)), inSize - 1)];
  return (o) => {
    if (outSize === inSize) return [o];
    const src = Math.max(r(r(ratio * r(o + 0.5)) - 0.5), 0);
    const i0 = Math.min(Math.floor(src), inSize - 1);
    return [i0, Math.min(i0 + 1, inSize - 1)];
  };
}

/**
 * The backward ranges of every axis in one table: per input index i, `[lo, hi)` of the outputs whose taps
 * include i (contiguous, since taps are monotone in the output index). Returns the table and each axis's
 * first word.
 */
function rangeTable(kind: InterpolateKind, axes: Axis[]): { table: Tensor; rangeAt: number[] } {
  const rangeAt: number[] = [];
  let words = 0;
  for (const axis of axes) {
    rangeAt.push(words);
    words += 2 * axis.inSize;
  }
  const data = new Int32Array(words);
  axes.forEach((axis, a) => {
    const at = rangeAt[a];
    const taps = tapsOf(kind, axis, ratioOf(axis));
    const seen = new Uint8Array(axis.inSize);
    for (let o = 0; o < axis.outSize; o++) {
      for (const i of taps(o)) {
        if (!seen[i]) {
          seen[i] = 1;
          data[at + 2 * i] = o;
        }
        data[at + 2 * i + 1] = o + 1;
      }
    }
  });
  return { table: fromData(data, [words], { dtype: "int32" }), rangeAt };
}

const MAX_GRID = 65535;

/**
 * The thread layout of the resample kernels over `planes` planes of `spatial` (whose last axis each thread
 * covers `vec` positions of): the vector width, group count, reciprocals of the group dims after the first,
 * and the workgroup grid.
 */
function layoutOf(
  op: string,
  planes: number,
  spatial: readonly number[],
): { vec: ResampleVec; groups: number; rcps: number[]; grid: [number, number, number] } {
  const last = spatial.length - 1;
  const vec: ResampleVec = spatial[last] % 4 === 0 ? 4 : 1;
  const dims = spatial.map((d, a) => (a === last ? d / vec : d));
  const groups = dims.reduce((p, d) => p * d, 1);
  const blocks = Math.ceil(groups / WG);
  if (blocks > MAX_GRID) {
    throw new Error(
      `${op}: a spatial size of ${formatShape(spatial)} per channel exceeds what one dispatch covers ` +
        `(${MAX_GRID * WG * vec} positions).`,
    );
  }
  const planeRows = Math.min(planes, MAX_GRID);
  return {
    vec,
    groups,
    rcps: dims.slice(1).map((d) => 1 / d),
    grid: [blocks, planeRows, Math.ceil(planes / planeRows)],
  };
}

/**
 * PyTorch `F.interpolate(x, size | scale_factor, mode, align_corners=False)`: "nearest" for x `[N, C, W]`,
 * `[N, C, H, W]` or `[N, C, D, H, W]`, "bilinear" for `[N, C, H, W]`, "trilinear" for `[N, C, D, H, W]`.
 * Differentiable; the backward of nearest ×k sums each k-block.
 */
export function interpolate(x: Tensor, opts: InterpolateOptions): Tensor {
  const op = "interpolate";
  checkInput(op, x);
  const { kind, axes } = planInterpolate(x, opts);
  const nd = axes.length;
  const planes = x.shape[0] * x.shape[1];
  const inDims = axes.map((a) => a.inSize);
  const outDims = axes.map((a) => a.outSize);
  const ratios = axes.map(ratioOf);
  const xc = contiguous(x);
  const inLen = inDims.reduce((a, b) => a * b, 1);
  const outLen = outDims.reduce((a, b) => a * b, 1);
  // Tensors larger than one storage binding run in blocks of planes (see blocks.ts).
  const y = byRows(xc, planes, inLen, outLen, [x.shape[0], x.shape[1], ...outDims], (src, count) => {
    const out = fromData(null, [count, ...outDims]);
    if (out.size === 0) return out;
    const fwd = layoutOf(op, count, outDims);
    const params = interpolateUniforms(nd, false).pack({
      planes: count,
      groups: fwd.groups,
      offset: src.offset,
      inSize: inDims,
      outSize: outDims,
      ratio: ratios,
      rcp: fwd.rcps,
      rangeAt: [],
    });
    dispatch(
      interpolateKernel(kind, nd, fwd.vec),
      params,
      [src.storage(op).buffer, out.storage(op).buffer],
      fwd.grid,
    );
    return out;
  });
  xc.dispose();
  const inShape = x.shape;
  return record(op, y, [x], (g) => {
    const gc = contiguous(g);
    const { table, rangeAt } = rangeTable(kind, axes);
    const dx = byRows(gc, planes, outLen, inLen, inShape, (src, count) => {
      const out = fromData(null, [count, ...inDims]);
      if (out.size === 0) return out;
      const bwd = layoutOf(op, count, inDims);
      dispatch(
        interpolateGradKernel(kind, nd, bwd.vec),
        interpolateUniforms(nd, true).pack({
          planes: count,
          groups: bwd.groups,
          offset: src.offset,
          inSize: inDims,
          outSize: outDims,
          ratio: ratios,
          rcp: bwd.rcps,
          rangeAt,
        }),
        [src.storage(op).buffer, table.storage(op).buffer, out.storage(op).buffer],
        bwd.grid,
      );
      return out;
    });
    table.dispose();
    gc.dispose();
    return [dx];
  });
}

function perAxis(op: string, v: unknown, nd: number, what: string): number[] {
  const list = typeof v === "number" ? new Array<number>(nd).fill(v) : Array.isArray(v) ? [...v] : [];
  if (list.length !== nd || list.some((k) => !Number.isInteger(k) || k < 1)) {
    throw new Error(`${op}: ${what} ${JSON.stringify(v)} must be a positive integer or ${nd} of them.`);
  }
  return list;
}

function avgPool(op: string, nd: number, x: Tensor, kernel: unknown, stride: unknown): Tensor {
  checkInput(op, x);
  if (x.rank !== nd + 2) {
    const want = nd === 3 ? "[N, C, D, H, W]" : "[N, C, H, W]";
    throw new Error(`${op}: x must be ${want}, got ${formatShape(x.shape)}.`);
  }
  const k = perAxis(op, kernel, nd, "kernel");
  const s = stride === undefined ? k : perAxis(op, stride, nd, "stride");
  const inDims = x.shape.slice(2);
  if (inDims.some((d, a) => d < k[a])) {
    throw new Error(
      `${op}: kernel ${formatShape(k)} is larger than the spatial size ${formatShape(inDims)} of x ` +
        `${formatShape(x.shape)} (no padding).`,
    );
  }
  const outDims = inDims.map((d, a) => Math.floor((d - k[a]) / s[a]) + 1);
  const planes = x.shape[0] * x.shape[1];
  const xc = contiguous(x);
  const inLen = inDims.reduce((a, b) => a * b, 1);
  const outLen = outDims.reduce((a, b) => a * b, 1);
  const y = byRows(xc, planes, inLen, outLen, [x.shape[0], x.shape[1], ...outDims], (src, count) => {
    const out = fromData(null, [count, ...outDims]);
    if (out.size === 0) return out;
    const fwd = layoutOf(op, count, outDims);
    dispatch(
      avgPoolKernel(nd, fwd.vec),
      avgPoolUniforms(nd, false).pack({
        planes: count,
        groups: fwd.groups,
        offset: src.offset,
        inSize: inDims,
        outSize: outDims,
        kernel: k,
        stride: s,
        rcp: fwd.rcps,
      }),
      [src.storage(op).buffer, out.storage(op).buffer],
      fwd.grid,
    );
    return out;
  });
  xc.dispose();
  const inShape = x.shape;
  return record(op, y, [x], (g) => {
    const gc = contiguous(g);
    const dx = byRows(gc, planes, outLen, inLen, inShape, (src, count) => {
      const out = fromData(null, [count, ...inDims]);
      if (out.size === 0) return out;
      const bwd = layoutOf(op, count, inDims);
      dispatch(
        avgPoolGradKernel(nd, bwd.vec),
        avgPoolUniforms(nd, true).pack({
          planes: count,
          groups: bwd.groups,
          offset: src.offset,
          inSize: inDims,
          outSize: outDims,
          kernel: k,
          stride: s,
          rcp: bwd.rcps,
        }),
        [src.storage(op).buffer, out.storage(op).buffer],
        bwd.grid,
      );
      return out;
    });
    gc.dispose();
    return [dx];
  });
}

/**
 * PyTorch `F.avg_pool3d(x, kernel, stride)` without padding (floor mode): x `[N, C, D, H, W]`; each output
 * is the mean of its window. `stride` defaults to `kernel`. Differentiable (backward spreads g/volume).
 */
export function avgPool3d(
  x: Tensor,
  kernel: number | [number, number, number],
  stride?: number | [number, number, number],
): Tensor {
  return avgPool("avgPool3d", 3, x, kernel, stride);
}

/** PyTorch `F.avg_pool2d(x, kernel, stride)` without padding (floor mode): x `[N, C, H, W]`. */
export function avgPool2d(
  x: Tensor,
  kernel: number | [number, number],
  stride?: number | [number, number],
): Tensor {
  return avgPool("avgPool2d", 2, x, kernel, stride);
}
