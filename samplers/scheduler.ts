/**
 * Diffusion schedulers: DDPM, DDIM (with inversion) and Euler ancestral. They follow MONAI's
 * `DDPMScheduler`/`DDIMScheduler` step by step (same timesteps, coefficients, clipping and prediction
 * types), with one deliberate difference: DDPM sampling with fewer steps than it was trained with uses the
 * correctly respaced posterior between consecutive sampled timesteps, where MONAI always steps to t−1
 * (identical when steps = T).
 *
 * Every step is a few fused element-wise kernels; coefficients are computed on the CPU in float64 from
 * MONAI's float32 schedule.
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { map } from "../engine/ops/map.ts";
import { randn } from "../engine/ops/random.ts";
import { tensor } from "../engine/ops/create.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { makeSchedule, type NoiseSchedule, type ScheduleOptions } from "./schedule.ts";

/** What the network predicts. */
export type PredictionType = "epsilon" | "v_prediction" | "sample";

/** Options shared by the schedulers. */
export interface SchedulerOptions extends ScheduleOptions {
  /** What the model predicts. Default "epsilon". */
  predictionType?: PredictionType;
  /** Clip the predicted x̂0 to [clipSampleMin, clipSampleMax]. Default true (as MONAI). */
  clipSample?: boolean;
  /** Lower clip bound. Default −1. */
  clipSampleMin?: number;
  /** Upper clip bound. Default 1. */
  clipSampleMax?: number;
}

/** Options of one denoising step. */
export interface StepOptions {
  /** DDIM η (0 = deterministic). Default 0. */
  eta?: number;
  /** Noise to add (same shape as the sample); drawn from `seed` when omitted. */
  noise?: Tensor;
  /** Seed of the step's noise (default 0) and the Philox counter offset to draw it from. */
  seed?: number;
  /** Philox counter offset of the step's noise. */
  noiseOffset?: number;
}

/** Result of one denoising step. */
export interface StepResult {
  /** x at the previous (less noisy) timestep. */
  prevSample: Tensor;
  /** The model's estimate of the clean sample x̂0. */
  predOriginalSample: Tensor;
}

function checkPrediction(p: string): PredictionType {
  if (p !== "epsilon" && p !== "v_prediction" && p !== "sample") {
    throw new Error(`predictionType "${p}" is not supported; accepted: epsilon, v_prediction, sample.`);
  }
  return p;
}

/** Shared schedule state and the forward (noising) process. */
export abstract class Scheduler {
  /** Number of training timesteps T. */
  readonly numTrainTimesteps: number;
  /** β, α, ᾱ arrays. */
  readonly schedule: NoiseSchedule;
  /** What the model predicts. */
  readonly predictionType: PredictionType;
  /** Whether x̂0 is clipped. */
  readonly clipSample: boolean;
  /** Clip range of x̂0. */
  readonly clipRange: [number, number];
  /** Timesteps of the sampling chain, from noisiest to cleanest. */
  timesteps: number[];
  /** Number of sampling steps (set by `setTimesteps`). */
  numInferenceSteps: number;
  /** Standard deviation of the initial noise (1 except for Euler). */
  initNoiseSigma = 1;

  /** Builds the noise schedule from `opts` (MONAI's defaults). */
  constructor(opts: SchedulerOptions = {}) {
    this.schedule = makeSchedule(opts);
    this.numTrainTimesteps = this.schedule.betas.length;
    this.predictionType = checkPrediction(opts.predictionType ?? "epsilon");
    this.clipSample = opts.clipSample ?? true;
    this.clipRange = [opts.clipSampleMin ?? -1, opts.clipSampleMax ?? 1];
    this.timesteps = [...Array(this.numTrainTimesteps).keys()].reverse();
    this.numInferenceSteps = this.numTrainTimesteps;
  }

  /** Chooses `n` evenly spaced timesteps (MONAI: `arange(n)·(T // n)`, reversed). */
  setTimesteps(n: number): void {
    if (!Number.isInteger(n) || n < 1 || n > this.numTrainTimesteps) {
      throw new Error(
        `setTimesteps(${n}): the number of steps must be an integer in 1..${this.numTrainTimesteps}.`,
      );
    }
    const ratio = Math.floor(this.numTrainTimesteps / n);
    this.numInferenceSteps = n;
    this.timesteps = [...Array(n).keys()].map((i) => i * ratio).reverse();
  }

  /** Scales the model input at timestep `t` (identity except for Euler). */
  scaleModelInput(sample: Tensor, _t: number): Tensor {
    return sample;
  }

  /** ᾱ at integer timestep t (1 for t < 0). */
  alphaBar(t: number): number {
    return t < 0 ? 1 : this.schedule.alphasCumprod[this.checkTimestep(t)];
  }

  /** Throws unless `t` is an integer training timestep; returns it. */
  protected checkTimestep(t: number): number {
    if (!Number.isInteger(t) || t < 0 || t >= this.numTrainTimesteps) {
      throw new Error(`timestep ${t} is out of range; accepted: integers 0..${this.numTrainTimesteps - 1}.`);
    }
    return t;
  }

  /** Per-batch-element coefficient tensor [B, 1, …, 1] for broadcasting against x [B, …]. */
  protected perSample(x: Tensor, values: number[]): Tensor {
    if (values.length !== 1 && values.length !== x.shape[0]) {
      throw new Error(
        `timesteps: ${values.length} given for a batch of ${x.shape[0]} (shape ${
          formatShape(x.shape)
        }); give one per sample or one for all.`,
      );
    }
    return tensor(values, [values.length, ...x.shape.slice(1).map(() => 1)]);
  }

  /** x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, with one timestep per batch element (or one for all). */
  addNoise(x0: Tensor, noise: Tensor, timesteps: number | readonly number[]): Tensor {
    const ts = typeof timesteps === "number" ? [timesteps] : [...timesteps];
    const a = this.perSample(x0, ts.map((t) => Math.sqrt(this.alphaBar(this.checkTimestep(t)))));
    const b = this.perSample(x0, ts.map((t) => Math.sqrt(1 - this.alphaBar(t))));
    const ax = map("mul", "a * b", [x0, a]);
    const out = map("axpy", "a + b * c", [ax, b, noise]);
    ax.dispose();
    a.dispose();
    b.dispose();
    return out;
  }

  /** v = √ᾱ_t·ε − √(1−ᾱ_t)·x0 (the v-prediction training target). */
  getVelocity(x0: Tensor, noise: Tensor, timesteps: number | readonly number[]): Tensor {
    const ts = typeof timesteps === "number" ? [timesteps] : [...timesteps];
    const a = this.perSample(x0, ts.map((t) => Math.sqrt(this.alphaBar(this.checkTimestep(t)))));
    const b = this.perSample(x0, ts.map((t) => Math.sqrt(1 - this.alphaBar(t))));
    const an = map("mul", "a * b", [a, noise]);
    const v = map("velocity", "a - b * c", [an, b, x0]);
    an.dispose();
    a.dispose();
    b.dispose();
    return v;
  }

  /** x̂0 and ε̂ from the model output at a timestep with cumulative ᾱ = `alphaProd`. */
  protected predict(modelOutput: Tensor, sample: Tensor, alphaProd: number): { x0: Tensor; eps: Tensor } {
    const sa = Math.sqrt(alphaProd);
    const sb = Math.sqrt(1 - alphaProd);
    let x0: Tensor;
    let eps: Tensor;
    switch (this.predictionType) {
      case "epsilon":
        x0 = map("pred_x0_eps", "(b - s1 * a) / s0", [modelOutput, sample], [sa, sb]);
        eps = map("copy", "a", [modelOutput]);
        break;
      case "sample":
        x0 = map("copy", "a", [modelOutput]);
        eps = map("pred_eps_x0", "(b - s0 * a) / s1", [modelOutput, sample], [sa, sb]);
        break;
      case "v_prediction":
        x0 = map("pred_x0_v", "s0 * b - s1 * a", [modelOutput, sample], [sa, sb]);
        eps = map("pred_eps_v", "s0 * a + s1 * b", [modelOutput, sample], [sa, sb]);
        break;
    }
    if (this.clipSample) {
      const clipped = map("clamp", "min(max(a, s0), s1)", [x0], this.clipRange);
      x0.dispose();
      x0 = clipped;
    }
    return { x0, eps };
  }

  /** Noise for a step: the given tensor, or a fresh Philox draw. */
  protected stepNoise(like: Tensor, opts: StepOptions): { noise: Tensor; owned: boolean } {
    if (opts.noise) {
      if (opts.noise.shape.join() !== like.shape.join()) {
        throw new Error(
          `step: noise ${formatShape(opts.noise.shape)} must have the sample's shape ${
            formatShape(like.shape)
          }.`,
        );
      }
      return { noise: opts.noise, owned: false };
    }
    return { noise: randn(like.shape, { seed: opts.seed ?? 0, offset: opts.noiseOffset ?? 0 }), owned: true };
  }

  /**
   * A clean sample noised to the level the chain has at timestep `t` (inpainting re-noises the known region
   * this way). `t` < 0 means the end of the chain: the clean sample itself.
   */
  noiseToTimestep(x0: Tensor, noise: Tensor, t: number): Tensor {
    return t < 0 ? map("copy", "a", [x0]) : this.addNoise(x0, noise, t);
  }

  /** One denoising step from timestep `t`. */
  abstract step(modelOutput: Tensor, t: number, sample: Tensor, opts?: StepOptions): StepResult;

  /** The timestep that follows `t` in the current chain (−1 after the last). */
  previousTimestep(t: number): number {
    const i = this.timesteps.indexOf(t);
    if (i < 0) throw new Error(`timestep ${t} is not in the current chain (call setTimesteps first).`);
    return i + 1 < this.timesteps.length ? this.timesteps[i + 1] : -1;
  }
}

/** DDPM ancestral sampling (Ho et al. 2020), MONAI's `DDPMScheduler` with variance "fixed_small". */
export class DDPMScheduler extends Scheduler {
  /**
   * Coefficients of the posterior q(x_prev | x_t, x̂0) = N(cx0·x̂0 + cxt·x_t, variance) from chain
   * timestep `t` to the previous one. For a respaced chain the one-step α is ᾱ_t/ᾱ_prev; when the chain
   * steps to t−1 the stored f32 β_t and α_t are used, exactly as MONAI does.
   */
  posterior(t: number): { prev: number; cx0: number; cxt: number; variance: number } {
    this.checkTimestep(t);
    const prev = this.previousTimestep(t);
    const aT = this.alphaBar(t);
    const aPrev = this.alphaBar(prev);
    const consecutive = prev === t - 1;
    const alphaStep = consecutive ? this.schedule.alphas[t] : aT / aPrev;
    const betaStep = consecutive ? this.schedule.betas[t] : 1 - alphaStep;
    return {
      prev,
      cx0: Math.sqrt(aPrev) * betaStep / (1 - aT),
      cxt: Math.sqrt(alphaStep) * (1 - aPrev) / (1 - aT),
      variance: Math.max((1 - aPrev) / (1 - aT) * betaStep, 1e-20),
    };
  }

  /** Steps from `t` to the previous timestep of the chain with the posterior q(x_prev | x_t, x̂0). */
  step(modelOutput: Tensor, t: number, sample: Tensor, opts: StepOptions = {}): StepResult {
    return noGrad(() => {
      const { prev, cx0, cxt, variance } = this.posterior(t);
      const { x0, eps } = this.predict(modelOutput, sample, this.alphaBar(t));
      eps.dispose();
      let prevSample: Tensor;
      if (prev >= 0) {
        const { noise, owned } = this.stepNoise(sample, opts);
        const mean = map("ddpm_mean", "s0 * a + s1 * b", [x0, sample], [cx0, cxt]);
        prevSample = map("axpy_s", "a + s0 * b", [mean, noise], [Math.sqrt(variance)]);
        mean.dispose();
        if (owned) noise.dispose();
      } else {
        prevSample = map("ddpm_mean", "s0 * a + s1 * b", [x0, sample], [cx0, cxt]);
      }
      return { prevSample, predOriginalSample: x0 };
    });
  }
}

/** Options of {@linkcode DDIMScheduler}. */
export interface DDIMOptions extends SchedulerOptions {
  /** Use ᾱ = 1 after the last step (default true, as MONAI). */
  setAlphaToOne?: boolean;
  /** Added to every timestep (MONAI's `steps_offset`). Default 0. */
  stepsOffset?: number;
}

/** DDIM (Song et al. 2021), MONAI's `DDIMScheduler`, with deterministic inversion. */
export class DDIMScheduler extends Scheduler {
  /** ᾱ used after the final step. */
  readonly finalAlphaCumprod: number;
  /** Offset added to every timestep. */
  readonly stepsOffset: number;

  /** A DDIM scheduler (MONAI's defaults: ᾱ = 1 after the last step, no offset). */
  constructor(opts: DDIMOptions = {}) {
    super(opts);
    this.finalAlphaCumprod = (opts.setAlphaToOne ?? true) ? 1 : this.schedule.alphasCumprod[0];
    this.stepsOffset = opts.stepsOffset ?? 0;
    // MONAI sets the full chain here, which fails for any stepsOffset > 0; we keep the plain chain then.
    if (this.stepsOffset === 0) this.setTimesteps(this.numTrainTimesteps);
  }

  /** MONAI's spacing plus `stepsOffset`. */
  override setTimesteps(n: number): void {
    super.setTimesteps(n);
    const ratio = Math.floor(this.numTrainTimesteps / n);
    if (this.stepsOffset >= ratio) {
      throw new Error(`stepsOffset ${this.stepsOffset} must be below T // steps = ${ratio}.`);
    }
    this.timesteps = this.timesteps.map((t) => t + this.stepsOffset);
  }

  #alphaPrev(prev: number): number {
    return prev >= 0 ? this.schedule.alphasCumprod[prev] : this.finalAlphaCumprod;
  }

  /** One DDIM step; `eta` > 0 adds the stochastic term σ_t(η). */
  step(modelOutput: Tensor, t: number, sample: Tensor, opts: StepOptions = {}): StepResult {
    return noGrad(() => {
      this.checkTimestep(t);
      const eta = opts.eta ?? 0;
      const prev = t - Math.floor(this.numTrainTimesteps / this.numInferenceSteps);
      const aT = this.schedule.alphasCumprod[t];
      const aPrev = this.#alphaPrev(prev);
      const { x0, eps } = this.predict(modelOutput, sample, aT);
      const variance = (1 - aPrev) / (1 - aT) * (1 - aT / aPrev);
      const std = eta * Math.sqrt(variance);
      const dir = Math.sqrt(Math.max(1 - aPrev - std * std, 0));
      let prevSample = map("ddim", "s0 * a + s1 * b", [x0, eps], [Math.sqrt(aPrev), dir]);
      eps.dispose();
      if (eta > 0) {
        const { noise, owned } = this.stepNoise(sample, opts);
        const noisy = map("axpy_s", "a + s0 * b", [prevSample, noise], [std]);
        prevSample.dispose();
        prevSample = noisy;
        if (owned) noise.dispose();
      }
      return { prevSample, predOriginalSample: x0 };
    });
  }

  /** Deterministic DDIM inversion: from x_t to x at the next (noisier) timestep of the chain. */
  reversedStep(modelOutput: Tensor, t: number, sample: Tensor): StepResult {
    return noGrad(() => {
      this.checkTimestep(t);
      const next = t + Math.floor(this.numTrainTimesteps / this.numInferenceSteps);
      const aT = this.schedule.alphasCumprod[t];
      const aNext = this.#alphaPrev(next >= this.numTrainTimesteps ? this.numTrainTimesteps - 1 : next);
      const { x0, eps } = this.predict(modelOutput, sample, aT);
      const prevSample = map("ddim", "s0 * a + s1 * b", [x0, eps], [Math.sqrt(aNext), Math.sqrt(1 - aNext)]);
      eps.dispose();
      return { prevSample, predOriginalSample: x0 };
    });
  }
}

/**
 * Euler ancestral sampling in the σ parameterisation of Karras et al. / k-diffusion: σ_t = √((1−ᾱ_t)/ᾱ_t),
 * model input scaled by 1/√(σ²+1), timesteps evenly spaced in [0, T−1] with σ interpolated between them.
 */
export class EulerAncestralScheduler extends Scheduler {
  /** σ of each timestep of the chain, followed by 0. */
  sigmas: number[] = [];
  /** Fractional timesteps of the chain (passed to the model). */
  override timesteps: number[] = [];

  /** An Euler ancestral scheduler over the given noise schedule. */
  constructor(opts: SchedulerOptions = {}) {
    super(opts);
    this.setTimesteps(this.numTrainTimesteps);
  }

  #sigmaAt(t: number): number {
    const lo = Math.floor(t);
    const hi = Math.min(lo + 1, this.numTrainTimesteps - 1);
    const s = (i: number) => Math.sqrt((1 - this.schedule.alphasCumprod[i]) / this.schedule.alphasCumprod[i]);
    return s(lo) + (s(hi) - s(lo)) * (t - lo);
  }

  /** `n` timesteps evenly spaced over [0, T−1] (fractional), with their σ. */
  override setTimesteps(n: number): void {
    if (!Number.isInteger(n) || n < 1 || n > this.numTrainTimesteps) {
      throw new Error(
        `setTimesteps(${n}): the number of steps must be an integer in 1..${this.numTrainTimesteps}.`,
      );
    }
    this.numInferenceSteps = n;
    const T = this.numTrainTimesteps - 1;
    this.timesteps = [...Array(n).keys()].map((i) => (n === 1 ? T : T - (T * i) / (n - 1)));
    this.sigmas = [...this.timesteps.map((t) => this.#sigmaAt(t)), 0];
    this.initNoiseSigma = Math.sqrt(this.sigmas[0] ** 2 + 1);
  }

  /** x / √(σ² + 1): the network sees inputs of unit variance. */
  override scaleModelInput(sample: Tensor, t: number): Tensor {
    const sigma = this.sigmas[this.#index(t)];
    return map("scale", "a * s0", [sample], [1 / Math.sqrt(sigma * sigma + 1)]);
  }

  #index(t: number): number {
    const i = this.timesteps.indexOf(t);
    if (i < 0) throw new Error(`timestep ${t} is not in the current chain (call setTimesteps first).`);
    return i;
  }

  /** The next timestep of the chain (−1 after the last). */
  override previousTimestep(t: number): number {
    const i = this.#index(t);
    return i + 1 < this.timesteps.length ? this.timesteps[i + 1] : -1;
  }

  /** In the σ parameterisation x = x0 + σ·ε. */
  override noiseToTimestep(x0: Tensor, noise: Tensor, t: number): Tensor {
    if (t < 0) return map("copy", "a", [x0]);
    return map("axpy_s", "a + s0 * b", [x0, noise], [this.sigmas[this.#index(t)]]);
  }

  /** One Euler ancestral step from the chain's timestep `t`. */
  step(modelOutput: Tensor, t: number, sample: Tensor, opts: StepOptions = {}): StepResult {
    return noGrad(() => {
      const i = this.#index(t);
      const sigma = this.sigmas[i];
      const sigmaTo = this.sigmas[i + 1];
      let x0: Tensor;
      switch (this.predictionType) {
        case "epsilon":
          x0 = map("euler_x0_eps", "b - s0 * a", [modelOutput, sample], [sigma]);
          break;
        case "v_prediction": {
          const c = 1 / (sigma * sigma + 1);
          x0 = map("euler_x0_v", "a * s0 + b * s1", [modelOutput, sample], [-sigma * Math.sqrt(c), c]);
          break;
        }
        case "sample":
          x0 = map("copy", "a", [modelOutput]);
          break;
      }
      const sigmaUp = Math.sqrt(Math.max(sigmaTo ** 2 * (sigma ** 2 - sigmaTo ** 2) / sigma ** 2, 0));
      const sigmaDown = Math.sqrt(Math.max(sigmaTo ** 2 - sigmaUp ** 2, 0));
      // x + d·(σ_down − σ) with d = (x − x̂0)/σ.
      const r = (sigmaDown - sigma) / sigma;
      let prevSample = map("euler", "b + s0 * (b - a)", [x0, sample], [r]);
      if (sigmaUp > 0) {
        const { noise, owned } = this.stepNoise(sample, opts);
        const noisy = map("axpy_s", "a + s0 * b", [prevSample, noise], [sigmaUp]);
        prevSample.dispose();
        prevSample = noisy;
        if (owned) noise.dispose();
      }
      return { prevSample, predOriginalSample: x0 };
    });
  }
}
