/**
 * The generation pipeline: the one path from a loaded model and a request to finished volumes, used by
 * `deno task sample`, the server's GPU worker and the scripts. It does what diffusers' pipeline `__call__`
 * and MONAI's inferers do: turn the request's conditions into conditionings, build the scheduler, run the
 * sampling chain, decode, clamp to the model's intensity range and read the volumes back.
 *
 * Model kinds plug in through {@linkcode Generator}: a plain U-Net model gives its denoiser and sample
 * shape; a latent model gives the latent shape and a `decode` step; a controlled model wraps its denoiser
 * (ControlNet residuals go in there); a slice model that generates in stages replaces the chain with
 * `sampleChain`. Nothing else changes for them: the CLI and the server get them for free.
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { scope } from "../engine/memory.ts";
import { map } from "../engine/ops/map.ts";
import { full, tensor } from "../engine/ops/create.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { Affine } from "../io/nifti.ts";
import { parsePrompt } from "../models/prompt.ts";
import type { TokenTable } from "../models/tokens.ts";
import { makeScheduler } from "../samplers/registry.ts";
import {
  type Conditioning,
  type Denoiser,
  sample,
  type SampleOptions,
  type SampleProgress,
} from "../samplers/sample.ts";
import type { Scheduler, SchedulerOptions } from "../samplers/scheduler.ts";

/** Geometry and intensity convention of the volumes a model generates. */
export interface VolumeInfo {
  /** Spatial size [nx, ny, nz] (the tensor is [1, C, nz, ny, nx]). */
  shape: [number, number, number];
  /** Voxel → world affine of generated volumes. */
  affine: Affine;
  /** Intensity range the model was trained in (e.g. [-1, 1]). */
  range: [number, number];
}

/** The conditions a model accepts (absent parts: the model does not take that kind of condition). */
export interface ConditionSpec {
  /**
   * Class labels: `count` classes; `nullClass` is the label the model learned as "no class" (trained with
   * condition dropout), which classifier-free guidance needs.
   */
  classes?: { count: number; nullClass?: number };
  /** The token table prompts are encoded with (a cross-attention model conditioned on learned tokens). */
  tokens?: TokenTable;
  /** Condition volumes the model takes as extra input channels (zeros = the null condition). */
  channels?: number;
}

/**
 * A model ready to generate — what {@linkcode generate} needs from any model kind. Build one with
 * `loadGenerator` (pipelines/generators.ts) or by hand for a new kind.
 */
export interface Generator {
  /** Predicts what the model was trained to predict (ε, v or x0) for x_t at timestep t. */
  readonly denoiser: Denoiser;
  /** Shape of one sample the denoiser works on, [C, nz, ny, nx] (for a latent model: the latent's). */
  readonly sampleShape: readonly number[];
  /** Noise schedule and prediction type the denoiser was trained with. */
  readonly scheduler: SchedulerOptions;
  /** Number of weights (for logs). */
  readonly parameterCount: number;
  /** Geometry and intensity range of the output volumes (image space). */
  readonly volume: VolumeInfo;
  /** The conditions it accepts; none for an unconditional model. */
  readonly conditions?: ConditionSpec;
  /** Maps the final sample [B, …sampleShape] to image space [B, C, nz, ny, nx] (a latent model decodes). */
  readonly decode?: (x: Tensor) => Tensor;
  /** Runs the whole chain in its own way (e.g. staged generation); default {@linkcode sample}. */
  readonly sampleChain?: (denoiser: Denoiser, scheduler: Scheduler, opts: SampleOptions) => Promise<Tensor>;
  /** Frees its GPU memory. */
  dispose(): void;
}

/** What to generate. */
export interface GenerationRequest {
  /** Sampler name or alias (samplers/registry.ts). */
  sampler: string;
  /** Denoising steps. */
  steps: number;
  /** Seed of all the noise. */
  seed: number;
  /** Volumes to generate (default 1). */
  batch?: number;
  /** DDIM η (default 0). */
  eta?: number;
  /** Classifier-free guidance scale (default 1 = plain conditional sampling, no unconditional pass). */
  guidanceScale?: number;
  /**
   * Prompt, for a model with a token table: `"<t1>"`, `"<t1>:0.25 AND <flair>:0.75"`, or `""` (the null
   * context, the default). See models/prompt.ts.
   */
  prompt?: string;
  /** Class label, for a class-conditional model. */
  classLabel?: number;
  /**
   * Condition volumes, for a model that takes them as input channels: one volume per channel, x fastest,
   * on the output grid (e.g. a mask).
   */
  condition?: Float32Array;
  /**
   * Inpainting: the model generates the voxels where `mask` is non-zero (as in diffusers: the mask marks
   * what to repaint) and keeps `image` everywhere else. Both are one output volume, x fastest; `image` is
   * in the model's intensity range.
   */
  inpaint?: { image: Float32Array; mask: Float32Array };
  /** Called after every step. */
  onProgress?: (p: SampleProgress) => void;
  /** Stops generation between steps (the promise rejects). */
  signal?: AbortSignal;
}

/** Finished volumes, on the CPU. */
export interface GeneratedVolumes {
  /** Channel 0 of every batch item, x fastest, clamped to `range`. */
  volumes: Float32Array[];
  /** Spatial size [nx, ny, nz]. */
  shape: [number, number, number];
  /** Voxel → world affine. */
  affine: Affine;
  /** Intensity range of the values. */
  range: [number, number];
}

/** Runs `request` on `model` and returns the volumes. The model stays loaded (the caller disposes it). */
export async function generate(model: Generator, request: GenerationRequest): Promise<GeneratedVolumes> {
  const batch = request.batch ?? 1;
  const scheduler = makeScheduler(request.sampler, model.scheduler);
  const shape = [batch, ...model.sampleShape];
  const owned: Tensor[] = [];
  try {
    const opts: SampleOptions = {
      shape,
      steps: request.steps,
      seed: request.seed,
      eta: request.eta,
      signal: request.signal,
      onProgress: request.onProgress,
      ...conditioningOf(model, request, batch, owned),
      ...inpaintingOf(model, request, shape, owned),
    };
    const run = model.sampleChain ?? sample;
    const x = await run(model.denoiser, scheduler, opts);
    return await readVolumes(model, x, batch);
  } finally {
    for (const t of owned) t.dispose();
  }
}

/**
 * The plain condition or the guidance of a request, checked against what the model accepts. A prompt's
 * sub-prompts become weighted conditions (weight × guidance scale, A1111's semantics) against the null
 * context; a class label is guided against the null class. Without guidance (one condition of weight 1)
 * there is no unconditional pass.
 */
function conditioningOf(
  model: Generator,
  request: GenerationRequest,
  batch: number,
  owned: Tensor[],
): Pick<SampleOptions, "condition" | "guidance"> {
  const scale = request.guidanceScale ?? 1;
  if (!Number.isFinite(scale)) throw new Error(`guidance scale ${scale} is not a number.`);
  const { classes, tokens, channels } = model.conditions ?? {};
  if (request.classLabel !== undefined && !classes) {
    throw new Error("a class label was given, but the model has no classes.");
  }
  if (request.condition !== undefined && !channels) {
    throw new Error("a condition volume was given, but the model takes none.");
  }
  const volumes = channels ? conditionTensors(model, request, channels, owned) : undefined;
  if (request.prompt !== undefined && !tokens) {
    throw new Error(
      "a prompt was given, but the model has no token table (it is not conditioned on tokens).",
    );
  }
  if (!classes && !tokens && !volumes) {
    if (scale !== 1) {
      throw new Error(
        `guidance scale ${scale}: the model is unconditional, so only 1 (no guidance) applies.`,
      );
    }
    return {};
  }
  const label = request.classLabel;
  if (classes && (label === undefined || !Number.isInteger(label) || label < 0 || label >= classes.count)) {
    throw new Error(
      `the model is class-conditional: give a class label, an integer in 0..${classes.count - 1}` +
        (label === undefined ? "." : ` (got ${label}).`),
    );
  }
  // Without a token table the class label is the one condition; the empty prompt is the null context.
  const parts = tokens ? parsePrompt(request.prompt ?? "") : [{ tokens: [], weight: 1 }];
  tokens?.checkTokens(parts.flatMap((p) => p.tokens));
  // words null: the unconditional pass of guidance (null context, null class, zero condition volumes).
  const make = (words: readonly string[] | null, classValue: number | undefined): Conditioning => {
    const c: Conditioning = {};
    if (tokens) owned.push(c.context = tokens.encode(words ?? []));
    if (classValue !== undefined) owned.push(c.classLabels = full([batch], classValue));
    if (volumes) c.channels = words === null ? volumes.none : volumes.given;
    return c;
  };
  // The null prompt alone: no guidance pass (the condition volumes, if any, still apply).
  if (parts.length === 0) return { condition: make([], label) };
  if (parts.length === 1 && parts[0].weight * scale === 1) return { condition: make(parts[0].tokens, label) };
  let nullClass: number | undefined;
  if (classes) {
    nullClass = classes.nullClass;
    if (nullClass === undefined) {
      throw new Error(
        `guidance scale ${scale}: the model learned no null class (it was trained without condition ` +
          "dropout), so it cannot be guided; use scale 1.",
      );
    }
  }
  return {
    guidance: {
      unconditional: make(null, nullClass),
      conditions: parts.map((p) => ({ ...make(p.tokens, label), weight: p.weight * scale })),
    },
  };
}

/** The request's condition volumes [1, Cc, nz, ny, nx] and the null condition (zeros) of that shape. */
function conditionTensors(
  model: Generator,
  request: GenerationRequest,
  channels: number,
  owned: Tensor[],
): { given: Tensor; none: Tensor } {
  const [nx, ny, nz] = model.volume.shape;
  const expected = channels * nx * ny * nz;
  if (!request.condition) {
    throw new Error(`the model takes ${channels} condition volume(s) of ${nx}×${ny}×${nz}; give them.`);
  }
  if (request.condition.length !== expected) {
    throw new Error(
      `the condition has ${request.condition.length} values; the model takes ${channels} × ${nx}×${ny}×${nz} = ${expected}.`,
    );
  }
  const given = tensor(request.condition, [1, channels, nz, ny, nx]);
  const none = full([1, channels, nz, ny, nx], 0);
  owned.push(given, none);
  return { given, none };
}

/** The `known`/`mask` tensors of an inpainting request. */
function inpaintingOf(
  model: Generator,
  request: GenerationRequest,
  shape: readonly number[],
  owned: Tensor[],
): Pick<SampleOptions, "known" | "mask"> {
  if (!request.inpaint) return {};
  if (model.decode) {
    throw new Error("inpainting needs a model that samples in image space; this one decodes latents.");
  }
  const [nx, ny, nz] = model.volume.shape;
  const voxels = nx * ny * nz;
  const { image, mask } = request.inpaint;
  for (const [name, values] of [["image", image], ["mask", mask]] as const) {
    if (values.length !== voxels) {
      throw new Error(
        `the inpainting ${name} has ${values.length} voxels; the model generates ${nx}×${ny}×${nz} = ${voxels}.`,
      );
    }
  }
  // One volume, repeated over batch and channels: the same known region for every sample.
  const repeats = shape[0] * shape[1];
  const knownValues = new Float32Array(repeats * voxels);
  for (let r = 0; r < repeats; r++) knownValues.set(image, r * voxels);
  const known = tensor(knownValues, shape);
  owned.push(known);
  // The sampler's mask is the other way round: 1 where the known image is kept.
  const maskTensor = tensor(Float32Array.from(mask, (m) => (m !== 0 ? 0 : 1)), [1, 1, nz, ny, nx]);
  owned.push(maskTensor);
  return { known, mask: maskTensor };
}

/** Decodes (if the model does), clamps to the trained range and reads channel 0 of every item back. */
async function readVolumes(model: Generator, x: Tensor, batch: number): Promise<GeneratedVolumes> {
  const { shape, affine, range } = model.volume;
  const [lo, hi] = range;
  let clamped: Tensor;
  try {
    // Back to the trained intensity range (for an image-space model x̂0 is clipped there already).
    clamped = noGrad(() =>
      scope(() => map("clamp", "min(max(a, s0), s1)", [model.decode ? model.decode(x) : x], [lo, hi]))
    );
  } finally {
    x.dispose();
  }
  const all = await clamped.toArray();
  const channels = clamped.shape[1];
  clamped.dispose();
  const voxels = shape[0] * shape[1] * shape[2];
  if (all.length !== batch * channels * voxels) {
    throw new Error(
      `generate: the model's output has ${all.length} values, not ${batch}×${channels}×${voxels}.`,
    );
  }
  const volumes = Array.from(
    { length: batch },
    (_, b) => all.slice(b * channels * voxels, b * channels * voxels + voxels),
  );
  return { volumes, shape: [...shape], affine, range: [lo, hi] };
}
