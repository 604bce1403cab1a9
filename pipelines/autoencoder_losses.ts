/**
 * The losses of MONAI's 3D latent-diffusion tutorial for training an `AutoencoderKL` (Pinaya et al.):
 *
 * - reconstruction: L1 (the tutorial's) or L2, means over every voxel;
 * - KL divergence of N(μ, σ²) from N(0, I): ½ Σ (μ² + σ² − ln σ² − 1) **summed over channels and voxels,
 *   averaged over the batch** (the tutorial's `kl_loss`), weighted by a small w_kl (1e-6 … 1e-7);
 * - least-squares patch adversarial loss (MONAI's `PatchAdversarialLoss("least_squares")`): LeakyReLU(0.05) on
 *   the discriminator's logits, then the mean squared distance to 1 (real) or 0 (fake). The generator always
 *   targets "real". The discriminator's loss is ½ (fake → 0 + real → 1), and both adversarial terms are off
 *   during a warm-up;
 * - a perceptual term through a feature network the caller supplies (`PerceptualLoss`). MONAI's tutorial uses
 *   LPIPS/SqueezeNet with pretrained weights; **no pretrained perceptual weights ship with voxgen or can be
 *   downloaded here**, so the term is off unless a user passes their own network.
 *
 * @module
 */

import { scope } from "../engine/memory.ts";
import { abs, add, log, mul, square, sub } from "../engine/ops/elementwise.ts";
import { mean, sum } from "../engine/ops/reduce.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { leakyRelu } from "../models/discriminator.ts";

/** Reconstruction losses. */
export type ReconstructionLoss = "l1" | "l2";

function checkSameShape(what: string, a: Tensor, b: Tensor): void {
  if (a.rank !== b.rank || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new Error(`${what}: shapes ${formatShape(a.shape)} and ${formatShape(b.shape)} must be equal.`);
  }
}

/** Mean |x̂ − x| (l1) or mean (x̂ − x)² (l2) over every element, as a scalar. */
export function reconstructionLoss(
  reconstruction: Tensor,
  target: Tensor,
  kind: ReconstructionLoss = "l1",
): Tensor {
  checkSameShape("reconstructionLoss", reconstruction, target);
  if (kind !== "l1" && kind !== "l2") {
    throw new Error(`reconstructionLoss: kind must be "l1" or "l2", got ${JSON.stringify(kind)}.`);
  }
  return scope(() => {
    const d = sub(reconstruction, target);
    return mean(kind === "l1" ? abs(d) : square(d));
  });
}

/**
 * KL(N(μ, σ²) ‖ N(0, I)) as MONAI's tutorial computes it: ½ Σ_{c, voxels} (μ² + σ² − ln σ² − 1), then the
 * mean over the batch. μ and σ are [B, C, …latent]; returns a scalar.
 */
export function klLoss(mu: Tensor, sigma: Tensor): Tensor {
  checkSameShape("klLoss", mu, sigma);
  if (mu.rank < 2) throw new Error(`klLoss: mu ${formatShape(mu.shape)} must be [B, C, …].`);
  return scope(() => {
    const s2 = square(sigma);
    const terms = sub(add(square(mu), s2), add(log(s2), 1));
    return mul(sum(terms), 0.5 / mu.shape[0]);
  });
}

/** MONAI's least-squares activation on discriminator logits: LeakyReLU with slope 0.05. */
export const ADVERSARIAL_SLOPE = 0.05;

/**
 * MONAI's `PatchAdversarialLoss(criterion="least_squares")` on one discriminator's logits: mean over every
 * patch of (LeakyReLU₀.₀₅(logit) − target)², target 1 for real and 0 for fake. For the generator
 * (`forDiscriminator: false`) the target is always real, as in MONAI.
 */
export function patchAdversarialLoss(
  logits: Tensor,
  opts: { targetIsReal: boolean; forDiscriminator: boolean },
): Tensor {
  const target = opts.forDiscriminator ? (opts.targetIsReal ? 1 : 0) : 1;
  return scope(() => mean(square(sub(leakyRelu(logits, ADVERSARIAL_SLOPE), target))));
}

/**
 * A perceptual distance between a reconstruction and its target, computed by a feature network the user
 * supplies (for example a 2.5D LPIPS with their own weights). Returns a scalar, differentiable in the first
 * argument. voxgen ships no pretrained feature network.
 */
export type PerceptualLoss = (reconstruction: Tensor, target: Tensor) => Tensor;

/** Weights of the autoencoder's generator loss (defaults: the 3D LDM tutorial's, without perceptual weights). */
export interface AutoencoderLossWeights {
  /** Reconstruction loss kind (default "l1"). */
  reconstruction?: ReconstructionLoss;
  /** Weight of the KL term (default 1e-6). */
  kl?: number;
  /** Weight of the perceptual term (default 1e-3; used only with a `perceptual` network). */
  perceptual?: number;
  /** Weight of the adversarial terms (default 0.01; 0 turns the discriminator off). */
  adversarial?: number;
}

/** The loss weights with defaults filled in. */
export interface ResolvedLossWeights {
  /** Reconstruction loss kind. */
  reconstruction: ReconstructionLoss;
  /** KL weight. */
  kl: number;
  /** Perceptual weight. */
  perceptual: number;
  /** Adversarial weight. */
  adversarial: number;
}

/** Fills in and checks the loss weights. */
export function resolveLossWeights(w: AutoencoderLossWeights = {}): ResolvedLossWeights {
  const out = {
    reconstruction: w.reconstruction ?? "l1",
    kl: w.kl ?? 1e-6,
    perceptual: w.perceptual ?? 1e-3,
    adversarial: w.adversarial ?? 0.01,
  };
  for (const key of ["kl", "perceptual", "adversarial"] as const) {
    if (!(out[key] >= 0) || !Number.isFinite(out[key])) {
      throw new Error(`autoencoder loss weight ${key} must be a finite number ≥ 0, got ${out[key]}.`);
    }
  }
  if (out.reconstruction !== "l1" && out.reconstruction !== "l2") {
    throw new Error(`reconstruction loss must be "l1" or "l2", got ${JSON.stringify(out.reconstruction)}.`);
  }
  return out;
}

/** The parts of a generator loss, as scalars (the total is what is differentiated). */
export interface GeneratorLoss {
  /** w_rec·L_rec + w_kl·KL + w_p·perc + [adversarial on]·w_adv·G_adv. */
  total: Tensor;
  /** The reconstruction term (unweighted). */
  reconstruction: Tensor;
  /** The KL term (unweighted). */
  kl: Tensor;
  /** The perceptual term (unweighted), when a network was given. */
  perceptual?: Tensor;
  /** The generator's adversarial term (unweighted), when the adversarial loss is on. */
  adversarial?: Tensor;
}

/**
 * The tutorial's generator loss: L_rec(x̂, x) + w_kl·KL(μ, σ) + w_p·perc(x̂, x) + w_adv·G_adv(logits of x̂).
 * `fakeLogits` (the discriminator's logits of x̂) is given only once the adversarial warm-up is over.
 */
export function generatorLoss(
  parts: { reconstruction: Tensor; target: Tensor; mu: Tensor; sigma: Tensor; fakeLogits?: Tensor },
  weights: ResolvedLossWeights,
  perceptual?: PerceptualLoss,
): GeneratorLoss {
  return scope(() => {
    const rec = reconstructionLoss(parts.reconstruction, parts.target, weights.reconstruction);
    const kl = klLoss(parts.mu, parts.sigma);
    let total = add(rec, mul(kl, weights.kl));
    const out: GeneratorLoss = { total, reconstruction: rec, kl };
    if (perceptual && weights.perceptual > 0) {
      out.perceptual = perceptual(parts.reconstruction, parts.target);
      total = add(total, mul(out.perceptual, weights.perceptual));
    }
    if (parts.fakeLogits && weights.adversarial > 0) {
      out.adversarial = patchAdversarialLoss(parts.fakeLogits, {
        targetIsReal: true,
        forDiscriminator: false,
      });
      total = add(total, mul(out.adversarial, weights.adversarial));
    }
    out.total = total;
    return out;
  });
}

/** The tutorial's discriminator loss: w_adv · ½ (D(fake) → 0 + D(real) → 1). Logits of x̂ must be detached. */
export function discriminatorLoss(fakeLogits: Tensor, realLogits: Tensor, weight: number): Tensor {
  return scope(() => {
    const fake = patchAdversarialLoss(fakeLogits, { targetIsReal: false, forDiscriminator: true });
    const real = patchAdversarialLoss(realLogits, { targetIsReal: true, forDiscriminator: true });
    return mul(add(fake, real), 0.5 * weight);
  });
}

/** Whether the adversarial terms are on at `step` (0-based): after `warmupSteps` steps of reconstruction only. */
export function adversarialActive(step: number, warmupSteps: number, weight: number): boolean {
  return weight > 0 && step >= warmupSteps;
}
