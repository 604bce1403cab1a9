/**
 * The metrics of the cDPM quality study (docs/cdpm.md): models that build volumes slice by slice are judged
 * per view, since a model can make perfect axial slices that do not fit together along z.
 *
 * - **Per view** (axial: slices at fixed z, coronal: fixed y, sagittal: fixed x), on the 2-D slices of that
 *   view: voxel MMD² between the pooled slices of the generated and the real set (Gaussian kernel with one
 *   σ per view, and linear); the MS-SSIM of each generated volume to its nearest real volume, where the
 *   similarity of two volumes in a view is the mean 2-D MS-SSIM of their slices at the same positions; and
 *   diversity, that similarity averaged over pairs of generated volumes, to compare with the real set's.
 * - **Inter-slice roughness** along an axis, E‖x_{k+1} − x_k‖² (mean over neighbouring slice pairs and
 *   voxels); its ratio to the real set's is ρ: ≈ 1 when consecutive slices fit together as in real volumes,
 *   ≫ 1 when they are generated independently.
 *
 * Volumes are Float32Arrays of shape [nx, ny, nz], x fastest (as `generate` returns them).
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { scope } from "../engine/memory.ts";
import { tensor } from "../engine/ops/create.ts";
import { medianDistance, mmd } from "../metrics/mmd.ts";
import { checkMsSsimSize, msSsim, type MsSsimOptions } from "../metrics/ssim.ts";

/** The three orthogonal views. */
export type View = "axial" | "coronal" | "sagittal";

/** All views, in the order tables list them. */
export const VIEWS: readonly View[] = ["axial", "coronal", "sagittal"];

/** The axis (0 = x, 1 = y, 2 = z) a view's slices are taken at. */
export const VIEW_AXIS: Readonly<Record<View, 0 | 1 | 2>> = { axial: 2, coronal: 1, sagittal: 0 };

/** The slices of one volume in one view: `count` images of h × w, stacked (w fastest). */
export interface ViewStack {
  /** The images, one after the other. */
  data: Float32Array;
  /** Number of slices. */
  count: number;
  /** Image rows. */
  h: number;
  /** Image columns. */
  w: number;
}

function checkVolume(volume: ArrayLike<number>, shape: readonly number[]): void {
  const [nx, ny, nz] = shape;
  if (shape.length !== 3 || volume.length !== nx * ny * nz) {
    throw new Error(
      `a volume of shape [${shape.join(", ")}] needs ${nx * ny * nz} values, got ${volume.length}.`,
    );
  }
}

/**
 * The 2-D slices of `volume` (shape [nx, ny, nz], x fastest) in `view`: axial images are [ny, nx] (one per
 * z), coronal [nz, nx] (one per y), sagittal [nz, ny] (one per x).
 */
export function viewStack(volume: ArrayLike<number>, shape: readonly number[], view: View): ViewStack {
  checkVolume(volume, shape);
  const [nx, ny, nz] = shape;
  const at = (x: number, y: number, z: number) => volume[x + nx * (y + ny * z)];
  const [count, h, w, pick] = view === "axial"
    ? [nz, ny, nx, (k: number, r: number, c: number) => at(c, r, k)]
    : view === "coronal"
    ? [ny, nz, nx, (k: number, r: number, c: number) => at(c, k, r)]
    : [nx, nz, ny, (k: number, r: number, c: number) => at(k, c, r)];
  const data = new Float32Array(count * h * w);
  let i = 0;
  for (let k = 0; k < count; k++) {
    for (let r = 0; r < h; r++) for (let c = 0; c < w; c++) data[i++] = pick(k, r, c);
  }
  return { data, count, h, w };
}

/** Whether the slices of `view` are large enough for MS-SSIM with `opts` (a thin slab's side views are not). */
export function viewFitsMsSsim(shape: readonly number[], view: View, opts: MsSsimOptions): boolean {
  const probe = viewStack(new Float32Array(shape[0] * shape[1] * shape[2]), shape, view);
  try {
    checkMsSsimSize([1, 1, probe.h, probe.w], { ...opts, spatialDims: 2 });
    return true;
  } catch {
    return false;
  }
}

/**
 * Similarity of volumes in one view: entry [i][j] is the mean 2-D MS-SSIM of the slices of `as[i]` and
 * `bs[j]` at the same positions. `pairs(i)` limits row i to some j (default: all); others are NaN. One GPU
 * batch per row.
 */
export async function viewSimilarity(
  as: readonly ArrayLike<number>[],
  bs: readonly ArrayLike<number>[],
  shape: readonly number[],
  view: View,
  opts: MsSsimOptions,
  pairs: (i: number) => number[] = () => bs.map((_, j) => j),
): Promise<number[][]> {
  const ms = { ...opts, spatialDims: 2 as const };
  const stacks = bs.map((b) => viewStack(b, shape, view));
  const rows: number[][] = [];
  for (const [i, a] of as.entries()) {
    const row = new Array(bs.length).fill(NaN);
    const js = pairs(i);
    if (js.length > 0) {
      const mine = viewStack(a, shape, view);
      const { count, h, w } = mine;
      const per = count * h * w;
      const left = new Float32Array(js.length * per);
      const right = new Float32Array(js.length * per);
      js.forEach((j, k) => {
        left.set(mine.data, k * per);
        right.set(stacks[j].data, k * per);
      });
      const values = noGrad(() =>
        scope(() => {
          const shape4 = [js.length * count, 1, h, w];
          return msSsim(tensor(left, shape4), tensor(right, shape4), ms);
        })
      );
      let flat: Float32Array;
      try {
        flat = await values.toArray();
      } finally {
        values.dispose();
      }
      js.forEach((j, k) => {
        let s = 0;
        for (let p = 0; p < count; p++) s += flat[k * count + p];
        row[j] = s / count;
      });
    }
    rows.push(row);
  }
  return rows;
}

/** Mean over generated volumes of the similarity (in `view`) to their most similar real volume. */
export async function nearestRealInView(
  fakes: readonly ArrayLike<number>[],
  reals: readonly ArrayLike<number>[],
  shape: readonly number[],
  view: View,
  opts: MsSsimOptions,
): Promise<number> {
  const rows = await viewSimilarity(fakes, reals, shape, view, opts);
  return rows.reduce((s, row) => s + Math.max(...row), 0) / rows.length;
}

/** Mean similarity (in `view`) over all pairs of distinct volumes of one set (lower: more diverse). */
export async function diversityInView(
  volumes: readonly ArrayLike<number>[],
  shape: readonly number[],
  view: View,
  opts: MsSsimOptions,
): Promise<number> {
  if (volumes.length < 2) throw new Error(`diversity needs at least 2 volumes, got ${volumes.length}.`);
  const later = (i: number) => volumes.map((_, j) => j).filter((j) => j > i);
  const rows = await viewSimilarity(volumes, volumes, shape, view, opts, later);
  const values = rows.flatMap((row, i) => row.filter((_, j) => j > i));
  return values.reduce((a, b) => a + b, 0) / values.length;
}

/** All 2-D slices of a set in one view, one row each (for MMD on pooled slices). */
export function pooledSlices(
  volumes: readonly ArrayLike<number>[],
  shape: readonly number[],
  view: View,
): Float32Array[] {
  return volumes.flatMap((v) => {
    const { data, count, h, w } = viewStack(v, shape, view);
    return Array.from({ length: count }, (_, k) => data.subarray(k * h * w, (k + 1) * h * w));
  });
}

/**
 * The Gaussian kernel's σ for one view: the median distance between the slices of the first and the second
 * half of the real set (so that every set is scored with one kernel, and self-pairs do not count).
 */
export function viewSigma(reals: readonly ArrayLike<number>[], shape: readonly number[], view: View): number {
  if (reals.length < 4) throw new Error(`the real set needs at least 4 volumes for σ, got ${reals.length}.`);
  const half = Math.floor(reals.length / 2);
  return medianDistance(
    pooledSlices(reals.slice(0, half), shape, view),
    pooledSlices(reals.slice(half), shape, view),
  );
}

/** Unbiased MMD² between the pooled slices of two sets in one view: Gaussian (σ given) and linear kernels. */
export function mmdInView(
  fakes: readonly ArrayLike<number>[],
  reals: readonly ArrayLike<number>[],
  shape: readonly number[],
  view: View,
  sigma: number,
): { gaussian: number; linear: number } {
  const x = pooledSlices(fakes, shape, view);
  const y = pooledSlices(reals, shape, view);
  return {
    gaussian: mmd(x, y, { kernel: "gaussian", bandwidth: sigma }),
    linear: mmd(x, y, { kernel: "linear" }),
  };
}

/**
 * Inter-slice roughness along `axis` (0 = x, 1 = y, 2 = z): the mean over volumes, neighbouring slice pairs
 * and voxels of (x_{k+1} − x_k)².
 */
export function roughness(
  volumes: readonly ArrayLike<number>[],
  shape: readonly number[],
  axis: 0 | 1 | 2,
): number {
  const [nx, ny, nz] = shape;
  const stride = [1, nx, nx * ny][axis];
  const n = shape[axis];
  if (n < 2) throw new Error(`roughness along axis ${axis} needs at least 2 slices, got ${n}.`);
  let sum = 0;
  let count = 0;
  for (const v of volumes) {
    checkVolume(v, shape);
    for (let z = 0; z < nz; z++) {
      for (let y = 0; y < ny; y++) {
        for (let x = 0; x < nx; x++) {
          if ([x, y, z][axis] === n - 1) continue;
          const i = x + nx * (y + ny * z);
          const d = v[i + stride] - v[i];
          sum += d * d;
          count++;
        }
      }
    }
  }
  return sum / count;
}

/** Scores of one generated set in one view. */
export interface ViewScores {
  /** MMD² of pooled slices, Gaussian kernel with the view's σ (↓). */
  mmdGaussian: number;
  /** MMD² of pooled slices, linear kernel (↓). */
  mmdLinear: number;
  /** Mean MS-SSIM of each volume's slices to its nearest real volume's (↑, but 1 is a copy). */
  msSsimNearest: number;
  /** Mean pairwise MS-SSIM within the set (compare with the real set's). */
  diversity: number;
}

/** Everything the study reports for one generated set against one real set. */
export interface SetStudy {
  /** Per view; views whose slices are too small for MS-SSIM are left out. */
  views: Partial<Record<View, ViewScores>>;
  /** The real set's diversity per view (the same views). */
  realDiversity: Partial<Record<View, number>>;
  /** Roughness ratio ρ = roughness(generated) / roughness(real) along x, y and z. */
  rho: [number, number, number];
}

/**
 * Scores `fakes` against `reals` (volumes of one `shape`), with σ per view from `sigmas` (default
 * {@linkcode viewSigma} of the reals) and the real set's diversity from `realDiversity` when known.
 */
export async function studySet(
  fakes: readonly ArrayLike<number>[],
  reals: readonly ArrayLike<number>[],
  shape: readonly number[],
  opts: {
    msSsim: MsSsimOptions;
    sigmas?: Partial<Record<View, number>>;
    realDiversity?: Partial<Record<View, number>>;
  },
): Promise<SetStudy> {
  const views: Partial<Record<View, ViewScores>> = {};
  const realDiversity: Partial<Record<View, number>> = {};
  for (const view of VIEWS) {
    if (!viewFitsMsSsim(shape, view, opts.msSsim)) continue;
    const sigma = opts.sigmas?.[view] ?? viewSigma(reals, shape, view);
    const { gaussian, linear } = mmdInView(fakes, reals, shape, view, sigma);
    views[view] = {
      mmdGaussian: gaussian,
      mmdLinear: linear,
      msSsimNearest: await nearestRealInView(fakes, reals, shape, view, opts.msSsim),
      diversity: await diversityInView(fakes, shape, view, opts.msSsim),
    };
    realDiversity[view] = opts.realDiversity?.[view] ??
      await diversityInView(reals, shape, view, opts.msSsim);
  }
  const rho = ([0, 1, 2] as const).map((axis) =>
    roughness(fakes, shape, axis) / roughness(reals, shape, axis)
  ) as [number, number, number];
  return { views, realDiversity, rho };
}
