/**
 * voxgen models in memory: what a model file holds besides its weights ({@linkcode ModelInfo}), building
 * the networks from a model file's bytes (a U-Net with its token table, or a latent model's U-Net and
 * autoencoder), the metadata written with them, and the {@linkcode Generator} that `generate` runs. Works
 * wherever WebGPU does: reading and writing files is pipelines/modelfile.ts.
 *
 * @module
 */

import { scope } from "../engine/memory.ts";
import { concat } from "../engine/ops/view.ts";
import type { Tensor } from "../engine/tensor.ts";
import { tensorsFromSafetensors } from "../io/safetensors_codec.ts";
import type { AutoencoderKL } from "../models/autoencoder.ts";
import { TokenTable, type TokenVocabulary } from "../models/tokens.ts";
import { DiffusionModelUNet, type DiffusionModelUNetOptions } from "../models/unet.ts";
import type { SchedulerOptions } from "../samplers/scheduler.ts";
import type { Generator, VolumeInfo } from "./generate.ts";
import {
  decodeLatents,
  LATENT_KIND,
  latentInfoFromMetadata,
  latentModelFromWeights,
} from "./latent_modelfile.ts";

export type { VolumeInfo } from "./generate.ts";

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
  /** Input channels that take condition volumes (after the image's); zeros are the null condition. */
  conditionChannels?: number;
}

/** State-dict prefix of the token table's weights in a model file. */
export const TOKEN_PREFIX = "token_embedding.";

/** The `format` metadata of voxgen model files. */
export const MODEL_FORMAT = "voxgen-diffusion-unet";

/** The safetensors metadata of a model file with `info`. */
export function modelFileMetadata(info: ModelInfo): Record<string, string> {
  return {
    format: MODEL_FORMAT,
    unet: JSON.stringify(info.unet),
    scheduler: JSON.stringify(info.scheduler),
    volume: JSON.stringify(info.volume),
    description: info.description ?? "",
    ...(info.tokens ? { tokens: JSON.stringify(info.tokens) } : {}),
    ...(info.conditioning ? { conditioning: JSON.stringify(info.conditioning) } : {}),
  };
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
 * Builds the model of a model file's bytes (written by `saveModelFile`, or with `allowLatent` a latent model
 * file): the networks in eval mode with frozen weights. `source` names the data in errors.
 */
export function modelFromBytes(
  bytes: Uint8Array,
  source = "<bytes>",
  opts: LoadModelOptions = {},
): LoadedModel {
  const { tensors: weights, metadata: meta } = tensorsFromSafetensors(bytes, source);
  try {
    if (meta.format === "voxgen-slice-unet") {
      throw new Error(
        `${source} is a slice model (cDPM); load it with loadSliceModelFile (pipelines/slice_model.ts) or ` +
          "loadGenerator.",
      );
    }
    if (meta.format === LATENT_KIND) {
      const name = source;
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
    if (meta.format !== MODEL_FORMAT) {
      throw new Error(
        `${source} is not a voxgen model file (metadata format ${JSON.stringify(meta.format)}); ` +
          "a MONAI checkpoint converts with `deno task cli import --monai`, a MONAI state dict loads with " +
          "DiffusionModelUNet.loadStateDict.",
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

/**
 * The {@linkcode Generator} of a loaded U-Net model (a latent model samples latents and decodes
 * decode(z / s) at the end); disposing it disposes the model's networks and the `owned` tensors (added
 * embeddings).
 */
export function unetGenerator(model: LoadedModel, owned: Tensor[] = []): Generator {
  const { unet, info, tokens, latent } = model;
  const [nx, ny, nz] = info.volume.shape;
  const classes = unet.config.numClassEmbeds;
  const nullClass = info.conditioning?.nullClass;
  const channels = info.conditioning?.conditionChannels ?? 0;
  return {
    denoiser: (x, t, c) => {
      const forward = { context: c.context, classLabels: c.classLabels };
      if (channels === 0) return unet.forward(x, t, forward);
      if (!c.channels) throw new Error(`the model takes ${channels} condition channel(s); none were given.`);
      return scope(() => unet.forward(concat([x, c.channels!], 1), t, forward));
    },
    // A latent model samples latents and decodes decode(z / s) at the end.
    sampleShape: latent ? latent.latentShape : [unet.config.inChannels - channels, nz, ny, nx],
    decode: latent ? (z) => decodeLatents(latent.autoencoder, z, latent.scaleFactor) : undefined,
    scheduler: info.scheduler,
    parameterCount: unet.numParameters() + (tokens?.numParameters() ?? 0),
    volume: info.volume,
    conditions: classes !== null || tokens || channels > 0
      ? {
        classes: classes !== null ? { count: classes, nullClass } : undefined,
        tokens,
        ...(channels > 0 ? { channels } : {}),
      }
      : undefined,
    dispose: () => {
      disposeModel(model);
      for (const t of owned) t.dispose();
    },
  };
}
