/**
 * The sampling loop: from noise to a sample with any scheduler, with classifier-free guidance, composable
 * (weighted "A AND B") guidance and inpainting. Every step runs inside a scope, so memory after step N
 * equals memory after step 1.
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { scope } from "../engine/memory.ts";
import { map } from "../engine/ops/map.ts";
import { sync } from "../engine/runtime.ts";
import { randn } from "../engine/ops/random.ts";
import { concat, expand, slice } from "../engine/ops/view.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { Scheduler } from "./scheduler.ts";

/** Conditioning passed to the model. */
export interface Conditioning {
  /** Cross-attention context [B, tokens, dim]. */
  context?: Tensor;
  /** Class labels [B] (integer values stored as f32). */
  classLabels?: Tensor;
  /** Condition volumes [B (or 1), Cc, …] a model takes as extra input channels (zeros = no condition). */
  channels?: Tensor;
}

/** A denoising network: predicts ε (or v, or x0) for input `x` at timestep `t`. */
export type Denoiser = (x: Tensor, t: number, cond: Conditioning) => Tensor;

/** One weighted condition of composable guidance. */
export interface WeightedCondition extends Conditioning {
  /** Guidance weight of this condition. */
  weight: number;
}

/** Progress report of the sampling loop. */
export interface SampleProgress {
  /** Steps done (1-based). */
  step: number;
  /** Total steps. */
  total: number;
  /** The timestep just processed. */
  timestep: number;
}

/** Options of {@linkcode sample}. */
export interface SampleOptions {
  /** Shape of the sample, e.g. [1, 1, 32, 32, 32]. */
  shape: readonly number[];
  /** Number of sampling steps (default: the scheduler's current chain). */
  steps?: number;
  /** Seed of all the noise of this sample (default 0). */
  seed?: number;
  /** DDIM η. */
  eta?: number;
  /** Conditioning of a plain conditional sample (no guidance). */
  condition?: Conditioning;
  /**
   * Guided sampling: ε = ε(∅) + Σ wᵢ·(ε(cᵢ) − ε(∅)). One condition with weight g is classifier-free
   * guidance with scale g; several are composable guidance ("A AND B"). All passes run as one batched
   * forward; contexts and class labels of batch 1 are broadcast to the sample's batch.
   */
  guidance?: { unconditional: Conditioning; conditions: WeightedCondition[] };
  /**
   * Start from this x_T (the sample's shape, already scaled to the scheduler's initial σ) instead of drawn
   * noise — diffusers' `latents`. The noise stream advances as if it had been drawn, so later draws match.
   */
  initial?: Tensor;
  /** Inpainting: values of the known region (same shape as the sample). */
  known?: Tensor;
  /** Inpainting: 1 where `known` is kept, 0 where the model generates (broadcasts to the sample). */
  mask?: Tensor;
  /** Called after every step. */
  onProgress?: (p: SampleProgress) => void;
  /** Stops sampling between steps (the promise rejects). */
  signal?: AbortSignal;
}

/** Knobs of the sampling loop. */
export const sampleSettings: {
  /**
   * Steps recorded ahead of the last one the GPU has finished (default 1). With 1, the next step is recorded
   * while the GPU runs the current one, so the GPU does not wait for the CPU between steps; 0 waits for every
   * step before recording the next (a GPU round trip per step). Progress reports and cancellation lag the
   * recording by this many steps.
   */
  stepsAhead: number;
} = { stepsAhead: 1 };

/**
 * Runs the reverse diffusion chain and returns the sample (the caller disposes it). Steps are submitted
 * without waiting for the GPU in between; `onProgress` reports a step once the GPU has finished it, and an
 * abort signal stops recording between steps (work already submitted, at most
 * {@linkcode sampleSettings}`.stepsAhead` steps, still runs).
 */
export async function sample(model: Denoiser, scheduler: Scheduler, opts: SampleOptions): Promise<Tensor> {
  if ((opts.known === undefined) !== (opts.mask === undefined)) {
    throw new Error("sample: inpainting needs both `known` and `mask`.");
  }
  if (opts.known && opts.known.shape.join() !== opts.shape.join()) {
    throw new Error(
      `sample: known ${formatShape(opts.known.shape)} must have the sample shape ${formatShape(opts.shape)}.`,
    );
  }
  if (opts.steps !== undefined) scheduler.setTimesteps(opts.steps);
  const seed = opts.seed ?? 0;
  const count = opts.shape.reduce((a, b) => a * b, 1);
  const blocks = Math.ceil(count / 4); // Philox blocks one draw consumes: keeps every draw's stream disjoint
  let offset = 0;
  const nextNoise = (): Tensor => {
    const n = randn(opts.shape, { seed, offset });
    offset += blocks;
    return n;
  };
  if (opts.initial && opts.initial.shape.join() !== opts.shape.join()) {
    throw new Error(
      `sample: initial ${formatShape(opts.initial.shape)} must have the sample shape ${
        formatShape(opts.shape)
      }.`,
    );
  }
  let x = noGrad(() =>
    scope(() => {
      if (opts.initial) {
        offset += blocks;
        return map("copy", "a", [opts.initial]);
      }
      const n = nextNoise();
      return scheduler.initNoiseSigma === 1 ? n : map("scale", "a * s0", [n], [scheduler.initNoiseSigma]);
    })
  );
  const total = scheduler.timesteps.length;
  // Steps submitted and not yet seen finished: their completion promises, oldest first.
  const inFlight: Array<{ done: Promise<void>; step: number; timestep: number }> = [];
  const settle = async (keep: number) => {
    while (inFlight.length > keep) {
      const { done, step, timestep } = inFlight.shift()!;
      await done;
      opts.onProgress?.({ step, total, timestep });
    }
  };
  const abandon = async () => {
    x.dispose();
    // Let submitted steps finish (errors included) so that none rejects unobserved.
    await Promise.allSettled(inFlight.map((f) => f.done));
  };
  for (const [i, t] of scheduler.timesteps.entries()) {
    if (opts.signal?.aborted) {
      await abandon();
      throw new Error("sampling was cancelled");
    }
    let next: Tensor;
    try {
      next = noGrad(() =>
        scope(() => {
          const input = scheduler.scaleModelInput(x, t);
          const out = predictGuided(model, input, t, opts);
          const noiseOffset = offset;
          offset += blocks;
          const { prevSample } = scheduler.step(out, t, x, { eta: opts.eta, seed, noiseOffset });
          if (!opts.known || !opts.mask) return prevSample;
          // Inpainting: the known region, noised to the level of the step we arrive at, replaces the sample there.
          const prev = scheduler.previousTimestep(t);
          const knownAtPrev = scheduler.noiseToTimestep(opts.known, nextNoise(), prev);
          return map("inpaint", "select(a, b, c != 0.0)", [prevSample, knownAtPrev, opts.mask]);
        })
      );
    } catch (error) {
      await abandon();
      throw error;
    }
    x.dispose();
    x = next;
    // The step's work is submitted (leaving its scope flushed it); its completion is awaited later.
    const done = sync();
    done.catch(() => {}); // observed by settle or abandon; this only keeps it from counting as unhandled
    inFlight.push({ done, step: i + 1, timestep: t });
    try {
      await settle(Math.max(0, Math.floor(sampleSettings.stepsAhead)));
    } catch (error) {
      await abandon();
      throw error;
    }
  }
  try {
    await settle(0);
  } catch (error) {
    await abandon();
    throw error;
  }
  return x;
}

/**
 * The model output one sampling step uses: the plain prediction, or with guidance
 * ε(∅) + Σ wᵢ·(ε(cᵢ) − ε(∅)) — the unconditional and every conditional pass in ONE forward of a batch
 * (k + 1)·B long, as diffusers does, rather than k + 1 forwards.
 */
export function predictGuided(model: Denoiser, x: Tensor, t: number, opts: SampleOptions): Tensor {
  if (!opts.guidance) return model(x, t, opts.condition ?? {});
  const { unconditional, conditions } = opts.guidance;
  if (conditions.length === 0) throw new Error("sample: guidance needs at least one weighted condition.");
  return scope(() => {
    const passes = [unconditional, ...conditions];
    const batch = x.shape[0];
    const out = model(concat(passes.map(() => x), 0), t, batchConditionings(passes, batch));
    const pass = (i: number) => slice(out, [i * batch], [(i + 1) * batch]);
    const base = pass(0);
    let acc = base;
    conditions.forEach((c, i) => {
      // acc + w·(ε(cᵢ) − ε(∅))
      acc = map("guide", "a + s0 * (b - c)", [acc, pass(i + 1), base], [c.weight]);
    });
    return acc;
  });
}

/** The conditionings of several passes stacked along the batch: each is broadcast to `batch` first. */
function batchConditionings(passes: readonly Conditioning[], batch: number): Conditioning {
  const stacked: Conditioning = {};
  for (const key of ["context", "classLabels", "channels"] as const) {
    const given = passes.filter((p) => p[key] !== undefined).length;
    if (given === 0) continue;
    if (given !== passes.length) {
      throw new Error(
        `sample: guidance passes must all have a ${key} or none (${given} of ${passes.length} do).`,
      );
    }
    stacked[key] = concat(
      passes.map((p) => {
        const t = p[key]!;
        if (t.shape[0] !== 1 && t.shape[0] !== batch) {
          throw new Error(`sample: ${key} ${formatShape(t.shape)} must have batch 1 or ${batch}.`);
        }
        return t.shape[0] === batch ? t : expand(t, [batch, ...t.shape.slice(1)]);
      }),
      0,
    );
  }
  return stacked;
}
