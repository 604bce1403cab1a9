/**
 * Latent diffusion around a frozen `AutoencoderKL` (MONAI's `LatentDiffusionInferer`): the scale factor
 * s = 1 / std of the first training batch's latents, training batches encoded to s·z under `noGrad` (cached per
 * volume when the data is not augmented). Sampling decodes z / s through the generator of a latent model file
 * (`unetGenerator` in pipelines/modelfile.ts).
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { keep, scope } from "../engine/memory.ts";
import { add, mul } from "../engine/ops/elementwise.ts";
import { randn } from "../engine/ops/random.ts";
import { concat } from "../engine/ops/view.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { AutoencoderKL } from "../models/autoencoder.ts";

/**
 * s = 1 / std(z) over every element of z, with the unbiased (n − 1) standard deviation of `torch.std`, which
 * MONAI's tutorials use on `encode_stage_2_inputs(first batch)`. Computed in float64.
 */
export function scaleFactorOf(values: ArrayLike<number>): number {
  const n = values.length;
  if (n < 2) throw new Error(`scaleFactorOf: need at least 2 latent values, got ${n}.`);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += values[i];
  const m = sum / n;
  let sq = 0;
  for (let i = 0; i < n; i++) sq += (values[i] - m) ** 2;
  const std = Math.sqrt(sq / (n - 1));
  if (!(std > 0) || !Number.isFinite(std)) {
    throw new Error(
      `scaleFactorOf: the latents' standard deviation is ${std}; the autoencoder is degenerate.`,
    );
  }
  return 1 / std;
}

/**
 * The seed of the posterior noise ξ of a run with seed `seed`: its own Philox stream, so ξ never repeats the
 * diffusion noise ε that the trainer draws from `seed` itself (equal noise would correlate z with ε).
 */
export function posteriorSeed(seed: number): number {
  return ((seed ^ 0x6c8e9cf5) + 0x3c6ef372) >>> 0;
}

/** Options of {@linkcode latentBatches}. */
export interface LatentBatchOptions {
  /** Seed of the run; ξ of z = μ + σξ comes from {@linkcode posteriorSeed}(seed), one draw per step and micro-step. */
  seed: number;
  /** s, multiplied into the latents (default 1: raw latents, e.g. to compute s). */
  scaleFactor?: number;
}

/**
 * Wraps an image batch source (e.g. `augmentedBatches`) into a latent one: each batch is encoded under `noGrad`
 * and sampled, z = s·(μ + σξ), like MONAI's `LatentDiffusionInferer` in training. The batch's other fields
 * (e.g. a control module's conditions, which stay on the image grid) pass through unchanged. (Without
 * augmentation, {@linkcode CachedPosteriors} saves re-encoding the same volumes.)
 */
export function latentBatches<B extends { x0: Tensor }>(
  ae: AutoencoderKL,
  images: (step: number, micro: number) => B | Promise<B>,
  opts: LatentBatchOptions,
): (step: number, micro: number) => Promise<B> {
  const s = opts.scaleFactor ?? 1;
  return async (step, micro) => {
    const { x0, ...rest } = await images(step, micro);
    const z = noGrad(() =>
      scope(() => {
        const { mu, sigma } = ae.encode(x0);
        const offset = (step * 1009 + micro) * Math.ceil(mu.size / 4);
        return mul(add(mu, mul(sigma, randn(mu.shape, { seed: posteriorSeed(opts.seed), offset }))), s);
      })
    );
    x0.dispose();
    return { ...rest, x0: z } as B;
  };
}

/**
 * Cached posteriors of fixed volumes (training without augmentation, where every batch is made of the same
 * volumes): μ and σ of each computed once, so a step only draws z. Kept until {@linkcode CachedPosteriors.dispose}.
 */
export class CachedPosteriors {
  readonly #mu: Tensor[] = [];
  readonly #sigma: Tensor[] = [];

  /** Encodes every volume [1, C, …] once. */
  constructor(ae: AutoencoderKL, volumes: readonly Tensor[]) {
    for (const v of volumes) {
      const { mu, sigma } = noGrad(() => ae.encode(v));
      this.#mu.push(keep(mu));
      this.#sigma.push(keep(sigma));
    }
  }

  /** s·(μ + σξ) for the volumes `indices` (a batch), ξ from (seed, offset). */
  sample(indices: readonly number[], seed: number, offset: number, scaleFactor: number): Tensor {
    return noGrad(() =>
      scope(() => {
        const mu = concat(indices.map((i) => this.#mu[i]), 0);
        const sigma = concat(indices.map((i) => this.#sigma[i]), 0);
        return mul(add(mu, mul(sigma, randn(mu.shape, { seed, offset }))), scaleFactor);
      })
    );
  }

  /** Frees the cached posteriors. */
  dispose(): void {
    for (const t of [...this.#mu, ...this.#sigma]) t.dispose();
  }
}

/** Options of {@linkcode prepareLatentTraining}. */
export interface LatentTrainingOptions {
  /** Seed of the posterior samples. */
  seed: number;
  /** The image batches are the source volumes as they are (no augmentation): cache their posteriors. */
  sources?: readonly Tensor[];
  /** Volumes per batch (with `sources`). */
  batch?: number;
}

/** A latent training set-up: the batches the diffusion trainer reads, and s. */
export interface LatentTraining {
  /** s = 1 / std of the first batch's latents. */
  scaleFactor: number;
  /** Latent shape without the batch. */
  latentShape: number[];
  /** Batches of s·z for `train`. */
  data: (step: number, micro: number) => Promise<{ x0: Tensor }>;
  /** Frees cached posteriors. */
  dispose(): void;
}

/**
 * Prepares diffusion training on latents of a frozen autoencoder: s from the first batch (step 0, micro-step
 * 0, raw sampled latents, as MONAI's tutorials), then batches of s·z. The image batches come from `images`
 * (e.g. `augmentedBatches`); with `opts.sources` (no augmentation) each volume is encoded once
 * ({@linkcode CachedPosteriors}) and `pick(step, micro, b)` names the volume of each batch item.
 */
export async function prepareLatentTraining(
  ae: AutoencoderKL,
  images: (step: number, micro: number) => { x0: Tensor } | Promise<{ x0: Tensor }>,
  opts: LatentTrainingOptions & { pick?: (step: number, micro: number, b: number) => number },
): Promise<LatentTraining> {
  const raw = latentBatches(ae, images, { seed: opts.seed });
  const first = (await raw(0, 0)).x0;
  const scaleFactor = scaleFactorOf(await first.toArray());
  const latentShape = first.shape.slice(1);
  first.dispose();
  const sources = opts.sources;
  if (!sources) {
    return {
      scaleFactor,
      latentShape,
      data: latentBatches(ae, images, { seed: opts.seed, scaleFactor }),
      dispose: () => {},
    };
  }
  const cache = new CachedPosteriors(ae, sources);
  const batch = opts.batch ?? 1;
  const pick = opts.pick ?? ((step, micro, b) => (step * batch + micro + b) % sources.length);
  const size = latentShape.reduce((p, d) => p * d, batch);
  return {
    scaleFactor,
    latentShape,
    data: (step, micro) => {
      const indices = Array.from({ length: batch }, (_, b) => pick(step, micro, b) % sources.length);
      const offset = (step * 1009 + micro) * Math.ceil(size / 4);
      return Promise.resolve({ x0: cache.sample(indices, posteriorSeed(opts.seed), offset, scaleFactor) });
    },
    dispose: () => cache.dispose(),
  };
}
