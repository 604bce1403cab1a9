/**
 * Slice-model files (cDPM) and whole-volume generation from them.
 *
 * A slice-model file is a safetensors file of a {@linkcode SliceDiffusionUNet}'s weights whose metadata
 * holds what sampling needs: the network options, the slots per stage and the default stage plan, the
 * noise schedule, and the volume geometry (as in pipelines/modelfile.ts). Its format tag
 * `voxgen-slice-unet` tells it apart from 3-D model files.
 *
 * @module
 */

import type { Tensor } from "../engine/tensor.ts";
import { loadSafetensorsFile, readSafetensorsMetadata, saveSafetensors } from "../io/safetensors.ts";
import { SliceDiffusionUNet, type SliceUNetOptions } from "../models/slice_unet.ts";
import type { Denoiser, SampleOptions } from "../samplers/sample.ts";
import type { Scheduler, SchedulerOptions } from "../samplers/scheduler.ts";
import { planStages, type StagedProgress, stagedSample, type StagePlanMode } from "../samplers/staged.ts";
import type { Generator } from "./generate.ts";
import type { VolumeInfo } from "./modelfile.ts";

/** The format tag of slice-model files. */
export const SLICE_MODEL_FORMAT = "voxgen-slice-unet";

/** What a slice-model file describes besides its weights. */
export interface SliceModelInfo {
  /** SliceDiffusionUNet options. */
  network: SliceUNetOptions;
  /** Slots the model was trained with (condition + target slices per example). */
  slots: number;
  /** Default stage plan: layout and slices generated per stage (default "paper", slots / 2). */
  plan?: { mode?: StagePlanMode; step?: number };
  /** Noise schedule and prediction type the model was trained with. */
  scheduler: SchedulerOptions;
  /** Geometry of the training volumes (shape [nx, ny, nz]: slices are along z). */
  volume: VolumeInfo;
  /** Free-form description. */
  description?: string;
}

/** Saves slice-model weights with their info, atomically. */
export async function saveSliceModelFile(
  path: string,
  weights: Map<string, Tensor>,
  info: SliceModelInfo,
): Promise<void> {
  await saveSafetensors(path, weights, {
    format: SLICE_MODEL_FORMAT,
    network: JSON.stringify(info.network),
    slots: String(info.slots),
    plan: JSON.stringify(info.plan ?? {}),
    scheduler: JSON.stringify(info.scheduler),
    volume: JSON.stringify(info.volume),
    description: info.description ?? "",
  });
}

/** Whether `path` is a slice-model file (reads the header only). */
export async function isSliceModelFile(path: string): Promise<boolean> {
  return (await readSafetensorsMetadata(path)).format === SLICE_MODEL_FORMAT;
}

/** A loaded slice model: the network (eval mode, frozen) and its info. */
export interface LoadedSliceModel {
  /** The network. */
  net: SliceDiffusionUNet;
  /** Its info. */
  info: SliceModelInfo;
}

/** Loads a file written by {@linkcode saveSliceModelFile}. */
export async function loadSliceModelFile(path: string): Promise<LoadedSliceModel> {
  const { tensors, metadata: meta } = await loadSafetensorsFile(path);
  try {
    if (meta.format !== SLICE_MODEL_FORMAT) {
      throw new Error(
        `${path} is not a voxgen slice-model file (metadata format ${JSON.stringify(meta.format)}).`,
      );
    }
    const info: SliceModelInfo = {
      network: JSON.parse(meta.network),
      slots: Number(meta.slots),
      plan: JSON.parse(meta.plan || "{}"),
      scheduler: JSON.parse(meta.scheduler),
      volume: JSON.parse(meta.volume),
      description: meta.description,
    };
    const net = new SliceDiffusionUNet(info.network);
    net.loadStateDict(tensors);
    net.eval().freeze();
    return { net, info };
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}

/** What to generate with {@linkcode generateSliceVolumes}. */
export interface SliceVolumeRequest {
  /** Volumes generated together (default 1). */
  volumes?: number;
  /** Slices per volume (default: the training depth). */
  depth?: number;
  /** Slices generated per stage (default: the file's plan, else slots / 2). */
  step?: number;
  /** Stage layout (default: the file's plan, else "paper"). */
  mode?: StagePlanMode;
  /** Sampling steps per stage. */
  steps?: number;
  /** Seed (default 0). */
  seed?: number;
  /** DDIM η. */
  eta?: number;
  /** Progress by stage and step. */
  onProgress?: (p: StagedProgress) => void;
  /** Stops between steps. */
  signal?: AbortSignal;
}

/**
 * Generates whole volumes [B, C, depth, ny, nx] stage by stage with a slice model and a scheduler built
 * from its schedule (the caller disposes the result). A model without slice attention generates every
 * slice of a volume independently, all in one stage (`step` and `mode` do not apply).
 */
export async function generateSliceVolumes(
  model: LoadedSliceModel,
  scheduler: Scheduler,
  request: SliceVolumeRequest = {},
): Promise<Tensor> {
  const { info, net } = model;
  const [nx, ny, nz] = info.volume.shape;
  const depth = request.depth ?? nz;
  // Without slice attention the slices are independent: one stage generates them all at once.
  const plan = net.config.sliceAttention
    ? planStages(depth, {
      slots: info.slots,
      step: request.step ?? info.plan?.step,
      mode: request.mode ?? info.plan?.mode,
    })
    : [{ condition: [], target: Array.from({ length: depth }, (_, z) => z) }];
  return await stagedSample((x, t, slots) => net.forward(x, t, { slices: slots }), scheduler, {
    volumes: request.volumes ?? 1,
    sliceShape: [net.config.inChannels, ny, nx],
    plan,
    steps: request.steps,
    seed: request.seed,
    eta: request.eta,
    onProgress: request.onProgress,
    signal: request.signal,
  });
}

/**
 * The whole-volume chain of a slice model with the signature of `sample` (what the generation pipeline
 * calls): `opts.shape` [B, C, depth, ny, nx] is built stage by stage with the model's default plan. The
 * `denoiser` argument is not used (a slice model is called with its slot layout); conditions, guidance and
 * inpainting are refused. Progress counts steps over all stages.
 */
export function stagedChain(
  model: LoadedSliceModel,
): (denoiser: Denoiser, scheduler: Scheduler, opts: SampleOptions) => Promise<Tensor> {
  return async (_denoiser, scheduler, opts) => {
    if (opts.condition || opts.guidance || opts.known || opts.mask) {
      throw new Error("slice models take no conditions, guidance or inpainting (yet).");
    }
    const [b, c, depth, ny, nx] = opts.shape;
    const [tx, ty] = model.info.volume.shape;
    if (opts.shape.length !== 5 || c !== model.net.config.inChannels || nx !== tx || ny !== ty) {
      throw new Error(
        `a slice model generates [B, ${model.net.config.inChannels}, depth, ${ty}, ${tx}], not [${
          opts.shape.join(", ")
        }].`,
      );
    }
    return await generateSliceVolumes(model, scheduler, {
      volumes: b,
      depth,
      steps: opts.steps,
      seed: opts.seed,
      eta: opts.eta,
      signal: opts.signal,
      onProgress: (p) =>
        opts.onProgress?.({
          step: (p.stage - 1) * p.steps + p.step,
          total: p.stages * p.steps,
          timestep: p.timestep,
        }),
    });
  };
}

/**
 * The generation pipeline's view of a slice model: volumes of `depth` slices (default: the training depth)
 * built by {@linkcode stagedChain}; disposing it disposes the network.
 */
export function sliceGenerator(model: LoadedSliceModel, depth?: number): Generator {
  const { info, net } = model;
  const [nx, ny, nz] = info.volume.shape;
  const d = depth ?? nz;
  if (!Number.isInteger(d) || d < 1) {
    throw new Error(`a slice model's depth must be a positive integer, got ${d}.`);
  }
  return {
    denoiser: () => {
      throw new Error("a slice model is sampled through its staged chain, not as one denoiser.");
    },
    sampleShape: [net.config.inChannels, d, ny, nx],
    scheduler: info.scheduler,
    parameterCount: net.numParameters(),
    volume: { ...info.volume, shape: [nx, ny, d] },
    sampleChain: stagedChain(model),
    dispose: () => net.dispose(),
  };
}
