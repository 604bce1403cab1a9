/**
 * Float64 references of the image metrics, written the way MONAI writes them (`compute_ssim_and_cs`,
 * `compute_ms_ssim`, `compute_mean_error_metrics`) rather than the way voxgen computes them: the window is
 * the full N-D kernel (outer product of the 1-D windows, or 1/∏k) applied by direct valid correlation, and
 * every map is formed explicitly. They check the GPU metrics (separable filtering, stacked channels) on
 * random inputs.
 *
 * @module
 */

import { avgPool2d, avgPool3d } from "./resample.ts";
import { formatShape, type RefTensor, sizeOf, stridesOf } from "./tensor.ts";

/** Options of {@linkcode ssimRef} / {@linkcode msSsimRef}, resolved per spatial axis. */
export interface SsimRefOptions {
  /** "gaussian" or "uniform". */
  kernelType: "gaussian" | "uniform";
  /** Window size per spatial axis. */
  kernelSize: number[];
  /** Gaussian σ per spatial axis. */
  kernelSigma: number[];
  /** Data range L. */
  dataRange: number;
  /** Luminance constant. */
  k1: number;
  /** Contrast constant. */
  k2: number;
}

/** MONAI's defaults for `spatialDims` axes. */
export function ssimRefDefaults(spatialDims: number): SsimRefOptions {
  return {
    kernelType: "gaussian",
    kernelSize: new Array<number>(spatialDims).fill(11),
    kernelSigma: new Array<number>(spatialDims).fill(1.5),
    dataRange: 1,
    k1: 0.01,
    k2: 0.03,
  };
}

/** The full N-D window, row-major over the spatial axes. */
function windowNd(o: SsimRefOptions): Float64Array {
  const n = sizeOf(o.kernelSize);
  if (o.kernelType === "uniform") return new Float64Array(n).fill(1 / n);
  const oneD = o.kernelSize.map((k, a) => {
    const g = Array.from(
      { length: k },
      (_, i) => Math.exp(-((((1 - k) / 2 + i) / o.kernelSigma[a]) ** 2) / 2),
    );
    const s = g.reduce((x, y) => x + y, 0);
    return g.map((v) => v / s);
  });
  const w = new Float64Array(n);
  const strides = stridesOf(o.kernelSize);
  for (let i = 0; i < n; i++) {
    let v = 1;
    for (let a = 0; a < o.kernelSize.length; a++) v *= oneD[a][Math.floor(i / strides[a]) % o.kernelSize[a]];
    w[i] = v;
  }
  return w;
}

/** Per-channel valid correlation of x [N, C, ...spatial] with the N-D window. */
function correlate(x: RefTensor, w: Float64Array, k: number[]): RefTensor {
  const [n, c, ...spatial] = x.shape;
  const outSpatial = spatial.map((d, a) => d - k[a] + 1);
  const out: RefTensor = { shape: [n, c, ...outSpatial], data: new Float64Array(n * c * sizeOf(outSpatial)) };
  const inStrides = stridesOf(spatial);
  const outStrides = stridesOf(outSpatial);
  const kStrides = stridesOf(k);
  const inPlane = sizeOf(spatial);
  const outPlane = sizeOf(outSpatial);
  // Offsets of every window tap relative to the window's corner.
  const tapOffsets = Array.from({ length: w.length }, (_, t) => {
    let off = 0;
    for (let a = 0; a < k.length; a++) off += (Math.floor(t / kStrides[a]) % k[a]) * inStrides[a];
    return off;
  });
  for (let plane = 0; plane < n * c; plane++) {
    for (let o = 0; o < outPlane; o++) {
      let corner = plane * inPlane;
      for (let a = 0; a < k.length; a++) {
        corner += (Math.floor(o / outStrides[a]) % outSpatial[a]) * inStrides[a];
      }
      let s = 0;
      for (let t = 0; t < w.length; t++) s += w[t] * x.data[corner + tapOffsets[t]];
      out.data[plane * outPlane + o] = s;
    }
  }
  return out;
}

function zip(a: RefTensor, b: RefTensor, f: (x: number, y: number) => number): RefTensor {
  return { shape: [...a.shape], data: a.data.map((v, i) => f(v, b.data[i])) };
}

/** Mean over all but the first axis. */
function perItemMean(t: RefTensor): number[] {
  const n = t.shape[0];
  const per = t.data.length / n;
  return Array.from({ length: n }, (_, i) => {
    let s = 0;
    for (let j = 0; j < per; j++) s += t.data[i * per + j];
    return s / per;
  });
}

/** MONAI `compute_ssim_and_cs` followed by the per-item means: `{ ssim, cs }`, one value per batch item. */
export function ssimAndCsRef(
  x: RefTensor,
  y: RefTensor,
  o: SsimRefOptions,
): { ssim: number[]; cs: number[] } {
  if (formatShape(x.shape) !== formatShape(y.shape)) {
    throw new Error(`ssimAndCsRef: shapes ${formatShape(x.shape)} and ${formatShape(y.shape)} differ.`);
  }
  const w = windowNd(o);
  const c1 = (o.k1 * o.dataRange) ** 2;
  const c2 = (o.k2 * o.dataRange) ** 2;
  const mx = correlate(x, w, o.kernelSize);
  const my = correlate(y, w, o.kernelSize);
  const mxx = correlate(zip(x, x, (a, b) => a * b), w, o.kernelSize);
  const myy = correlate(zip(y, y, (a, b) => a * b), w, o.kernelSize);
  const mxy = correlate(zip(x, y, (a, b) => a * b), w, o.kernelSize);
  const cs: RefTensor = { shape: mx.shape, data: new Float64Array(mx.data.length) };
  const ss: RefTensor = { shape: mx.shape, data: new Float64Array(mx.data.length) };
  for (let i = 0; i < mx.data.length; i++) {
    const sx = mxx.data[i] - mx.data[i] * mx.data[i];
    const sy = myy.data[i] - my.data[i] * my.data[i];
    const sxy = mxy.data[i] - mx.data[i] * my.data[i];
    cs.data[i] = (2 * sxy + c2) / (sx + sy + c2);
    ss.data[i] = ((2 * mx.data[i] * my.data[i] + c1) / (mx.data[i] ** 2 + my.data[i] ** 2 + c1)) * cs.data[i];
  }
  return { ssim: perItemMean(ss), cs: perItemMean(cs) };
}

/** MONAI `SSIMMetric` (reduction "none"): SSIM per batch item. */
export function ssimRef(x: RefTensor, y: RefTensor, o: SsimRefOptions): number[] {
  return ssimAndCsRef(x, y, o).ssim;
}

/** MONAI `compute_ms_ssim`: ∏ relu(meanᵢ)^wᵢ with cs at every scale but the last (ssim there). */
export function msSsimRef(
  x: RefTensor,
  y: RefTensor,
  o: SsimRefOptions,
  weights: readonly number[],
): number[] {
  const pool = x.shape.length === 5 ? (t: RefTensor) => avgPool3d(t, 2) : (t: RefTensor) => avgPool2d(t, 2);
  const n = x.shape[0];
  const result = new Array<number>(n).fill(1);
  let a = x;
  let b = y;
  weights.forEach((wgt, s) => {
    const last = s === weights.length - 1;
    const { ssim, cs } = ssimAndCsRef(a, b, o);
    const v = last ? ssim : cs;
    for (let i = 0; i < n; i++) result[i] *= Math.max(v[i], 0) ** wgt;
    if (!last) {
      a = pool(a);
      b = pool(b);
    }
  });
  return result;
}

/** MONAI `compute_mean_error_metrics` with (a − b)² or |a − b|: one value per batch item. */
export function meanErrorRef(x: RefTensor, y: RefTensor, kind: "squared" | "absolute"): number[] {
  return perItemMean(zip(x, y, (a, b) => (kind === "squared" ? (a - b) ** 2 : Math.abs(a - b))));
}
