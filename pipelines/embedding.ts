/**
 * Textual-inversion embedding files (`NAME.ti.safetensors`): diffusers' layout — one tensor, keyed by the
 * concept's token, of shape [n vectors, width] — plus metadata saying which base model they were learned
 * on. Loading onto another base model is refused; diffusers' own `learned_embeds.safetensors` (no voxgen
 * metadata) is imported when its width matches the model's.
 *
 * @module
 */

import { parameterHash } from "../adapters/hash.ts";
import { tensor } from "../engine/ops/create.ts";
import type { Tensor } from "../engine/tensor.ts";
import { loadSafetensorsFile, saveSafetensors } from "../io/safetensors.ts";
import { checkConceptName, type TokenTable } from "../models/tokens.ts";
import type { DiffusionModelUNet } from "../models/unet.ts";
import { modelWeights } from "./modelfile.ts";

/** The `format` metadata value of voxgen embedding files. */
export const EMBEDDING_FORMAT = "voxgen-ti";
/** Version of the layout. */
export const EMBEDDING_FORMAT_VERSION = "1";

/** What a voxgen embedding file records besides its vectors. */
export interface EmbeddingInfo {
  /** The concept's token, e.g. `<flair>` (also the tensor's key). */
  name: string;
  /** Vectors (rows) of the concept. */
  numVectors: number;
  /** Width of a vector (the model's crossAttentionDim). */
  dim: number;
  /** Context length of the base model's token table. */
  contextLength: number;
  /** {@linkcode baseModelHash} of the model it was learned on. */
  baseModelHash: string;
  /** How the vectors were initialised (e.g. `<t1>`). */
  init?: string;
  /** Training steps. */
  steps?: number;
  /** Learning rate. */
  lr?: number;
}

/** A loaded embedding: the vectors [n, dim] (the caller disposes them) and the file's info. */
export interface LoadedEmbedding {
  /** The concept's token. */
  name: string;
  /** Its vectors [n, dim]. */
  vectors: Tensor;
  /** The voxgen metadata, or null for an imported diffusers file (no base model recorded). */
  info: EmbeddingInfo | null;
}

/**
 * The fingerprint of a conditional model that embeddings are tied to: SHA-256 over the U-Net's and the
 * token table's weights (adapters/hash.ts's `parameterHash`, under the model file's names).
 */
export async function baseModelHash(unet: DiffusionModelUNet, tokens: TokenTable): Promise<string> {
  return await parameterHash([...modelWeights(unet, tokens)]);
}

/** Saves `vectors` [n, dim] as an embedding file, atomically. */
export async function saveEmbeddingFile(
  path: string,
  vectors: Tensor,
  info: EmbeddingInfo,
): Promise<void> {
  checkConceptName(info.name);
  if (vectors.rank !== 2 || vectors.shape[0] !== info.numVectors || vectors.shape[1] !== info.dim) {
    throw new Error(
      `saveEmbeddingFile: vectors [${vectors.shape}] must be [${info.numVectors}, ${info.dim}].`,
    );
  }
  const meta: Record<string, string> = {
    format: EMBEDDING_FORMAT,
    version: EMBEDDING_FORMAT_VERSION,
    name: info.name,
    numVectors: String(info.numVectors),
    dim: String(info.dim),
    contextLength: String(info.contextLength),
    baseModelHash: info.baseModelHash,
  };
  if (info.init !== undefined) meta.init = info.init;
  if (info.steps !== undefined) meta.steps = String(info.steps);
  if (info.lr !== undefined) meta.lr = String(info.lr);
  await saveSafetensors(path, new Map([[info.name, vectors]]), meta);
}

/** Loads a voxgen embedding file, or imports a diffusers `learned_embeds.safetensors`. */
export async function loadEmbeddingFile(path: string): Promise<LoadedEmbedding> {
  const { tensors, metadata } = await loadSafetensorsFile(path);
  const fail = (why: string): never => {
    for (const t of tensors.values()) t.dispose();
    throw new Error(`${path}: ${why}`);
  };
  if (tensors.size !== 1) {
    fail(
      `an embedding file holds one tensor (token → [n, width]); this one has ${tensors.size}` +
        ` (${[...tensors.keys()].slice(0, 5).join(", ")}). Is it an adapter or a model?`,
    );
  }
  const [[key, raw]] = [...tensors];
  // diffusers saves a single vector as [width] in older versions.
  const vectors = raw.rank === 1 ? tensor(await raw.toArray(), [1, raw.shape[0]]) : raw;
  if (vectors !== raw) {
    raw.dispose();
    tensors.set(key, vectors);
  }
  if (vectors.rank !== 2) fail(`the tensor "${key}" is [${vectors.shape}], not [n vectors, width].`);
  if (metadata.format !== EMBEDDING_FORMAT) {
    // A diffusers file: its key is the placeholder token, with or without angle brackets.
    const name = /^<.*>$/.test(key) ? key : `<${key}>`;
    try {
      checkConceptName(name);
    } catch (error) {
      fail((error as Error).message);
    }
    return { name, vectors, info: null };
  }
  const number = (k: string) => {
    const v = Number(metadata[k]);
    if (!Number.isInteger(v) || v < 1) fail(`metadata "${k}" (${metadata[k]}) is not a positive integer.`);
    return v;
  };
  const info: EmbeddingInfo = {
    name: metadata.name,
    numVectors: number("numVectors"),
    dim: number("dim"),
    contextLength: number("contextLength"),
    baseModelHash: metadata.baseModelHash ?? "",
    ...(metadata.init !== undefined ? { init: metadata.init } : {}),
    ...(metadata.steps !== undefined ? { steps: Number(metadata.steps) } : {}),
    ...(metadata.lr !== undefined ? { lr: Number(metadata.lr) } : {}),
  };
  if (info.name !== key) fail(`metadata name "${info.name}" differs from the tensor's key "${key}".`);
  if (vectors.shape[0] !== info.numVectors || vectors.shape[1] !== info.dim) {
    fail(`the tensor is [${vectors.shape}] but the metadata says [${info.numVectors}, ${info.dim}].`);
  }
  if (!/^[0-9a-f]{64}$/.test(info.baseModelHash)) fail("metadata baseModelHash is missing or malformed.");
  return { name: key, vectors, info };
}

/**
 * Adds a loaded embedding to a model's token table after checking that it fits: same width, vectors
 * that fit a context, and — for voxgen files — the base model it was learned on (`baseHash` =
 * {@linkcode baseModelHash} of this model). `source` names the file in errors.
 */
export function attachEmbedding(
  tokens: TokenTable,
  baseHash: string,
  embedding: LoadedEmbedding,
  source: string,
): void {
  const { name, vectors, info } = embedding;
  if (vectors.shape[1] !== tokens.dim) {
    throw new Error(
      `${source}: the embedding "${name}" has width ${vectors.shape[1]}; this model's tokens have width ` +
        `${tokens.dim} (its crossAttentionDim), so it was made for another model.`,
    );
  }
  if (info && info.baseModelHash !== baseHash) {
    throw new Error(
      `${source}: the embedding "${name}" was learned on another base model (base hash ` +
        `${info.baseModelHash.slice(0, 16)}… in the file, ${baseHash.slice(0, 16)}… for this model); ` +
        "load it with the model it was trained on.",
    );
  }
  tokens.addConcept(name, vectors);
}
