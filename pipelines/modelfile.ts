/**
 * voxgen model files: one safetensors file holding a diffusion U-Net's weights, with everything needed to
 * sample from it in the metadata — the U-Net options, the noise schedule, and the volume geometry
 * (shape, voxel spacing, affine, intensity range) so samples are written as proper NIfTI volumes.
 *
 * @module
 */

import type { Tensor } from "../engine/tensor.ts";
import { pathOrUrl } from "../io/read.ts";
import { loadSafetensorsFile, saveSafetensors } from "../io/safetensors.ts";
import { DiffusionModelUNet, type DiffusionModelUNetOptions } from "../models/unet.ts";
import type { SchedulerOptions } from "../samplers/scheduler.ts";
import { TokenTable, type TokenVocabulary } from "../models/tokens.ts";
import type { VolumeInfo } from "./generate.ts";
import type { AutoencoderKL } from "../models/autoencoder.ts";
import { LATENT_KIND, latentInfoFromMetadata, latentModelFromWeights } from "./latent_modelfile.ts";

export type { VolumeInfo } from "./generate.ts";

/** Where the embedded default model is: next to this module, locally or on a web server. */
export const DEFAULT_MODEL_URL: URL = new URL("../models/default/brain32.safetensors", import.meta.url);

/**
 * The embedded default model (the demo model `deno task sample` and the server use), as a path when it is
 * local, else as its URL.
 */
export const DEFAULT_MODEL: string = pathOrUrl(DEFAULT_MODEL_URL);

/** What a model file describes besides its weights. */
export interface ModelInfo {
  /** U-Net constructor options. */
  unet: DiffusionModelUNetOptions;
  /** Noise schedule and prediction type the model was trained with. */
  scheduler: SchedulerOptions;
  /** Output geometry. */
  volume: VolumeInfo;
  /** Free-form description (training data, steps, …). */
  description?: string;
  /** The token table of a cross-attention model conditioned on learned tokens (weights `token_embedding.*`). */
  tokens?: TokenVocabulary;
  /** How conditions were trained: the null class of a class-conditional model trained with dropout. */
  conditioning?: ConditioningInfo;
}

/** How a conditional model was trained. */
export interface ConditioningInfo {
  /** The class label standing for "no class" (learned through condition dropout), if any. */
  nullClass?: number;
  /** Probability with which training dropped each sample's condition. */
  uncondProb?: number;
}

/** State-dict prefix of the token table's weights in a model file. */
export const TOKEN_PREFIX = "token_embedding.";

const KIND = "voxgen-diffusion-unet";

/** Saves a U-Net (or given weights) with its info as a model file, atomically. */
export async function saveModelFile(
  path: string,
  weights: Map<string, Tensor>,
  info: ModelInfo,
): Promise<void> {
  await saveSafetensors(path, weights, {
    format: KIND,
    unet: JSON.stringify(info.unet),
    scheduler: JSON.stringify(info.scheduler),
    volume: JSON.stringify(info.volume),
    description: info.description ?? "",
    ...(info.tokens ? { tokens: JSON.stringify(info.tokens) } : {}),
    ...(info.conditioning ? { conditioning: JSON.stringify(info.conditioning) } : {}),
  });
}

/** A loaded model file: the U-Net in eval mode with its weights, and its info. */
export interface LoadedModel {
  /** The network (eval mode, weights loaded, frozen). */
  unet: DiffusionModelUNet;
  /** Its info. */
  info: ModelInfo;
  /** The token table (eval mode, frozen), when the model has one. */
  tokens?: TokenTable;
  /**
   * Present for latent diffusion model files: the U-Net works on latents of `latentShape`, images are
   * decode(z / s) ({@linkcode unetGenerator} does both). Dispose with {@linkcode disposeModel}.
   */
  latent?: LatentStage;
}

/** The autoencoder stage of a latent diffusion model. */
export interface LatentStage {
  /** The frozen autoencoder (eval mode). */
  autoencoder: AutoencoderKL;
  /** s: the U-Net's latents are s·z. */
  scaleFactor: number;
  /** Latent shape without the batch: [latentChannels, D, H, W]. */
  latentShape: number[];
}

/** Options of {@linkcode loadModelFile}. */
export interface LoadModelOptions {
  /**
   * Accept latent diffusion model files (default false). `loadGenerator` does (its generator decodes);
   * callers that feed images to the U-Net leave it off and get a clear error instead of a model that would
   * see the wrong inputs.
   */
  allowLatent?: boolean;
}

/** Frees a loaded model's networks (U-Net, token table, and the autoencoder of a latent model). */
export function disposeModel(model: LoadedModel): void {
  model.unet.dispose();
  model.tokens?.dispose();
  model.latent?.autoencoder.dispose();
}

/** The weights a model file stores: the U-Net's, plus the token table's under `token_embedding.`. */
export function modelWeights(unet: DiffusionModelUNet, tokens?: TokenTable): Map<string, Tensor> {
  const weights = new Map(unet.stateDict());
  for (const [name, t] of tokens?.stateDict() ?? []) weights.set(TOKEN_PREFIX + name, t);
  return weights;
}

/**
 * Loads a model file written by {@linkcode saveModelFile} (or, with `allowLatent`, a latent model file), from
 * a path, a URL (`file:`, `http(s):`) or bytes.
 */
export async function loadModelFile(
  path: string | URL | Uint8Array,
  opts: LoadModelOptions = {},
): Promise<LoadedModel> {
  const { tensors: weights, metadata: meta } = await loadSafetensorsFile(path);
  try {
    if (meta.format === "voxgen-slice-unet") {
      throw new Error(
        `${String(path instanceof Uint8Array ? "<bytes>" : path)} is a slice model (cDPM); load it with ` +
          "loadSliceModelFile (pipelines/slice_model.ts) or loadGenerator.",
      );
    }
    if (meta.format === LATENT_KIND) {
      const name = path instanceof Uint8Array ? "<bytes>" : String(path);
      if (!opts.allowLatent) {
        throw new Error(
          `${name} is a latent diffusion model (its U-Net works on autoencoder latents); this command does ` +
            "not support latent models yet (deno task sample and the server do).",
        );
      }
      const { unet, autoencoder, info } = latentModelFromWeights(latentInfoFromMetadata(name, meta), weights);
      const { scaleFactor, latentShape, ...rest } = info;
      return { unet, info: rest, latent: { autoencoder, scaleFactor, latentShape } };
    }
    if (meta.format !== KIND) {
      throw new Error(
        `${path instanceof Uint8Array ? "<bytes>" : path} is not a voxgen model file (metadata format ${
          JSON.stringify(meta.format)
        }); ` +
          "a MONAI state dict loads with DiffusionModelUNet.loadStateDict instead.",
      );
    }
    const info: ModelInfo = {
      unet: JSON.parse(meta.unet),
      scheduler: JSON.parse(meta.scheduler),
      volume: JSON.parse(meta.volume),
      description: meta.description,
      ...(meta.tokens ? { tokens: JSON.parse(meta.tokens) } : {}),
      ...(meta.conditioning ? { conditioning: JSON.parse(meta.conditioning) } : {}),
    };
    const own = new Map([...weights].filter(([name]) => !name.startsWith(TOKEN_PREFIX)));
    const unet = new DiffusionModelUNet(info.unet);
    let tokens: TokenTable | undefined;
    try {
      unet.loadStateDict(own);
      unet.eval().freeze();
      if (info.tokens) {
        tokens = new TokenTable(info.tokens);
        const rows = new Map(
          [...weights].filter(([n]) => n.startsWith(TOKEN_PREFIX)).map((
            [n, t],
          ) => [n.slice(TOKEN_PREFIX.length), t]),
        );
        tokens.loadStateDict(rows);
        tokens.eval().freeze();
      }
    } catch (error) {
      unet.dispose();
      tokens?.dispose();
      throw error;
    }
    return { unet, info, tokens };
  } finally {
    for (const t of weights.values()) t.dispose();
  }
}
