/**
 * voxgen model files on disk (Deno): one safetensors file holding a diffusion U-Net's weights, with
 * everything needed to sample from it in the metadata — the U-Net options, the noise schedule, and the
 * volume geometry (shape, voxel spacing, affine, intensity range) so samples are written as proper NIfTI
 * volumes. The in-memory part (building a model from bytes, its generator) is pipelines/model.ts,
 * re-exported here.
 *
 * @module
 */

import type { Tensor } from "../engine/tensor.ts";
import { pathOrUrl, readBytes } from "../io/read.ts";
import { saveSafetensors } from "../io/safetensors.ts";
import {
  type LoadedModel,
  type LoadModelOptions,
  modelFileMetadata,
  modelFromBytes,
  type ModelInfo,
} from "./model.ts";

export * from "./model.ts";

/** Where the embedded default model is: next to this module, locally or on a web server. */
export const DEFAULT_MODEL_URL: URL = new URL("../models/default/brain32.safetensors", import.meta.url);

/**
 * The embedded default model (the demo model `deno task sample` and the server use), as a path when it is
 * local, else as its URL.
 */
export const DEFAULT_MODEL: string = pathOrUrl(DEFAULT_MODEL_URL);

/** Saves a U-Net (or given weights) with its info as a model file, atomically. */
export async function saveModelFile(
  path: string,
  weights: Map<string, Tensor>,
  info: ModelInfo,
): Promise<void> {
  await saveSafetensors(path, weights, modelFileMetadata(info));
}

/**
 * Loads a model file written by {@linkcode saveModelFile} (or, with `allowLatent`, a latent model file), from
 * a path, a URL (`file:`, `http(s):`) or bytes.
 */
export async function loadModelFile(
  path: string | URL | Uint8Array,
  opts: LoadModelOptions = {},
): Promise<LoadedModel> {
  if (path instanceof Uint8Array) return modelFromBytes(path, "<bytes>", opts);
  return modelFromBytes(await readBytes(path), String(path), opts);
}
