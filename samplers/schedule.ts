/**
 * Noise schedules (β_t, α_t = 1 − β_t, ᾱ_t = Π α) exactly as MONAI computes them, including its float32
 * arithmetic (values are rounded to f32 at each step, so coefficients match MONAI's to the last bit or two).
 *
 * @module
 */

/** Names of the supported β schedules. */
export type ScheduleName = "linear_beta" | "scaled_linear_beta" | "cosine" | "sigmoid_beta";

/** Options shared by every scheduler. */
export interface ScheduleOptions {
  /** Number of diffusion steps the model was trained with (T). Default 1000. */
  numTrainTimesteps?: number;
  /** β schedule. Default "linear_beta". */
  schedule?: ScheduleName;
  /** First β (linear and scaled-linear schedules). Default 1e-4. */
  betaStart?: number;
  /** Last β. Default 2e-2. */
  betaEnd?: number;
  /** Cosine schedule offset s. Default 8e-3. */
  cosineS?: number;
  /** Sigmoid schedule range. Default 6. */
  sigmoidRange?: number;
}

/** The schedule arrays, indexed by training timestep 0..T−1. */
export interface NoiseSchedule {
  /** β_t. */
  betas: Float64Array;
  /** α_t = 1 − β_t. */
  alphas: Float64Array;
  /** ᾱ_t = Π_{s≤t} α_s. */
  alphasCumprod: Float64Array;
}

const f32 = Math.fround;

/** torch.linspace(start, end, n) in float32 (torch computes start + i·step, mirrored from the end for the upper half). */
function linspace32(start: number, end: number, n: number): Float64Array {
  const out = new Float64Array(n);
  if (n === 1) {
    out[0] = f32(start);
    return out;
  }
  const step = f32((end - start) / (n - 1));
  const half = Math.floor(n / 2);
  for (let i = 0; i < n; i++) out[i] = i < half ? f32(start + step * i) : f32(end - step * (n - 1 - i));
  return out;
}

/** Builds the schedule for `opts` (MONAI's definitions). */
export function makeSchedule(opts: ScheduleOptions = {}): NoiseSchedule {
  const T = opts.numTrainTimesteps ?? 1000;
  if (!Number.isInteger(T) || T < 1) {
    throw new Error(`numTrainTimesteps must be a positive integer, got ${T}.`);
  }
  const name = opts.schedule ?? "linear_beta";
  const b0 = opts.betaStart ?? 1e-4;
  const b1 = opts.betaEnd ?? 2e-2;
  let betas: Float64Array;
  switch (name) {
    case "linear_beta":
      betas = linspace32(b0, b1, T);
      break;
    case "scaled_linear_beta":
      betas = linspace32(Math.sqrt(b0), Math.sqrt(b1), T).map((b) => f32(b * b));
      break;
    case "sigmoid_beta": {
      const range = opts.sigmoidRange ?? 6;
      betas = linspace32(-range, range, T).map((x) => f32(f32(1 / (1 + Math.exp(-x))) * f32(b1 - b0) + b0));
      break;
    }
    case "cosine": {
      // Nichol & Dhariwal: ᾱ(t) = cos²(((t/T) + s)/(1 + s)·π/2), normalised by ᾱ(0); β clipped to 0.999.
      const s = opts.cosineS ?? 8e-3;
      const x = linspace32(0, T, T + 1);
      const pi = f32(Math.PI);
      const onePlusS = f32(1 + s);
      const ac = x.map((v) =>
        f32(f32(Math.cos(f32(f32(f32(f32(f32(v / T) + s) / onePlusS) * pi) * 0.5))) ** 2)
      );
      const a0 = ac[0];
      const norm = ac.map((v) => f32(v / a0));
      betas = new Float64Array(T);
      for (let t = 0; t < T; t++) {
        betas[t] = Math.min(Math.max(f32(1 - f32(norm[t + 1] / norm[t])), 0), 0.999);
      }
      break;
    }
    default:
      throw new Error(
        `Unknown schedule "${name}"; accepted: linear_beta, scaled_linear_beta, cosine, sigmoid_beta.`,
      );
  }
  const alphas = betas.map((b) => f32(1 - b));
  const alphasCumprod = new Float64Array(T);
  let prod = 1;
  for (let t = 0; t < T; t++) {
    prod = f32(prod * alphas[t]);
    alphasCumprod[t] = prod;
  }
  return { betas, alphas, alphasCumprod };
}
