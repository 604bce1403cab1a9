/**
 * Autoencoder training as in MONAI's 3D latent-diffusion tutorial: an `AutoencoderKL` trained with L1 (or L2)
 * reconstruction + w_kl·KL (+ a user-supplied perceptual term), and after an adversarial warm-up a
 * `PatchDiscriminator` with the least-squares patch loss; Adam for both (AdamW without decay). Seeded
 * posterior noise and batches (so a resumed run continues exactly), atomic checkpoints (autoencoder,
 * discriminator, both optimizer states, the run's settings) through the diffusion trainer's helpers, progress,
 * loss.csv/loss.png, and validation PSNR/SSIM of reconstructions of held-out volumes with previews (input
 * above its reconstruction).
 *
 * @module
 */

import { grad, noGrad } from "../engine/autograd.ts";
import { scope } from "../engine/memory.ts";
import { map } from "../engine/ops/map.ts";
import { mean } from "../engine/ops/reduce.ts";
import { AdamW } from "../engine/optim.ts";
import type { Tensor } from "../engine/tensor.ts";
import { atomicWrite } from "../io/atomic.ts";
import { encodePng, orthogonalSlices, stackRows } from "../io/png.ts";
import { Progress } from "../io/progress.ts";
import { psnr } from "../metrics/regression.ts";
import { ssim } from "../metrics/ssim.ts";
import type { AutoencoderKL } from "../models/autoencoder.ts";
import type { PatchDiscriminator } from "../models/discriminator.ts";
import {
  adversarialActive,
  type AutoencoderLossWeights,
  discriminatorLoss,
  generatorLoss,
  type PerceptualLoss,
  resolveLossWeights,
} from "./autoencoder_losses.ts";
import {
  changedSettings,
  type CheckpointMeta,
  exists,
  learningRate,
  loadInto,
  ResumeMismatchError,
  type RunSetting,
  saveCheckpoint,
  writeLogs,
} from "./train.ts";
import { loadSafetensors } from "../io/safetensors.ts";

/** Options of {@linkcode trainAutoencoder}. */
export interface AutoencoderTrainOptions {
  /** Optimizer steps. */
  steps: number;
  /** Learning rate of the autoencoder (default 1e-4, the GenerativeModels tutorial's). */
  lr?: number;
  /** Final learning rate of a cosine decay (default lr: constant, as in the tutorials). */
  minLr?: number;
  /** Linear warm-up steps of the learning rate (default 0). */
  warmupSteps?: number;
  /** Learning rate of the discriminator (default lr). */
  discriminatorLr?: number;
  /** Loss weights (defaults: L1, w_kl 1e-6, w_adv 0.01, w_p 1e-3). */
  weights?: AutoencoderLossWeights;
  /** Steps of reconstruction-only training before the adversarial terms start (default steps/4). */
  adversarialWarmup?: number;
  /** The discriminator; required when the adversarial weight is above 0. */
  discriminator?: PatchDiscriminator;
  /** A perceptual loss through the user's own feature network (none ships with voxgen). */
  perceptual?: PerceptualLoss;
  /** Seed of the posterior noise (default 0); batches come from the caller's seeded `data`. */
  seed?: number;
  /** Run folder: checkpoint/, loss.csv, loss.png, validation.csv, previews. */
  outDir: string;
  /** Checkpoint (and validate, and preview) every N steps (default 250) and at the end. */
  checkpointEvery?: number;
  /** Continue from the checkpoint in `outDir` if there is one (default true). */
  resume?: boolean;
  /** Settings defining the run beyond train's own, compared on resume (as in `train`). */
  settings?: Record<string, RunSetting>;
  /** Held-out volumes [1, C, …] for validation PSNR/SSIM and previews (not disposed). */
  validation?: readonly Tensor[];
  /** Intensity range of the data, for PSNR/SSIM and preview windows (default [-1, 1]). */
  range?: [number, number];
  /** Progress on stderr (default true), as in `train`. */
  progress?: boolean | "terminal" | "log";
  /** Seconds between progress lines when stderr is not a terminal (default 30). */
  progressEvery?: number;
  /** Called after every step. */
  onStep?: (s: AutoencoderStepReport) => void;
}

/** Per-step report of {@linkcode trainAutoencoder}. */
export interface AutoencoderStepReport {
  /** Step just finished (1-based). */
  step: number;
  /** The generator's total loss. */
  loss: number;
  /** Reconstruction loss (unweighted). */
  reconstruction: number;
  /** KL (unweighted). */
  kl: number;
  /** Generator adversarial loss (unweighted; NaN during the warm-up). */
  adversarial: number;
  /** Discriminator loss (weighted; NaN during the warm-up). */
  discriminator: number;
  /** Learning rate used. */
  lr: number;
}

/** Validation scores of reconstructions (decode(μ)) of the held-out volumes. */
export interface ValidationScores {
  /** Step at which they were measured. */
  step: number;
  /** Mean PSNR in dB over the volumes (data range = the intensity range). */
  psnr: number;
  /** Mean SSIM (Gaussian window 11, σ 1.5, as MONAI's default). */
  ssim: number;
}

/** Summary of {@linkcode trainAutoencoder}. */
export interface AutoencoderTrainResult {
  /** Last step reached. */
  step: number;
  /** Mean generator loss over the last 50 steps. */
  finalLoss: number;
  /** Wall-clock seconds of this run. */
  seconds: number;
  /** Path of the autoencoder weights written last. */
  weightsPath: string;
  /** Every validation so far (also in validation.csv). */
  validation: ValidationScores[];
}

const LOG_HEADER = "step,loss,lr,seconds,reconstruction,kl,adversarial,discriminator\n";
const VALIDATION_HEADER = "step,psnr,ssim\n";

/** Reconstruction scores of `volumes` (decode(μ), noGrad), and the first volume's preview image (PNG). */
export async function validateAutoencoder(
  ae: AutoencoderKL,
  volumes: readonly Tensor[],
  range: [number, number] = [-1, 1],
): Promise<{ psnr: number; ssim: number; preview: Uint8Array | null }> {
  const dataRange = range[1] - range[0];
  let psnrSum = 0;
  let ssimSum = 0;
  let preview: Uint8Array | null = null;
  const wasTraining = ae.training;
  ae.eval();
  try {
    for (const [i, x] of volumes.entries()) {
      const recon = noGrad(() => ae.reconstruct(x));
      const scores = noGrad(() =>
        scope(() => [mean(psnr(recon, x, dataRange)), mean(ssim(recon, x, { dataRange }))])
      );
      psnrSum += await scores[0].item();
      ssimSum += await scores[1].item();
      if (i === 0 && x.rank === 5) {
        const shape = [x.shape[4], x.shape[3], x.shape[2]];
        const [a, b] = [await x.toArray(), await recon.toArray()];
        const n = shape[0] * shape[1] * shape[2]; // the first channel
        preview = await encodePng(stackRows([
          orthogonalSlices(a.subarray(0, n), shape, { window: range }),
          orthogonalSlices(b.subarray(0, n), shape, { window: range }),
        ]));
      }
      for (const t of [recon, ...scores]) t.dispose();
    }
  } finally {
    ae.train(wasTraining);
  }
  return { psnr: psnrSum / volumes.length, ssim: ssimSum / volumes.length, preview };
}

/**
 * Trains `ae` (and the discriminator, after the warm-up) on batches from `data(step)` ([B, C, …] tensors the
 * trainer disposes). Resumes from `outDir` when a checkpoint is there, refusing one made with other settings
 * ({@linkcode ResumeMismatchError}).
 */
export async function trainAutoencoder(
  ae: AutoencoderKL,
  data: (step: number) => Tensor | Promise<Tensor>,
  opts: AutoencoderTrainOptions,
): Promise<AutoencoderTrainResult> {
  const steps = opts.steps;
  if (!Number.isInteger(steps) || steps < 1) {
    throw new Error(`trainAutoencoder: steps must be a positive integer, got ${steps}.`);
  }
  const weights = resolveLossWeights(opts.weights);
  const disc = opts.discriminator;
  if (weights.adversarial > 0 && !disc) {
    throw new Error(
      "trainAutoencoder: an adversarial weight above 0 needs a discriminator (or set weights.adversarial to 0).",
    );
  }
  const lr = opts.lr ?? 1e-4;
  const minLr = opts.minLr ?? lr;
  const warmup = Math.min(opts.warmupSteps ?? 0, steps);
  const dLr = opts.discriminatorLr ?? lr;
  const advWarmup = opts.adversarialWarmup ?? Math.floor(steps / 4);
  const seed = opts.seed ?? 0;
  const every = opts.checkpointEvery ?? 250;
  const range = opts.range ?? [-1, 1];
  const dir = opts.outDir.replace(/\/$/, "");
  await Deno.mkdir(dir, { recursive: true });
  const adversarial = weights.adversarial > 0 && disc !== undefined;
  const settings: Record<string, RunSetting> = {
    lr,
    minLr: opts.minLr ?? "lr",
    warmupSteps: warmup,
    discriminatorLr: opts.discriminatorLr ?? "lr",
    reconstructionLoss: weights.reconstruction,
    klWeight: weights.kl,
    perceptualWeight: opts.perceptual ? weights.perceptual : 0,
    adversarialWeight: adversarial ? weights.adversarial : 0,
    adversarialWarmup: opts.adversarialWarmup ?? "steps/4",
    seed,
    ...opts.settings,
  };

  const named = ae.namedParameters();
  const params = named.map(([, t]) => t);
  const dNamed = disc?.namedParameters() ?? [];
  const dParams = dNamed.map(([, t]) => t);
  const optimizer = new AdamW(params, { lr, weightDecay: 0 });
  const dOptimizer = adversarial ? new AdamW(dParams, { lr: dLr, weightDecay: 0 }) : null;
  const ckpt = `${dir}/checkpoint`;
  const dCkpt = `${ckpt}/discriminator`;
  try {
    let start = 0;
    let lossLog = LOG_HEADER;
    let validationLog = VALIDATION_HEADER;
    if ((opts.resume ?? true) && await exists(`${ckpt}/meta.json`)) {
      const meta: CheckpointMeta = JSON.parse(await Deno.readTextFile(`${ckpt}/meta.json`));
      const changes = changedSettings(meta.settings ?? {}, settings);
      if (changes.length > 0) throw new ResumeMismatchError(ckpt, changes);
      if (meta.step > steps) {
        throw new Error(
          `trainAutoencoder: the checkpoint in ${ckpt} is at step ${meta.step}, past steps ${steps}; ask ` +
            `for at least ${meta.step} steps, or start a new run in another outDir.`,
        );
      }
      await loadInto(`${ckpt}/model.safetensors`, named);
      await loadOptimizer(`${ckpt}/optimizer.safetensors`, optimizer, meta.step);
      if (dOptimizer && await exists(`${dCkpt}/meta.json`)) {
        await loadInto(`${dCkpt}/model.safetensors`, dNamed);
        // Its meta.json counts the discriminator's own steps (none during the warm-up).
        const dMeta: CheckpointMeta = JSON.parse(await Deno.readTextFile(`${dCkpt}/meta.json`));
        await loadOptimizer(`${dCkpt}/optimizer.safetensors`, dOptimizer, dMeta.step);
      }
      start = meta.step;
      lossLog = meta.lossLog;
      if (await exists(`${ckpt}/validation.csv`)) {
        validationLog = await Deno.readTextFile(`${ckpt}/validation.csv`);
      }
      if (opts.progress !== false) console.error(`resuming from step ${start} (${ckpt})`);
    }

    const began = performance.now();
    const losses: number[] = [];
    const show = opts.progress ?? true;
    const progress = show !== false && start < steps
      ? new Progress("step", steps, {
        start,
        mode: show === true ? undefined : show,
        logEvery: opts.progressEvery ?? 30,
      })
      : null;
    ae.train();
    disc?.train();
    for (let step = start; step < steps; step++) {
      const stepLr = learningRate(step, steps, lr, minLr, warmup);
      optimizer.lr = stepLr;
      const x = await data(step);
      const withAdversary = adversarial && adversarialActive(step, advWarmup, weights.adversarial);
      // Generator step; the reconstruction leaves the scope detached, for the discriminator.
      const g = scope(() => {
        const { mu, sigma } = ae.encode(x);
        const z = ae.sampling(mu, sigma, { seed, offset: step * Math.ceil(mu.size / 4) });
        const reconstruction = ae.decode(z);
        const fakeLogits = withAdversary ? disc!.logits(reconstruction) : undefined;
        const parts = generatorLoss(
          { reconstruction, target: x, mu, sigma, fakeLogits },
          weights,
          opts.perceptual,
        );
        const grads = grad(parts.total, params);
        const values = [parts.total, parts.reconstruction, parts.kl, parts.adversarial];
        const fake = withAdversary ? noGrad(() => map("copy", "a", [reconstruction])) : null;
        return { grads, values, fake };
      });
      optimizer.step(g.grads);
      for (const t of g.grads) t.dispose();
      const [loss, rec, kl, adv] = await Promise.all(
        g.values.map((t) => t ? t.item() : Promise.resolve(NaN)),
      );
      for (const t of g.values) t?.dispose();
      let dLoss = NaN;
      if (g.fake && dOptimizer) {
        dOptimizer.lr = dLr;
        const d = scope(() => {
          const l = discriminatorLoss(disc!.logits(g.fake!), disc!.logits(x), weights.adversarial);
          return { l, grads: grad(l, dParams) };
        });
        dOptimizer.step(d.grads);
        for (const t of d.grads) t.dispose();
        dLoss = await d.l.item();
        d.l.dispose();
        g.fake.dispose();
      }
      x.dispose();
      if (!Number.isFinite(loss)) {
        throw new Error(
          `trainAutoencoder: the loss became ${loss} at step ${
            step + 1
          }; lower the learning rate (now ${stepLr}).`,
        );
      }
      losses.push(loss);
      const elapsed = (performance.now() - began) / 1000;
      lossLog += `${step + 1},${loss},${stepLr},${elapsed.toFixed(2)},${rec},${kl},${adv},${dLoss}\n`;
      opts.onStep?.({
        step: step + 1,
        loss,
        reconstruction: rec,
        kl,
        adversarial: adv,
        discriminator: dLoss,
        lr: stepLr,
      });
      progress?.update(
        step + 1,
        `loss ${loss.toFixed(4)} (rec ${rec.toFixed(4)}, kl ${kl.toExponential(2)}${
          Number.isNaN(dLoss) ? "" : `, adv ${adv.toFixed(3)}, D ${dLoss.toExponential(2)}`
        })`,
      );
      if ((step + 1) % every === 0 || step + 1 === steps) {
        if (opts.validation?.length) {
          const v = await validateAutoencoder(ae, opts.validation, range);
          validationLog += `${step + 1},${v.psnr},${v.ssim}\n`;
          if (v.preview) {
            await atomicWrite(`${dir}/preview_${String(step + 1).padStart(6, "0")}.png`, v.preview);
          }
          if (progress) {
            console.error(
              `validation at step ${step + 1}: PSNR ${v.psnr.toFixed(2)} dB, SSIM ${v.ssim.toFixed(4)}`,
            );
          }
        }
        const meta = { step: step + 1, seed, lossLog, parameters: "all" as const, settings };
        if (dOptimizer) {
          // The discriminator first: the autoencoder's meta.json completes the checkpoint.
          await saveCheckpoint(dCkpt, dNamed, dNamed.map(([n]) => n), [], dOptimizer, {
            ...meta,
            step: dOptimizer.stepCount,
            lossLog: "",
          });
        }
        await Deno.mkdir(ckpt, { recursive: true });
        await atomicWrite(`${ckpt}/validation.csv`, new TextEncoder().encode(validationLog));
        await saveCheckpoint(ckpt, named, named.map(([n]) => n), [], optimizer, meta);
        await writeLogs(dir, lossLog);
        await atomicWrite(`${dir}/validation.csv`, new TextEncoder().encode(validationLog));
      }
    }
    const logged = lossLog.trim().split("\n").slice(1).map((row) => Number(row.split(",")[1]));
    const tail = (losses.length > 0 ? losses : logged).slice(-50);
    const validation = validationLog.trim().split("\n").slice(1).filter((r) => r).map((row) => {
      const [s, p, q] = row.split(",").map(Number);
      return { step: s, psnr: p, ssim: q };
    });
    return {
      step: steps,
      finalLoss: tail.reduce((a, b) => a + b, 0) / Math.max(tail.length, 1),
      seconds: (performance.now() - began) / 1000,
      weightsPath: `${ckpt}/model.safetensors`,
      validation,
    };
  } finally {
    optimizer.dispose();
    dOptimizer?.dispose();
  }
}

async function loadOptimizer(path: string, optimizer: AdamW, step: number): Promise<void> {
  const state = await loadSafetensors(path);
  try {
    optimizer.loadState(state, step);
  } finally {
    for (const t of state.values()) t.dispose();
  }
}
