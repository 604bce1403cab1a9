/**
 * Resampling references: `interpolate` (PyTorch `F.interpolate` with `align_corners=False`) and average
 * pooling without padding.
 *
 * ## What `interpolate` matches
 *
 * PyTorch (ATen `UpSample.h`, CPU and CUDA kernels), for `mode` "nearest" (the legacy, OpenCV-style
 * nearest, not "nearest-exact"), "bilinear" and "trilinear" with `align_corners=False`:
 *
 * - Output size: `size` as given, or ⌊in · scaleFactor⌋ computed in float64 (ATen `compute_output_size`).
 * - Ratio per axis (ATen `compute_scales_value`): when `scaleFactor` is given and `recomputeScaleFactor` is
 *   not true (PyTorch's default `recompute_scale_factor=None`), the ratio is 1/scaleFactor — not in/out, so
 *   e.g. in = 5, scaleFactor = 2.5 uses 0.4 even though out = 12. With `size`, or with
 *   `recomputeScaleFactor: true`, the ratio is in/out.
 * - nearest: src = min(⌊dst · ratio⌋, in − 1), where ratio and the product are float32 (ATen computes them in
 *   `float` for every dtype), with ATen's shortcuts: out = in copies, and out = 2·in takes dst >> 1.
 * - linear modes, per axis: out = in copies; otherwise src = max(ratio·(dst + 0.5) − 0.5, 0),
 *   i0 = min(⌊src⌋, in − 1), i1 = i0 + (i0 < in − 1 ? 1 : 0), λ1 = clamp(src − i0, 0, 1), λ0 = 1 − λ1, and the
 *   result is the tensor product of the per-axis weights over the 2ᵏ corners.
 * - Coordinate precision: PyTorch does the ratio / src / λ arithmetic in the tensor's "opmath" type, which is
 *   float32 for float32 tensors. By default (`precision: "float32"`) every one of those operations is rounded
 *   to float32 with `Math.fround`, exactly what a float32 PyTorch tensor (and an f32 WGSL kernel) computes,
 *   up to one f32 ulp in src where a compiler fuses a multiply-add. `precision: "float64"` matches PyTorch on
 *   float64 tensors. The weighted sum itself is always accumulated in float64.
 *
 * @module
 */

import type { Pair, Triple } from "./conv.ts";
import { checkTensor, formatShape, type RefTensor, sizeOf, strideOffsets, stridesOf } from "./tensor.ts";

/** Interpolation modes of {@linkcode interpolate}. */
export type InterpolateMode = "nearest" | "bilinear" | "trilinear";

/** Options of {@linkcode interpolate}; exactly one of `size` and `scaleFactor` must be given. */
export interface InterpolateOptions {
  /** Output spatial size: one number for every spatial axis, or one per axis. */
  size?: number | readonly number[];
  /** Scale factor (> 0): one for every spatial axis, or one per axis. */
  scaleFactor?: number | readonly number[];
  /** "nearest" (legacy PyTorch nearest), "bilinear" (4-D input) or "trilinear" (5-D input). */
  mode: InterpolateMode;
  /** PyTorch `recompute_scale_factor`: when true the ratio is in/out even if `scaleFactor` is given. Default false. */
  recomputeScaleFactor?: boolean;
  /**
   * Arithmetic of the linear-mode source coordinates and weights: "float32" (default, like a float32 tensor)
   * or "float64" (like a float64 tensor). "nearest" always uses float32, as PyTorch does for every dtype.
   */
  precision?: "float32" | "float64";
}

function perAxis(v: number | readonly number[], n: number, what: string): number[] {
  const list = typeof v === "number" ? new Array<number>(n).fill(v) : [...v];
  if (list.length !== n) {
    throw new Error(`interpolate: ${what} ${JSON.stringify(v)} must have one entry per spatial axis (${n})`);
  }
  return list;
}

function spatialRank(x: RefTensor, mode: InterpolateMode): number {
  const nd = x.shape.length - 2;
  const want = mode === "bilinear" ? 2 : mode === "trilinear" ? 3 : undefined;
  if (want !== undefined && nd !== want) {
    throw new Error(
      `interpolate: mode "${mode}" needs a ${want + 2}-D input [N, C, ...], got ${formatShape(x.shape)}`,
    );
  }
  if (nd < 1 || nd > 3) {
    throw new Error(
      `interpolate: input must be [N, C, ...spatial] with 1-3 spatial axes, got ${formatShape(x.shape)}`,
    );
  }
  return nd;
}

/** Per-axis output sizes and the scale factors PyTorch passes to the kernel (undefined = use in/out). */
function plan(x: RefTensor, opts: InterpolateOptions): { out: number[]; scales: Array<number | undefined> } {
  const nd = spatialRank(x, opts.mode);
  const inDims = x.shape.slice(2);
  if ((opts.size === undefined) === (opts.scaleFactor === undefined)) {
    throw new Error("interpolate: give exactly one of size and scaleFactor");
  }
  let out: number[];
  let scales: Array<number | undefined>;
  if (opts.size !== undefined) {
    if (opts.recomputeScaleFactor) {
      throw new Error("interpolate: recomputeScaleFactor is only valid with scaleFactor");
    }
    out = perAxis(opts.size, nd, "size");
    scales = new Array(nd).fill(undefined);
  } else {
    const sf = perAxis(opts.scaleFactor!, nd, "scaleFactor");
    if (sf.some((f) => !(f > 0) || !Number.isFinite(f))) {
      throw new Error(
        `interpolate: scaleFactor ${JSON.stringify(opts.scaleFactor)} must be positive and finite`,
      );
    }
    out = inDims.map((d, a) => Math.floor(d * sf[a]));
    scales = opts.recomputeScaleFactor ? new Array(nd).fill(undefined) : sf;
  }
  if (out.some((o) => !Number.isInteger(o) || o <= 0) || inDims.some((d) => d <= 0)) {
    throw new Error(
      `interpolate: input and output sizes must be positive, got input ${formatShape(inDims)} and output ${
        formatShape(out)
      }`,
    );
  }
  return { out, scales };
}

/** The output shape of `interpolate(x, opts)` for an input of shape `xShape`. */
export function interpolateOutputShape(xShape: readonly number[], opts: InterpolateOptions): number[] {
  const { out } = plan({ shape: [...xShape], data: new Float64Array(sizeOf(xShape)) }, opts);
  return [xShape[0], xShape[1], ...out];
}

/** Source index of output position `dst` along one axis for legacy "nearest" (ATen `nearest_idx`). */
function nearestIndex(dst: number, inSize: number, outSize: number, scale: number | undefined): number {
  if (outSize === inSize) return dst;
  if (outSize === 2 * inSize) return dst >> 1;
  const ratio = Math.fround(scale !== undefined ? 1 / scale : inSize / outSize);
  return Math.min(Math.floor(Math.fround(dst * ratio)), inSize - 1);
}

/** Per-axis taps of linear interpolation (ATen `compute_source_index_and_lambda`, align_corners=false). */
function linearTaps(
  inSize: number,
  outSize: number,
  scale: number | undefined,
  f32: boolean,
): { i0: number[]; i1: number[]; l0: number[]; l1: number[] } {
  const r = f32 ? Math.fround : (v: number) => v;
  const i0: number[] = [];
  const i1: number[] = [];
  const l0: number[] = [];
  const l1: number[] = [];
  const ratio = r(scale !== undefined ? 1 / scale : inSize / outSize);
  for (let dst = 0; dst < outSize; dst++) {
    if (outSize === inSize) {
      i0.push(dst);
      i1.push(dst);
      l0.push(1);
      l1.push(0);
      continue;
    }
    let src = r(r(ratio * r(dst + 0.5)) - 0.5);
    if (src < 0) src = 0;
    const a = Math.min(Math.floor(src), inSize - 1);
    const lam = Math.min(Math.max(r(src - a), 0), 1);
    i0.push(a);
    i1.push(a + (a < inSize - 1 ? 1 : 0));
    l1.push(lam);
    l0.push(r(1 - lam));
  }
  return { i0, i1, l0, l1 };
}

/**
 * PyTorch `F.interpolate(x, size | scale_factor, mode, align_corners=False)` over the trailing spatial axes
 * of x [N, C, ...spatial]: "nearest" (1-3 spatial axes), "bilinear" (2) or "trilinear" (3). See the module
 * documentation for exactly which PyTorch arithmetic is reproduced.
 */
export function interpolate(x: RefTensor, opts: InterpolateOptions): RefTensor {
  checkTensor(x, "interpolate: x");
  const { out, scales } = plan(x, opts);
  const nd = out.length;
  const inDims = x.shape.slice(2);
  const nc = x.shape[0] * x.shape[1];
  const inSpatial = sizeOf(inDims);
  const inStrides = stridesOf(inDims);
  const outSpatial = sizeOf(out);
  const shape = [x.shape[0], x.shape[1], ...out];
  const data = new Float64Array(nc * outSpatial);
  const outIdx = new Array<number>(nd);

  if (opts.mode === "nearest") {
    const src = out.map((o, a) =>
      Array.from({ length: o }, (_, d) => nearestIndex(d, inDims[a], o, scales[a]))
    );
    for (let p = 0; p < outSpatial; p++) {
      let rem = p;
      for (let a = nd - 1; a >= 0; a--) {
        outIdx[a] = rem % out[a];
        rem = Math.floor(rem / out[a]);
      }
      let off = 0;
      for (let a = 0; a < nd; a++) off += src[a][outIdx[a]] * inStrides[a];
      for (let c = 0; c < nc; c++) data[c * outSpatial + p] = x.data[c * inSpatial + off];
    }
    return { shape, data };
  }

  if (opts.mode !== "bilinear" && opts.mode !== "trilinear") {
    throw new Error(`interpolate: unknown mode ${String(opts.mode)}`);
  }
  if (opts.precision !== undefined && opts.precision !== "float32" && opts.precision !== "float64") {
    throw new Error(`interpolate: precision must be "float32" or "float64", got ${String(opts.precision)}`);
  }
  const f32 = opts.precision !== "float64";
  const taps = out.map((o, a) => linearTaps(inDims[a], o, scales[a], f32));
  const corners = 1 << nd;
  for (let p = 0; p < outSpatial; p++) {
    let rem = p;
    for (let a = nd - 1; a >= 0; a--) {
      outIdx[a] = rem % out[a];
      rem = Math.floor(rem / out[a]);
    }
    for (let c = 0; c < nc; c++) {
      let acc = 0;
      // Corner bit a selects the upper (i1, λ1) or lower (i0, λ0) neighbour along axis a.
      for (let corner = 0; corner < corners; corner++) {
        let w = 1;
        let off = 0;
        for (let a = 0; a < nd; a++) {
          const t = taps[a];
          const o = outIdx[a];
          const upper = (corner >> (nd - 1 - a)) & 1;
          w *= upper ? t.l1[o] : t.l0[o];
          off += (upper ? t.i1[o] : t.i0[o]) * inStrides[a];
        }
        acc += w * x.data[c * inSpatial + off];
      }
      data[c * outSpatial + p] = acc;
    }
  }
  return { shape, data };
}

function avgPoolNd(x: RefTensor, kernel: number[], stride: number[], name: string): RefTensor {
  const nd = kernel.length;
  checkTensor(x, `${name}: x`);
  if (x.shape.length !== nd + 2) {
    throw new Error(`${name}: x must have ${nd + 2} dims [N, C, ...], got ${formatShape(x.shape)}`);
  }
  for (const v of [...kernel, ...stride]) {
    if (!Number.isInteger(v) || v < 1) {
      throw new Error(`${name}: kernel ${kernel} and stride ${stride} must be positive integers`);
    }
  }
  const inDims = x.shape.slice(2);
  const out = inDims.map((d, a) => Math.floor((d - kernel[a]) / stride[a]) + 1);
  if (out.some((o) => o <= 0)) {
    throw new Error(
      `${name}: kernel ${formatShape(kernel)} is larger than the input ${formatShape(x.shape)}`,
    );
  }
  const inStrides = stridesOf(inDims);
  const inSpatial = sizeOf(inDims);
  const nc = x.shape[0] * x.shape[1];
  // Offsets of the window taps relative to the window's corner, and of each window's corner.
  const window = strideOffsets(kernel, inStrides);
  const corners = strideOffsets(out, inStrides.map((s, a) => s * stride[a]));
  const data = new Float64Array(nc * corners.length);
  for (let c = 0; c < nc; c++) {
    for (let p = 0; p < corners.length; p++) {
      let s = 0;
      for (const w of window) s += x.data[c * inSpatial + corners[p] + w];
      data[c * corners.length + p] = s / window.length;
    }
  }
  return { shape: [x.shape[0], x.shape[1], ...out], data };
}

function toList(v: Triple | Pair, n: number, what: string): number[] {
  const l = typeof v === "number" ? new Array<number>(n).fill(v) : [...v];
  if (l.length !== n) throw new Error(`${what} ${JSON.stringify(v)} must be a number or have ${n} entries`);
  return l;
}

/**
 * PyTorch `F.avg_pool3d(x, kernel, stride)` with no padding (and so no count_include_pad question) and
 * ceil_mode false: x [N, C, D, H, W]; each output is the mean of its kd·kh·kw window. `stride` defaults to
 * `kernel`.
 */
export function avgPool3d(x: RefTensor, kernel: Triple, stride?: Triple): RefTensor {
  const k = toList(kernel, 3, "avgPool3d: kernel");
  return avgPoolNd(x, k, stride === undefined ? k : toList(stride, 3, "avgPool3d: stride"), "avgPool3d");
}

/** PyTorch `F.avg_pool2d(x, kernel, stride)` without padding: x [N, C, H, W]; `stride` defaults to `kernel`. */
export function avgPool2d(x: RefTensor, kernel: Pair, stride?: Pair): RefTensor {
  const k = toList(kernel, 2, "avgPool2d: kernel");
  return avgPoolNd(x, k, stride === undefined ? k : toList(stride, 2, "avgPool2d: stride"), "avgPool2d");
}
