/**
 * Diffusion samplers: MONAI-compatible noise schedules, the DDPM, DDIM and Euler-ancestral schedulers, the
 * sampler registry (names the CLI and server accept), and the sampling loop with conditioning,
 * classifier-free guidance and inpainting. Runs wherever WebGPU does.
 *
 * @example
 * ```ts
 * import { ready } from "@voxgen/voxgen/engine";
 * import { DDIMScheduler, sample } from "@voxgen/voxgen/samplers";
 * await ready();
 * // A "denoiser" that always predicts zero noise: DDIM then returns its starting noise, rescaled.
 * const { zerosLike } = await import("@voxgen/voxgen/engine");
 * const x = await sample((xt) => zerosLike(xt), new DDIMScheduler(), { shape: [1, 1, 4, 4, 4], steps: 5 });
 * console.log(x.shape);
 * ```
 *
 * @module
 */

export {
  type DDIMOptions,
  DDIMScheduler,
  DDPMScheduler,
  EulerAncestralScheduler,
  type PredictionType,
  Scheduler,
  type SchedulerOptions,
  type StepOptions,
  type StepResult,
} from "./scheduler.ts";
export { makeSchedule, type NoiseSchedule, type ScheduleName, type ScheduleOptions } from "./schedule.ts";
export {
  type Conditioning,
  type Denoiser,
  predictGuided,
  sample,
  type SampleOptions,
  type SampleProgress,
  sampleSettings,
  type WeightedCondition,
} from "./sample.ts";
export {
  ACCEPTED_SAMPLER_NAMES,
  DEFAULT_SAMPLER,
  findSampler,
  makeScheduler,
  SAMPLER_NAMES,
  SAMPLER_REGISTRY,
  type SamplerEntry,
} from "./registry.ts";
export {
  planStages,
  type SliceDenoiser,
  type Stage,
  type StagedProgress,
  stagedSample,
  type StagedSampleOptions,
  type StagePlanMode,
  type StagePlanOptions,
  type StageSlots,
} from "./staged.ts";
