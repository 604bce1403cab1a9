/**
 * Generators from model files: a voxgen U-Net model file (with its token table), adapters merged into it
 * and textual-inversion embeddings added to its tokens, or a slice model (cDPM, generated stage by stage),
 * ready for `generate`.
 *
 * @module
 */

import { type AdapterSpec, mergeAdapterFiles } from "../adapters/io.ts";
import type { AdapterSet } from "../adapters/inject.ts";
import type { Tensor } from "../engine/tensor.ts";
import { attachEmbedding, baseModelHash, loadEmbeddingFile } from "./embedding.ts";
import type { Generator } from "./generate.ts";
import { disposeModel, type LoadedModel, loadModelFile, unetGenerator } from "./modelfile.ts";
import { isSliceModelFile, loadSliceModelFile, sliceGenerator } from "./slice_model.ts";

// Defined with the model (pipelines/model.ts, which runs in browsers too); re-exported where it always was.
export { unetGenerator };

/** Options of {@linkcode loadGenerator}. */
export interface LoadGeneratorOptions {
  /** Adapters merged into the weights, in order. */
  adapters?: readonly AdapterSpec[];
  /** Textual-inversion embedding files whose concepts prompts may then use (checked against the base). */
  embeddings?: readonly string[];
  /** Hears about each adapter merged (e.g. to log it). */
  onAdapter?: (spec: AdapterSpec, set: AdapterSet) => void;
  /** Slices per volume of a slice model (default: its training depth); other models refuse it. */
  depth?: number;
}

/** Loads a model file, merges its adapters, and returns it ready for `generate`. */
export async function loadGenerator(path: string, opts: LoadGeneratorOptions = {}): Promise<Generator> {
  if (await isSliceModelFile(path)) {
    if (opts.adapters?.length || opts.embeddings?.length) {
      throw new Error(`${path} is a slice model (cDPM): adapters and embeddings do not apply to it.`);
    }
    return sliceGenerator(await loadSliceModelFile(path), opts.depth);
  }
  if (opts.depth !== undefined) {
    throw new Error(
      `a depth was given, but ${path} is not a slice model (it generates whole volumes of one size).`,
    );
  }
  const { model, vectors } = await loadModelParts(path, opts);
  return unetGenerator(model, vectors);
}

/**
 * Loads a U-Net model file (not a slice model) with its adapters merged and embeddings attached, for callers
 * that wrap the U-Net themselves (e.g. `controlledGenerator`). Free it with `disposeModel`; the embedding
 * vectors are freed with it only through {@linkcode loadGenerator}, so embeddings are refused here.
 */
export async function loadModelWithAdapters(
  path: string,
  opts: LoadGeneratorOptions = {},
): Promise<LoadedModel> {
  if (opts.embeddings?.length) {
    throw new Error(
      "embeddings are only supported through loadGenerator (their vectors belong to the generator).",
    );
  }
  if (await isSliceModelFile(path)) {
    throw new Error(`${path} is a slice model (cDPM); only whole-volume U-Net models can be loaded here.`);
  }
  return (await loadModelParts(path, opts)).model;
}

/**
 * Loads a U-Net model file (not a slice model) with its adapters merged and its embeddings attached, for
 * callers that wrap the U-Net themselves and free the embedding vectors with their generator (e.g.
 * `controlledGenerator`, which takes them as its `owned` tensors).
 */
export async function loadModelWithEmbeddings(
  path: string,
  opts: LoadGeneratorOptions = {},
): Promise<{ model: LoadedModel; vectors: Tensor[] }> {
  if (await isSliceModelFile(path)) {
    throw new Error(`${path} is a slice model (cDPM); only whole-volume U-Net models can be loaded here.`);
  }
  return await loadModelParts(path, opts);
}

/** The model with adapters merged and embeddings attached, and the embedding vectors it now uses. */
async function loadModelParts(
  path: string,
  opts: LoadGeneratorOptions,
): Promise<{ model: LoadedModel; vectors: Tensor[] }> {
  const model = await loadModelFile(path, { allowLatent: true });
  const vectors: Tensor[] = [];
  try {
    const embeddings = opts.embeddings ?? [];
    if (embeddings.length > 0) {
      if (!model.tokens) {
        throw new Error(`${path} has no token table, so it cannot use textual-inversion embeddings.`);
      }
      // Hashed before adapters change the weights: embeddings are tied to the base model.
      const hash = await baseModelHash(model.unet, model.tokens);
      for (const file of embeddings) {
        const embedding = await loadEmbeddingFile(file);
        vectors.push(embedding.vectors);
        attachEmbedding(model.tokens, hash, embedding, file);
      }
    }
    await mergeAdapterFiles(model.unet, opts.adapters ?? [], opts.onAdapter);
  } catch (error) {
    disposeModel(model);
    for (const t of vectors) t.dispose();
    throw error;
  }
  return { model, vectors };
}
