/**
 * Loading and preprocessing NIfTI volumes for training: file discovery (folders, globs, lists),
 * reorientation to RAS, resampling to a target grid (spacing or size) centred on the field of view,
 * crop/pad, paired label maps resampled through the affines with nearest neighbour, and intensity
 * normalisation. All resampling runs on the GPU through `warp3d` in one pass per volume (after an
 * average-pool pre-filter when downsampling, so small grids do not alias).
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { avgPool3d } from "../engine/ops/resample.ts";
import { tensor } from "../engine/ops/create.ts";
import { warp3d } from "../engine/ops/warp.ts";
import type { Tensor } from "../engine/tensor.ts";
import { type Affine, readNifti } from "../io/nifti.ts";

/** A preprocessed volume on the CPU: values x fastest, shape [nx, ny, nz], RAS affine. */
export interface Volume {
  /** Voxel values, x fastest. */
  data: Float32Array;
  /** [nx, ny, nz]. */
  shape: [number, number, number];
  /** Voxel → world (RAS, mm). */
  affine: Affine;
  /** Where it came from. */
  source: string;
}

/** Options of {@linkcode loadVolume}. */
export interface PreprocessOptions {
  /** Output grid size [nx, ny, nz]. Default: the source field of view at `spacing`. */
  shape?: [number, number, number];
  /** Output voxel size in mm (number = isotropic). Default: chosen so the whole field of view fits `shape`. */
  spacing?: number | [number, number, number];
  /** Intensity normalisation. Default "percentile". */
  normalize?: "minmax" | "percentile" | "none";
  /** Percentiles for "percentile" (default [0.5, 99.5]); values are clipped to them. */
  percentiles?: [number, number];
  /** Output intensity range (default [-1, 1]). */
  range?: [number, number];
  /**
   * Field of view the grid is fitted to: the whole volume (default), or the bounding box of the
   * foreground (voxels above 10% of the 99th percentile) plus `margin` mm.
   */
  fov?: "full" | "foreground";
  /** Margin around the foreground box in mm (default 4). */
  margin?: number;
}

/** Expands folders, simple globs (`*` and `?` in the file name) and files into a sorted list of NIfTI paths. */
export async function listNiftiFiles(specs: string | readonly string[]): Promise<string[]> {
  const out: string[] = [];
  const isNifti = (name: string) => name.endsWith(".nii") || name.endsWith(".nii.gz");
  for (const spec of typeof specs === "string" ? [specs] : specs) {
    const slash = spec.lastIndexOf("/");
    const base = spec.slice(slash + 1);
    if (base.includes("*") || base.includes("?")) {
      const dir = slash >= 0 ? spec.slice(0, slash) || "/" : ".";
      const pattern = new RegExp(
        `^${base.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".")}$`,
      );
      for await (const e of Deno.readDir(dir)) {
        if (e.isFile && pattern.test(e.name)) out.push(`${dir}/${e.name}`);
      }
      continue;
    }
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(spec);
    } catch {
      throw new Error(`No such file or folder: ${spec}`);
    }
    if (info.isDirectory) {
      for await (const e of Deno.readDir(spec)) {
        if (e.isFile && isNifti(e.name)) out.push(`${spec.replace(/\/$/, "")}/${e.name}`);
      }
    } else {
      if (!isNifti(spec)) throw new Error(`${spec} is not a NIfTI file (.nii or .nii.gz).`);
      out.push(spec);
    }
  }
  if (out.length === 0) throw new Error(`No NIfTI files found in ${JSON.stringify(specs)}.`);
  return [...new Set(out)].sort();
}

/** 4×4 matrix product. */
function mul4(a: Affine, b: Affine): Affine {
  return a.map((row) => [0, 1, 2, 3].map((j) => row.reduce((s, v, k) => s + v * b[k][j], 0)));
}

/** Inverse of an affine 4×4 (3×3 block inverted by cofactors). */
export function invertAffine(a: Affine): Affine {
  const [[a00, a01, a02], [a10, a11, a12], [a20, a21, a22]] = a;
  const det = a00 * (a11 * a22 - a12 * a21) - a01 * (a10 * a22 - a12 * a20) + a02 * (a10 * a21 - a11 * a20);
  if (Math.abs(det) < 1e-12) throw new Error("The affine is singular (a voxel axis has zero size).");
  const inv = [
    [(a11 * a22 - a12 * a21) / det, (a02 * a21 - a01 * a22) / det, (a01 * a12 - a02 * a11) / det],
    [(a12 * a20 - a10 * a22) / det, (a00 * a22 - a02 * a20) / det, (a02 * a10 - a00 * a12) / det],
    [(a10 * a21 - a11 * a20) / det, (a01 * a20 - a00 * a21) / det, (a00 * a11 - a01 * a10) / det],
  ];
  const t = [0, 1, 2].map((r) => -(inv[r][0] * a[0][3] + inv[r][1] * a[1][3] + inv[r][2] * a[2][3]));
  return [[...inv[0], t[0]], [...inv[1], t[1]], [...inv[2], t[2]], [0, 0, 0, 1]];
}

/** World-space bounding box (min, max corner) of the voxel centres in [from, to] (default: all). */
function worldBounds(
  shape: readonly number[],
  affine: Affine,
  from: readonly number[] = [0, 0, 0],
  to: readonly number[] = [shape[0] - 1, shape[1] - 1, shape[2] - 1],
): { lo: number[]; hi: number[] } {
  const lo = [Infinity, Infinity, Infinity];
  const hi = [-Infinity, -Infinity, -Infinity];
  for (const cx of [from[0], to[0]]) {
    for (const cy of [from[1], to[1]]) {
      for (const cz of [from[2], to[2]]) {
        for (let r = 0; r < 3; r++) {
          const w = affine[r][0] * cx + affine[r][1] * cy + affine[r][2] * cz + affine[r][3];
          lo[r] = Math.min(lo[r], w);
          hi[r] = Math.max(hi[r], w);
        }
      }
    }
  }
  return { lo, hi };
}

/**
 * The RAS target grid: its affine (diagonal spacing, origin placing the grid's centre on the source field
 * of view's centre) and size.
 */
export function targetGrid(
  sourceShape: readonly number[],
  sourceAffine: Affine,
  opts: Pick<PreprocessOptions, "shape" | "spacing">,
  bounds: { lo: number[]; hi: number[] } = worldBounds(sourceShape, sourceAffine),
): { shape: [number, number, number]; affine: Affine } {
  const { lo, hi } = bounds;
  const extent = hi.map((h, i) => h - lo[i]);
  let spacing: number[];
  if (opts.spacing !== undefined) {
    spacing = typeof opts.spacing === "number"
      ? [opts.spacing, opts.spacing, opts.spacing]
      : [...opts.spacing];
  } else if (opts.shape) {
    // Isotropic spacing that fits the whole field of view into the shape.
    const s = Math.max(...extent.map((e, i) => e / Math.max(opts.shape![i] - 1, 1)));
    spacing = [s, s, s];
  } else {
    const s = Math.min(
      ...[0, 1, 2].map((c) => Math.hypot(sourceAffine[0][c], sourceAffine[1][c], sourceAffine[2][c])),
    );
    spacing = [s, s, s];
  }
  if (spacing.some((s) => !(s > 0))) {
    throw new Error(`spacing ${JSON.stringify(opts.spacing)} must be positive.`);
  }
  const shape = (opts.shape ?? extent.map((e, i) => Math.floor(e / spacing[i]) + 1)) as [
    number,
    number,
    number,
  ];
  if (shape.some((n) => !Number.isInteger(n) || n < 1)) {
    throw new Error(`shape ${JSON.stringify(opts.shape)} must be positive integers.`);
  }
  const centre = lo.map((l, i) => (l + hi[i]) / 2);
  const origin = centre.map((c, i) => c - ((shape[i] - 1) / 2) * spacing[i]);
  return {
    shape,
    affine: [[spacing[0], 0, 0, origin[0]], [0, spacing[1], 0, origin[1]], [0, 0, spacing[2], origin[2]], [
      0,
      0,
      0,
      1,
    ]],
  };
}

/**
 * Resamples `data` (x fastest, `shape`, `affine`) onto the grid (`targetShape`, `targetAffine`) on the GPU.
 * Images use trilinear sampling after an average-pool pre-filter when the grid is coarser; label maps use
 * nearest neighbour. Returns the values x fastest.
 */
export async function resampleToGrid(
  data: Float32Array,
  shape: readonly number[],
  affine: Affine,
  targetShape: readonly number[],
  targetAffine: Affine,
  kind: "image" | "labels",
): Promise<Float32Array> {
  const [nx, ny, nz] = shape;
  let src: Tensor = tensor(data, [1, 1, nz, ny, nx]);
  let srcAffine = affine;
  if (kind === "image") {
    // Pre-filter: average-pool by the integer part of the downsampling factor along each voxel axis.
    const srcSize = [0, 1, 2].map((c) => Math.hypot(affine[0][c], affine[1][c], affine[2][c]));
    const dstSize = [0, 1, 2].map((c) =>
      Math.hypot(targetAffine[0][c], targetAffine[1][c], targetAffine[2][c])
    );
    const minTarget = Math.min(...dstSize);
    const k = srcSize.map((s, i) => Math.max(1, Math.min(Math.floor(minTarget / s), shape[i])));
    if (k.some((v) => v > 1)) {
      const pooled = noGrad(() => avgPool3d(src, [k[2], k[1], k[0]]));
      src.dispose();
      src = pooled;
      // Pooled voxel (i) covers source voxels k·i … k·i + k − 1: its centre is at k·i + (k − 1)/2.
      const scale: Affine = [[k[0], 0, 0, (k[0] - 1) / 2], [0, k[1], 0, (k[1] - 1) / 2], [
        0,
        0,
        k[2],
        (k[2] - 1) / 2,
      ], [0, 0, 0, 1]];
      srcAffine = mul4(affine, scale);
    }
  }
  const toSource = mul4(invertAffine(srcAffine), targetAffine);
  const [tx, ty, tz] = targetShape;
  const out = warp3d(src, {
    size: [tz, ty, tx],
    matrix: toSource.slice(0, 3),
    mode: kind === "image" ? "linear" : "nearest",
    padding: "fill",
    fill: 0,
  });
  src.dispose();
  const values = await out.toArray();
  out.dispose();
  return values;
}

/** Percentile of values (by sorting a sample of at most 1M). */
function percentile(data: Float32Array, p: number): number {
  const step = Math.max(1, Math.floor(data.length / 1_000_000));
  const sample = new Float32Array(Math.ceil(data.length / step));
  for (let i = 0, j = 0; i < data.length; i += step) sample[j++] = data[i];
  sample.sort();
  return sample[Math.min(sample.length - 1, Math.max(0, Math.round((p / 100) * (sample.length - 1))))];
}

/** Normalises intensities in place to `range` (min-max or percentile-clipped). */
export function normalizeIntensity(
  data: Float32Array,
  opts: Pick<PreprocessOptions, "normalize" | "percentiles" | "range">,
): void {
  const mode = opts.normalize ?? "percentile";
  if (mode === "none") return;
  const [r0, r1] = opts.range ?? [-1, 1];
  let lo: number;
  let hi: number;
  if (mode === "minmax") {
    lo = Infinity;
    hi = -Infinity;
    for (const v of data) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  } else {
    const [p0, p1] = opts.percentiles ?? [0.5, 99.5];
    lo = percentile(data, p0);
    hi = percentile(data, p1);
  }
  const scale = hi > lo ? (r1 - r0) / (hi - lo) : 0;
  for (let i = 0; i < data.length; i++) data[i] = r0 + (Math.min(Math.max(data[i], lo), hi) - lo) * scale;
}

/** World bounding box of the foreground (voxels above 10% of the 99th percentile), grown by `margin` mm. */
function foregroundBounds(data: Float32Array, shape: readonly number[], affine: Affine, margin: number) {
  const threshold = 0.1 * percentile(data, 99);
  const from = [Infinity, Infinity, Infinity];
  const to = [-Infinity, -Infinity, -Infinity];
  const [nx, ny] = shape;
  for (let i = 0; i < data.length; i++) {
    if (!(data[i] > threshold)) continue;
    const c = [i % nx, Math.floor(i / nx) % ny, Math.floor(i / (nx * ny))];
    for (let a = 0; a < 3; a++) {
      if (c[a] < from[a]) from[a] = c[a];
      if (c[a] > to[a]) to[a] = c[a];
    }
  }
  if (!Number.isFinite(from[0])) return worldBounds(shape, affine);
  const { lo, hi } = worldBounds(shape, affine, from, to);
  return { lo: lo.map((v) => v - margin), hi: hi.map((v) => v + margin) };
}

/** Loads one NIfTI image and preprocesses it (RAS grid, resampling, normalisation). */
export async function loadVolume(path: string, opts: PreprocessOptions = {}): Promise<Volume> {
  const nii = await readNifti(path);
  if (nii.shape.length > 3) {
    throw new Error(`${path}: 4-D volume (${nii.shape.join("×")}); give a 3-D image.`);
  }
  const bounds = opts.fov === "foreground"
    ? foregroundBounds(nii.data, nii.shape, nii.affine, opts.margin ?? 4)
    : worldBounds(nii.shape, nii.affine);
  const grid = targetGrid(nii.shape, nii.affine, opts, bounds);
  const data = await resampleToGrid(nii.data, nii.shape, nii.affine, grid.shape, grid.affine, "image");
  normalizeIntensity(data, opts);
  return { data, shape: grid.shape, affine: grid.affine, source: path };
}

/** Loads a label map into the grid of `image` (nearest neighbour through both affines). */
export async function loadLabels(path: string, image: Volume): Promise<Volume> {
  const nii = await readNifti(path);
  const data = await resampleToGrid(nii.data, nii.shape, nii.affine, image.shape, image.affine, "labels");
  return { data, shape: image.shape, affine: image.affine, source: path };
}

/** A volume as a tensor [1, 1, nz, ny, nx]. */
export function volumeTensor(v: { data: Float32Array; shape: readonly number[] }): Tensor {
  const [nx, ny, nz] = v.shape;
  return tensor(v.data, [1, 1, nz, ny, nx]);
}
