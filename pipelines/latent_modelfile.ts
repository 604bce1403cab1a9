/**
 * Files of latent diffusion:
 *
 * - an **autoencoder file** (`voxgen-autoencoder-kl`): an `AutoencoderKL`'s weights (MONAI names) with its
 *   options, the volume geometry it was trained at, and its validation scores;
 * - a **latent model file** (`voxgen-latent-diffusion`): one safetensors file holding the diffusion U-Net
 *   (keys `unet.*`), the autoencoder (keys `autoencoder.*`), the scheduler, the scale factor s and the
 *   geometry (image volume and latent shape). Sampling runs the U-Net on latents of `latentShape` and decodes
 *   z / s at the end ({@linkcode decodeLatents}).
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { scope } from "../engine/memory.ts";
import { mul } from "../engine/ops/elementwise.ts";
import type { Tensor } from "../engine/tensor.ts";
import { loadSafetensorsFile, saveSafetensors } from "../io/safetensors.ts";
import { AutoencoderKL, type AutoencoderKLOptions } from "../models/autoencoder.ts";
import { DiffusionModelUNet, type DiffusionModelUNetOptions } from "../models/unet.ts";
import type { SchedulerOptions } from "../samplers/scheduler.ts";
import type { VolumeInfo } from "./modelfile.ts";

/** Metadata format of autoencoder files. */
export const AUTOENCODER_KIND = "voxgen-autoencoder-kl";
/** Metadata format of latent model files. */
export const LATENT_KIND = "voxgen-latent-diffusion";

/** What an autoencoder file describes besides its weights. */
export interface AutoencoderInfo {
  /** Constructor options. */
  autoencoder: AutoencoderKLOptions;
  /** Geometry and intensity range of the images it encodes. */
  volume: VolumeInfo;
  /** Validation scores of the reconstructions (held-out volumes), when measured. */
  validation?: { step: number; psnr: number; ssim: number };
  /** Free-form description. */
  description?: string;
}

/** Saves an autoencoder's weights with its info, atomically. */
export async function saveAutoencoderFile(
  path: string,
  weights: Map<string, Tensor>,
  info: AutoencoderInfo,
): Promise<void> {
  await saveSafetensors(path, weights, {
    format: AUTOENCODER_KIND,
    autoencoder: JSON.stringify(info.autoencoder),
    volume: JSON.stringify(info.volume),
    validation: JSON.stringify(info.validation ?? null),
    description: info.description ?? "",
  });
}

/** A loaded autoencoder file: the network (eval mode, frozen) and its info. */
export interface LoadedAutoencoder {
  /** The autoencoder. */
  autoencoder: AutoencoderKL;
  /** Its info. */
  info: AutoencoderInfo;
}

function wrongKind(path: string, found: string | undefined, want: string, hint: string): Error {
  return new Error(`${path} is not a ${want} file (metadata format ${JSON.stringify(found)}); ${hint}`);
}

/** Loads an autoencoder file written by {@linkcode saveAutoencoderFile}. */
export async function loadAutoencoderFile(path: string): Promise<LoadedAutoencoder> {
  const { tensors, metadata: meta } = await loadSafetensorsFile(path);
  try {
    if (meta.format !== AUTOENCODER_KIND) {
      throw wrongKind(
        path,
        meta.format,
        "voxgen autoencoder",
        "write one with `deno task train-autoencoder`, or load a MONAI state dict with AutoencoderKL.loadStateDict.",
      );
    }
    const info: AutoencoderInfo = {
      autoencoder: JSON.parse(meta.autoencoder),
      volume: JSON.parse(meta.volume),
      validation: JSON.parse(meta.validation ?? "null") ?? undefined,
      description: meta.description,
    };
    const autoencoder = new AutoencoderKL(info.autoencoder);
    autoencoder.loadStateDict(tensors);
    autoencoder.eval().freeze();
    return { autoencoder, info };
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}

/** What a latent model file describes besides its weights. */
export interface LatentModelInfo {
  /** Diffusion U-Net options (its in/out channels are the latent channels). */
  unet: DiffusionModelUNetOptions;
  /** Noise schedule and prediction type. */
  scheduler: SchedulerOptions;
  /** Geometry of the generated images. */
  volume: VolumeInfo;
  /** Autoencoder options. */
  autoencoder: AutoencoderKLOptions;
  /** s = 1 / std of the first training batch's latents: the U-Net sees s·z, the decoder gets z / s. */
  scaleFactor: number;
  /** Latent tensor shape without the batch: [latentChannels, D, H, W]. */
  latentShape: number[];
  /** Free-form description. */
  description?: string;
}

/** Saves a latent diffusion model (U-Net and autoencoder weights, both under prefixes) atomically. */
export async function saveLatentModelFile(
  path: string,
  unetWeights: Map<string, Tensor>,
  autoencoderWeights: Map<string, Tensor>,
  info: LatentModelInfo,
): Promise<void> {
  if (!(info.scaleFactor > 0) || !Number.isFinite(info.scaleFactor)) {
    throw new Error(`saveLatentModelFile: scaleFactor must be a positive number, got ${info.scaleFactor}.`);
  }
  const weights = new Map<string, Tensor>();
  for (const [k, t] of unetWeights) weights.set(`unet.${k}`, t);
  for (const [k, t] of autoencoderWeights) weights.set(`autoencoder.${k}`, t);
  await saveSafetensors(path, weights, {
    format: LATENT_KIND,
    unet: JSON.stringify(info.unet),
    scheduler: JSON.stringify(info.scheduler),
    volume: JSON.stringify(info.volume),
    autoencoder: JSON.stringify(info.autoencoder),
    scaleFactor: String(info.scaleFactor),
    latentShape: JSON.stringify(info.latentShape),
    description: info.description ?? "",
  });
}

/** A loaded latent model: both networks (eval mode, frozen) and the info. */
export interface LoadedLatentModel {
  /** The diffusion U-Net over latents. */
  unet: DiffusionModelUNet;
  /** The autoencoder whose decoder maps latents to images. */
  autoencoder: AutoencoderKL;
  /** Its info. */
  info: LatentModelInfo;
}

/** Splits `prefix.`-keyed tensors out of a state dict. */
function withPrefix(all: Map<string, Tensor>, prefix: string): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const [k, t] of all) if (k.startsWith(`${prefix}.`)) out.set(k.slice(prefix.length + 1), t);
  return out;
}

/** The metadata of a latent model file as its info (throws when the file is another kind). */
export function latentInfoFromMetadata(path: string, meta: Record<string, string>): LatentModelInfo {
  if (meta.format !== LATENT_KIND) {
    throw wrongKind(
      path,
      meta.format,
      "voxgen latent diffusion model",
      "write one with `deno task train --autoencoder`.",
    );
  }
  return {
    unet: JSON.parse(meta.unet),
    scheduler: JSON.parse(meta.scheduler),
    volume: JSON.parse(meta.volume),
    autoencoder: JSON.parse(meta.autoencoder),
    scaleFactor: Number(meta.scaleFactor),
    latentShape: JSON.parse(meta.latentShape),
    description: meta.description,
  };
}

/** Builds both networks of a latent model from its info and a loaded state dict (keys `unet.*`, `autoencoder.*`). */
export function latentModelFromWeights(
  info: LatentModelInfo,
  weights: Map<string, Tensor>,
): LoadedLatentModel {
  const unet = new DiffusionModelUNet(info.unet);
  const autoencoder = new AutoencoderKL(info.autoencoder);
  try {
    unet.loadStateDict(withPrefix(weights, "unet"));
    autoencoder.loadStateDict(withPrefix(weights, "autoencoder"));
  } catch (error) {
    unet.dispose();
    autoencoder.dispose();
    throw error;
  }
  unet.eval().freeze();
  autoencoder.eval().freeze();
  return { unet, autoencoder, info };
}

/** Loads a latent model file written by {@linkcode saveLatentModelFile}. */
export async function loadLatentModelFile(path: string): Promise<LoadedLatentModel> {
  const { tensors, metadata } = await loadSafetensorsFile(path);
  try {
    return latentModelFromWeights(latentInfoFromMetadata(path, metadata), tensors);
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}

/** The images of diffusion latents: decode(z / s), without gradients. */
export function decodeLatents(autoencoder: AutoencoderKL, z: Tensor, scaleFactor: number): Tensor {
  return noGrad(() => scope(() => autoencoder.decodeStage2Outputs(mul(z, 1 / scaleFactor))));
}
