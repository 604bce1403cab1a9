/**
 * Shared pieces of the evaluation scripts: the real target set (augmented volumes on a model's grid, with
 * seeds the training never drew), fixed-seed DDIM samples of a network, and the scores of a generated set
 * against the real one — MMD on voxels (Gaussian kernel with σ = a median distance, and linear) and MS-SSIM
 * (mean over all generated × real pairs, and the nearest real volume per sample).
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { scope } from "../engine/memory.ts";
import { map } from "../engine/ops/map.ts";
import { concat } from "../engine/ops/view.ts";
import type { Tensor } from "../engine/tensor.ts";
import { medianDistance, mmd } from "../metrics/mmd.ts";
import { msSsim, type MsSsimOptions } from "../metrics/ssim.ts";
import { augment } from "../pipelines/augment.ts";
import { loadVolume, volumeTensor } from "../pipelines/dataset.ts";
import type { ModelInfo } from "../pipelines/modelfile.ts";
import { sample } from "../samplers/sample.ts";
import { DDIMScheduler } from "../samplers/scheduler.ts";

/**
 * MS-SSIM settings that fit a small grid: 3 scales with a 5-voxel Gaussian window (the default 5 scales ×
 * 11 voxels needs ≥ 176 voxels per axis; this needs ≥ 17), data range 2 (intensities in [−1, 1]).
 */
export const SMALL_GRID_MS_SSIM: MsSsimOptions = Object.freeze({
  spatialDims: 3,
  dataRange: 2,
  kernelSize: 5,
  kernelSigma: 1.5,
  weights: [0.0448, 0.2856, 0.3001],
});

/** First augmentation seed of evaluation sets: far above the seeds a short training run draws. */
export const FIRST_EVALUATION_SEED = 0x7fff0000;

/**
 * The augmentation seeds `augmentedBatches` (pipelines/augment.ts) draws in a run of `steps` optimizer steps
 * of `accumulate` micro-batches of `batch` volumes with training seed `seed` — the same formula, repeated
 * here so evaluation seeds can be proven disjoint from them.
 */
export function trainingAugmentSeeds(
  seed: number,
  steps: number,
  batch: number,
  accumulate = 1,
): Set<number> {
  const seeds = new Set<number>();
  for (let step = 0; step < steps; step++) {
    for (let micro = 0; micro < accumulate; micro++) {
      for (let b = 0; b < batch; b++) {
        const k = (step * 7919 + micro * 104729 + b * 31) >>> 0;
        seeds.add((seed * 2654435761 + k) >>> 0);
      }
    }
  }
  return seeds;
}

/** `count` augmentation seeds from {@linkcode FIRST_EVALUATION_SEED} upwards, skipping any in `exclude`. */
export function evaluationSeeds(count: number, exclude: ReadonlySet<number> = new Set()): number[] {
  const seeds: number[] = [];
  for (let s = FIRST_EVALUATION_SEED; seeds.length < count; s = (s + 1) >>> 0) {
    if (!exclude.has(s)) seeds.push(s);
  }
  return seeds;
}

/** The preprocessed source volumes and their augmented versions (the caller disposes both). */
export interface RealSet {
  /** The files preprocessed to the model's grid, [1, 1, nz, ny, nx] each. */
  sources: Tensor[];
  /** `seeds.length` augmentations: volume i is source i mod N with seed `seeds[i]`. */
  reals: Tensor[];
}

/**
 * Loads `files` as `train`/`finetune` do (resampled to the model's grid fitted to the foreground, normalised
 * to the model's intensity range) and augments them with `seeds` (default augmentation strengths).
 */
export async function realTargetSet(
  files: readonly string[],
  info: Pick<ModelInfo, "volume">,
  seeds: readonly number[],
): Promise<RealSet> {
  const { shape, range } = info.volume;
  const sources: Tensor[] = [];
  for (const f of files) {
    sources.push(volumeTensor(await loadVolume(f, { shape: [...shape], fov: "foreground", range })));
  }
  const reals = seeds.map((seed, i) => augment(sources[i % sources.length], seed, { range }).image);
  return { sources, reals };
}

/** Options of {@linkcode generateSamples}. */
export interface GenerateOptions {
  /** Number of volumes. */
  count: number;
  /** DDIM steps. */
  steps: number;
  /** Volume i uses noise seed `firstSeed + i` (default 1000), as `deno task sample --seed` would. */
  firstSeed?: number;
  /** Clamp to the model's intensity range, as `deno task sample` writes its volumes (default false). */
  clamp?: boolean;
  /** Called after each volume with the count done. */
  onSample?: (done: number) => void;
}

/**
 * `count` volumes [1, C, nz, ny, nx] of the network by DDIM (η = 0), one per seed, so each is reproducible
 * alone with `deno task sample --seed S --steps N` (the caller disposes them).
 */
export async function generateSamples(
  forward: (x: Tensor, t: number) => Tensor,
  info: ModelInfo,
  opts: GenerateOptions,
): Promise<Tensor[]> {
  const [nx, ny, nz] = info.volume.shape;
  const [lo, hi] = info.volume.range;
  const first = opts.firstSeed ?? 1000;
  const out: Tensor[] = [];
  try {
    for (let i = 0; i < opts.count; i++) {
      const x = await sample(forward, new DDIMScheduler({ ...info.scheduler }), {
        shape: [1, info.unet.inChannels, nz, ny, nx],
        steps: opts.steps,
        seed: first + i,
      });
      if (opts.clamp) {
        out.push(noGrad(() => map("clamp", "min(max(a, s0), s1)", [x], [lo, hi])));
        x.dispose();
      } else {
        out.push(x);
      }
      opts.onSample?.(i + 1);
    }
  } catch (error) {
    for (const t of out) t.dispose();
    throw error;
  }
  return out;
}

/** Scores of a generated set against the real set. */
export interface SetScores {
  /** Unbiased MMD² with the Gaussian kernel exp(−‖a − b‖²/(2σ²)) at the given σ (↓). */
  mmdGaussian: number;
  /** The σ used for `mmdGaussian`. */
  mmdGaussianSigma: number;
  /** The same MMD² with σ = this set's own median distance to the real set (evaluate_model's choice) (↓). */
  mmdGaussianOwnSigma: number;
  /** That own σ. */
  ownSigma: number;
  /** Unbiased MMD² with the linear kernel on voxels (MONAI's MMDMetric) (↓). */
  mmdLinear: number;
  /** MS-SSIM averaged over every generated × real pair (↑). */
  msSsimMean: number;
  /** MS-SSIM of each generated volume to its most similar real volume, averaged (↑). */
  msSsimNearest: number;
}

/**
 * MMD and MS-SSIM of `fakes` against `reals` (volumes [1, 1, nz, ny, nx], at least two of each). `sigma` fixes
 * the Gaussian kernel's σ so that several generated sets are scored with one kernel (default: the median
 * distance between these fakes and the reals).
 */
export async function scoreAgainstReal(
  fakes: readonly Tensor[],
  reals: readonly Tensor[],
  opts: { sigma?: number; msSsim?: MsSsimOptions } = {},
): Promise<SetScores> {
  const fakeRows = await Promise.all(fakes.map((t) => t.toArray()));
  const realRows = await Promise.all(reals.map((t) => t.toArray()));
  const ownSigma = medianDistance(fakeRows, realRows);
  const sigma = opts.sigma ?? ownSigma;
  const gaussian = (bandwidth: number) => mmd(fakeRows, realRows, { kernel: "gaussian", bandwidth });
  const pairs = await pairMsSsim(fakes, reals, opts.msSsim ?? SMALL_GRID_MS_SSIM);
  const all = pairs.flat();
  return {
    mmdGaussian: gaussian(sigma),
    mmdGaussianSigma: sigma,
    mmdGaussianOwnSigma: gaussian(ownSigma),
    ownSigma,
    mmdLinear: mmd(fakeRows, realRows, { kernel: "linear" }),
    msSsimMean: all.reduce((a, b) => a + b, 0) / all.length,
    msSsimNearest: pairs.reduce((s, row) => s + Math.max(...row), 0) / pairs.length,
  };
}

/** MS-SSIM of every fake against every real: row i holds fake i against reals 0 … n−1 (one batch per row). */
async function pairMsSsim(
  fakes: readonly Tensor[],
  reals: readonly Tensor[],
  opts: MsSsimOptions,
): Promise<number[][]> {
  const realBatch = noGrad(() => concat([...reals], 0));
  try {
    const rows: number[][] = [];
    for (const fake of fakes) {
      const values = noGrad(() => scope(() => msSsim(concat(reals.map(() => fake), 0), realBatch, opts)));
      try {
        rows.push([...await values.toArray()]);
      } finally {
        values.dispose();
      }
    }
    return rows;
  } finally {
    realBatch.dispose();
  }
}
