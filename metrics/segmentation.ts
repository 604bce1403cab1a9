/**
 * Overlap and surface-distance metrics of label volumes, with MONAI's definitions (`compute_dice`,
 * `compute_hausdorff_distance`, `compute_average_surface_distance`, `get_mask_edges`,
 * `get_surface_distance`), computed on the CPU:
 *
 * - Dice = 2|P ∩ G| / (|P| + |G|).
 * - Edges: a mask XOR its binary erosion by the cross-shaped (face-connected) element, voxels outside the
 *   image counting as background, so foreground on the image border is edge.
 * - Surface distances: for every edge voxel of one mask, the Euclidean distance (in mm, using the voxel
 *   spacing) to the nearest edge voxel of the other, from an exact separable distance transform
 *   (Felzenszwalb & Huttenlocher 2012) over the bounding box of both masks.
 * - HD95: the 95th percentile (linear interpolation, as `torch.quantile`) of each direction's distances,
 *   then the larger of the two. HD (no percentile) is the maximum.
 * - ASSD: the mean of both directions' distances pooled together (not the mean of the two means).
 *
 * Empty masks give exactly what MONAI gives (MONAI warns; these functions do not):
 *
 * | case                     | Dice                        | HD95 | HD  | ASSD | ASD (directed) |
 * |--------------------------|-----------------------------|------|-----|------|----------------|
 * | ground truth empty       | NaN (0 with ignoreEmpty off)| NaN  | +∞  | +∞   | +∞             |
 * | prediction empty         | 0                           | NaN  | +∞  | +∞   | +∞             |
 * | both empty               | NaN (1 with ignoreEmpty off)| NaN  | NaN | NaN  | NaN            |
 *
 * (HD95 is NaN rather than +∞ because MONAI interpolates between infinite distances, ∞ − ∞ = NaN.)
 *
 * Volumes are row-major arrays with a shape (2-D or 3-D, last axis fastest) and a spacing per axis in the
 * same order. A NIfTI volume read by `readNifti` (x fastest) has shape `[nz, ny, nx]` and spacing
 * `[sz, sy, sx]` in this order.
 *
 * @module
 */

/** A label volume: row-major values (last axis fastest) and their shape. */
export interface LabelVolume {
  /** Values; voxels equal to the label (or non-zero) are foreground. */
  data: ArrayLike<number>;
  /** Sizes of the axes, slowest first (e.g. `[nz, ny, nx]`). */
  shape: readonly number[];
}

/** Which voxels are foreground. */
export interface LabelOptions {
  /** Foreground = voxels equal to this value (default: every non-zero voxel). */
  label?: number;
}

/** Options of {@linkcode dice}. */
export interface DiceOptions extends LabelOptions {
  /** An empty ground truth gives NaN (default true, MONAI's `ignore_empty`); otherwise 1 if the prediction is also empty, else 0. */
  ignoreEmpty?: boolean;
}

/** Options of the surface-distance metrics. */
export interface SurfaceOptions extends LabelOptions {
  /** Voxel size per axis (in `shape` order), or one number for all (default 1). */
  spacing?: number | readonly number[];
}

/** Options of {@linkcode hausdorffDistance}. */
export interface HausdorffOptions extends SurfaceOptions {
  /** Percentile in [0, 100] of each direction's distances (default: none, the maximum; 0 also means the maximum, as in MONAI). */
  percentile?: number;
  /** Only prediction → ground truth (default false: the larger of both directions). */
  directed?: boolean;
}

/** Edge-to-edge distances in both directions, as MONAI's `get_edge_surface_distance` returns them. */
export interface SurfaceDistances {
  /** For each prediction edge voxel, the distance to the nearest ground-truth edge voxel. */
  predToGt: Float64Array;
  /** For each ground-truth edge voxel, the distance to the nearest prediction edge voxel. */
  gtToPred: Float64Array;
}

// --- Input handling --------------------------------------------------------------------------------------

function foreground(op: string, name: string, v: LabelVolume, opts: LabelOptions): Uint8Array {
  if (!v || !v.data || !Array.isArray(v.shape)) {
    throw new Error(`${op}: ${name} must be { data, shape } (a label volume).`);
  }
  const n = v.shape.reduce((a, b) => a * b, 1);
  if (v.shape.some((d) => !Number.isInteger(d) || d < 1) || v.data.length !== n) {
    throw new Error(
      `${op}: ${name} has ${v.data.length} values for shape [${v.shape.join(", ")}] (${n} voxels).`,
    );
  }
  const mask = new Uint8Array(n);
  const { label } = opts;
  for (let i = 0; i < n; i++) {
    const x = v.data[i];
    mask[i] = (label === undefined ? x > 0 || x < 0 : x === label) ? 1 : 0;
  }
  return mask;
}

function checkSameShape(op: string, pred: LabelVolume, gt: LabelVolume): void {
  if (pred.shape.length !== gt.shape.length || pred.shape.some((d, i) => d !== gt.shape[i])) {
    throw new Error(
      `${op}: pred [${pred.shape.join(", ")}] and gt [${gt.shape.join(", ")}] must have the same shape.`,
    );
  }
}

function resolveSpacing(op: string, spacing: number | readonly number[] | undefined, rank: number): number[] {
  const list = spacing === undefined
    ? new Array<number>(rank).fill(1)
    : typeof spacing === "number"
    ? new Array<number>(rank).fill(spacing)
    : [...spacing];
  if (list.length !== rank || list.some((s) => typeof s !== "number" || !Number.isFinite(s) || s <= 0)) {
    const shown = JSON.stringify(spacing);
    throw new Error(`${op}: spacing ${shown} must be a positive number or ${rank} of them (one per axis).`);
  }
  return list;
}

// --- Dice ------------------------------------------------------------------------------------------------

/**
 * Dice coefficient 2|P ∩ G| / (|P| + |G|) of the foregrounds of `pred` and `gt` (MONAI `compute_dice` on one
 * channel). An empty ground truth gives NaN (or, with `ignoreEmpty: false`, 1 when the prediction is also
 * empty and 0 otherwise).
 */
export function dice(pred: LabelVolume, gt: LabelVolume, opts: DiceOptions = {}): number {
  const op = "dice";
  checkSameShape(op, pred, gt);
  const p = foreground(op, "pred", pred, opts);
  const g = foreground(op, "gt", gt, opts);
  let both = 0;
  let np = 0;
  let ng = 0;
  for (let i = 0; i < p.length; i++) {
    np += p[i];
    ng += g[i];
    both += p[i] & g[i];
  }
  if (ng > 0) return (2 * both) / (ng + np);
  if (opts.ignoreEmpty ?? true) return NaN;
  return np === 0 ? 1 : 0;
}

// --- Edges and distance transform -----------------------------------------------------------------------

/** Inclusive-exclusive bounding box of the union of two masks, or null when both are empty. */
function boundingBox(
  a: Uint8Array,
  b: Uint8Array,
  shape: readonly number[],
): { lo: number[]; hi: number[] } | null {
  const rank = shape.length;
  const lo = new Array<number>(rank).fill(Infinity);
  const hi = new Array<number>(rank).fill(-Infinity);
  const idx = new Array<number>(rank).fill(0);
  for (let i = 0; i < a.length; i++) {
    if (a[i] | b[i]) {
      for (let d = 0; d < rank; d++) {
        if (idx[d] < lo[d]) lo[d] = idx[d];
        if (idx[d] + 1 > hi[d]) hi[d] = idx[d] + 1;
      }
    }
    for (let d = rank - 1; d >= 0; d--) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
  return lo[0] === Infinity ? null : { lo, hi };
}

/** The part of `mask` inside the box, as a new row-major array of the box's shape. */
function crop(mask: Uint8Array, shape: readonly number[], lo: number[], size: number[]): Uint8Array {
  const rank = shape.length;
  const out = new Uint8Array(size.reduce((a, b) => a * b, 1));
  const strides = shape.map((_, d) => shape.slice(d + 1).reduce((a, b) => a * b, 1));
  const idx = new Array<number>(rank).fill(0);
  for (let o = 0; o < out.length; o++) {
    let src = 0;
    for (let d = 0; d < rank; d++) src += (lo[d] + idx[d]) * strides[d];
    out[o] = mask[src];
    for (let d = rank - 1; d >= 0; d--) {
      if (++idx[d] < size[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

/**
 * Edge voxels of `mask` (row-major, `shape`): foreground voxels with a background face-neighbour, voxels
 * outside the array counting as background (scipy `binary_erosion` with border 0, XOR the mask).
 */
export function maskEdges(mask: Uint8Array, shape: readonly number[]): Uint8Array {
  const rank = shape.length;
  const strides = shape.map((_, d) => shape.slice(d + 1).reduce((a, b) => a * b, 1));
  const edges = new Uint8Array(mask.length);
  const idx = new Array<number>(rank).fill(0);
  for (let i = 0; i < mask.length; i++) {
    if (mask[i]) {
      let interior = true;
      for (let d = 0; d < rank && interior; d++) {
        const c = idx[d];
        if (c === 0 || c === shape[d] - 1 || !mask[i - strides[d]] || !mask[i + strides[d]]) interior = false;
      }
      edges[i] = interior ? 0 : 1;
    }
    for (let d = rank - 1; d >= 0; d--) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
  return edges;
}

/**
 * Exact squared Euclidean distance (in mm²) from every voxel to the nearest voxel where `sites` is set,
 * with anisotropic `spacing`: one lower-envelope-of-parabolas pass per axis (Felzenszwalb & Huttenlocher).
 * +Infinity everywhere when there are no sites.
 */
export function squaredDistanceTransform(
  sites: Uint8Array,
  shape: readonly number[],
  spacing: readonly number[],
): Float64Array {
  const n = sites.length;
  const f = new Float64Array(n);
  for (let i = 0; i < n; i++) f[i] = sites[i] ? 0 : Infinity;
  const longest = Math.max(...shape);
  const line = new Float64Array(longest);
  const out = new Float64Array(longest);
  const v = new Int32Array(longest);
  const z = new Float64Array(longest + 1);
  const strides = shape.map((_, d) => shape.slice(d + 1).reduce((a, b) => a * b, 1));
  for (let axis = 0; axis < shape.length; axis++) {
    const len = shape[axis];
    const stride = strides[axis];
    const w = spacing[axis] * spacing[axis];
    // Every line along `axis` starts at an index whose coordinate on `axis` is 0.
    const outer = n / (len * stride);
    for (let o = 0; o < outer; o++) {
      for (let inner = 0; inner < stride; inner++) {
        const start = o * len * stride + inner;
        for (let q = 0; q < len; q++) line[q] = f[start + q * stride];
        lowerEnvelope(line, out, len, w, v, z);
        for (let q = 0; q < len; q++) f[start + q * stride] = out[q];
      }
    }
  }
  return f;
}

/** out[q] = min_p line[p] + w·(q − p)² over the finite line[p] (all +∞ when there are none). */
function lowerEnvelope(
  line: Float64Array,
  out: Float64Array,
  len: number,
  w: number,
  v: Int32Array,
  z: Float64Array,
): void {
  let k = -1;
  for (let q = 0; q < len; q++) {
    const fq = line[q];
    if (fq === Infinity) continue;
    if (k < 0) {
      k = 0;
      v[0] = q;
      z[0] = -Infinity;
      z[1] = Infinity;
      continue;
    }
    // Where the parabola from q overtakes the rightmost one of the envelope; drop those it hides
    // (z[0] = −∞ stops the loop at the first parabola).
    const hq = fq + w * q * q;
    let p = v[k];
    let s = (hq - (line[p] + w * p * p)) / (2 * w * (q - p));
    while (s <= z[k]) {
      p = v[--k];
      s = (hq - (line[p] + w * p * p)) / (2 * w * (q - p));
    }
    k++;
    v[k] = q;
    z[k] = s;
    z[k + 1] = Infinity;
  }
  if (k < 0) {
    out.fill(Infinity, 0, len);
    return;
  }
  let j = 0;
  for (let q = 0; q < len; q++) {
    while (z[j + 1] < q) j++;
    const p = v[j];
    out[q] = line[p] + w * (q - p) * (q - p);
  }
}

/** Distances at the set voxels of `from` to the nearest set voxel of `to`, MONAI's `get_surface_distance`. */
function directedDistances(
  from: Uint8Array,
  to: Uint8Array,
  shape: readonly number[],
  spacing: readonly number[],
): Float64Array {
  const count = (m: Uint8Array): number => m.reduce((s, x) => s + x, 0);
  const nFrom = count(from);
  const nTo = count(to);
  // MONAI: nothing to measure to → +∞ for every `from` voxel; nothing to measure from (but something to
  // measure to) → +∞ for every `to` voxel.
  if (nTo === 0) return new Float64Array(nFrom).fill(Infinity);
  if (nFrom === 0) return new Float64Array(nTo).fill(Infinity);
  const d2 = squaredDistanceTransform(to, shape, spacing);
  const out = new Float64Array(nFrom);
  let k = 0;
  for (let i = 0; i < from.length; i++) if (from[i]) out[k++] = Math.sqrt(d2[i]);
  return out;
}

/**
 * Edge-to-edge distances between the foregrounds of `pred` and `gt` in both directions (MONAI
 * `get_edge_surface_distance` with `symmetric=True`), in the units of `spacing`. Edge voxels are listed in
 * row-major order. Empty masks follow MONAI (see the module documentation).
 */
export function surfaceDistances(
  pred: LabelVolume,
  gt: LabelVolume,
  opts: SurfaceOptions = {},
): SurfaceDistances {
  const op = "surfaceDistances";
  checkSameShape(op, pred, gt);
  const p = foreground(op, "pred", pred, opts);
  const g = foreground(op, "gt", gt, opts);
  const spacing = resolveSpacing(op, opts.spacing, pred.shape.length);
  const box = boundingBox(p, g, pred.shape);
  if (!box) return { predToGt: new Float64Array(0), gtToPred: new Float64Array(0) };
  // Cropping to the union's bounding box changes no distance: every edge voxel of both masks lies inside,
  // and outside the box (in the image or not) is background either way.
  const size = box.hi.map((h, d) => h - box.lo[d]);
  const pe = maskEdges(crop(p, pred.shape, box.lo, size), size);
  const ge = maskEdges(crop(g, pred.shape, box.lo, size), size);
  return {
    predToGt: directedDistances(pe, ge, size, spacing),
    gtToPred: directedDistances(ge, pe, size, spacing),
  };
}

/** `torch.quantile` (linear interpolation, through `torch.lerp`) of unsorted values; NaN when empty. */
function quantile(values: Float64Array, q: number): number {
  if (values.length === 0) return NaN;
  const sorted = Float64Array.from(values).sort();
  const rank = q * (sorted.length - 1);
  const below = Math.floor(rank);
  const above = Math.ceil(rank);
  const w = rank - below;
  const a = sorted[below];
  const b = sorted[above];
  // torch.lerp's two-sided form; with infinite ends it yields NaN (∞ − ∞), which MONAI then reports.
  return w < 0.5 ? a + w * (b - a) : b - (b - a) * (1 - w);
}

function directedHausdorff(values: Float64Array, percentile: number | undefined): number {
  if (values.length === 0) return NaN;
  if (!percentile) return values.reduce((m, v) => Math.max(m, v), -Infinity);
  return quantile(values, percentile / 100);
}

/**
 * Hausdorff distance between the foreground surfaces (MONAI `compute_hausdorff_distance`): the maximum
 * (or the `percentile`-th percentile) of each direction's edge distances, then the larger of the two (or
 * only prediction → ground truth with `directed`). In the units of `spacing`.
 */
export function hausdorffDistance(pred: LabelVolume, gt: LabelVolume, opts: HausdorffOptions = {}): number {
  const { percentile } = opts;
  if (percentile !== undefined && !(typeof percentile === "number" && percentile >= 0 && percentile <= 100)) {
    throw new Error(`hausdorffDistance: percentile ${JSON.stringify(percentile)} must be in [0, 100].`);
  }
  const d = surfaceDistances(pred, gt, opts);
  const forward = directedHausdorff(d.predToGt, percentile);
  if (opts.directed) return forward;
  const backward = directedHausdorff(d.gtToPred, percentile);
  // torch.max over a stack propagates NaN.
  return Number.isNaN(forward) || Number.isNaN(backward) ? NaN : Math.max(forward, backward);
}

/**
 * 95th-percentile Hausdorff distance (MONAI `compute_hausdorff_distance(percentile=95)`): the 95th
 * percentile of each direction's edge-to-edge distances, then the larger. In the units of `spacing`.
 */
export function hausdorff95(pred: LabelVolume, gt: LabelVolume, opts: SurfaceOptions = {}): number {
  return hausdorffDistance(pred, gt, { ...opts, percentile: 95 });
}

/**
 * Average symmetric surface distance (MONAI `compute_average_surface_distance(symmetric=True)`): the mean
 * of the edge-to-edge distances of both directions pooled into one list. In the units of `spacing`.
 */
export function assd(pred: LabelVolume, gt: LabelVolume, opts: SurfaceOptions = {}): number {
  const d = surfaceDistances(pred, gt, opts);
  const n = d.predToGt.length + d.gtToPred.length;
  if (n === 0) return NaN;
  let s = 0;
  for (const v of d.predToGt) s += v;
  for (const v of d.gtToPred) s += v;
  return s / n;
}

/**
 * Average surface distance from the prediction to the ground truth only (MONAI
 * `compute_average_surface_distance(symmetric=False)`).
 */
export function averageSurfaceDistance(
  pred: LabelVolume,
  gt: LabelVolume,
  opts: SurfaceOptions = {},
): number {
  const d = surfaceDistances(pred, gt, opts).predToGt;
  if (d.length === 0) return NaN;
  return d.reduce((s, v) => s + v, 0) / d.length;
}
