/**
 * Generators from model files: a voxgen U-Net model file (with its token table), adapters merged into it
 * and textual-inversion embeddings added to its tokens, ready for `generate`.
 *
 * @module
 */

import { type AdapterSpec, mergeAdapterFiles } from "../adapters/io.ts";
import type { AdapterSet } from "../adapters/inject.ts";
import { scope } from "../engine/memory.ts";
import { concat } from "../engine/ops/view.ts";
import type { Tensor } from "../engine/tensor.ts";
import { attachEmbedding, baseModelHash, loadEmbeddingFile } from "./embedding.ts";
import type { Generator } from "./generate.ts";
import { type LoadedModel, loadModelFile } from "./modelfile.ts";

/**
 * The {@linkcode Generator} of a loaded U-Net model; disposing it disposes the U-Net, the token table and
 * the `owned` tensors (added embeddings).
 */
export function unetGenerator({ unet, info, tokens }: LoadedModel, owned: Tensor[] = []): Generator {
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
    sampleShape: [unet.config.inChannels - channels, nz, ny, nx],
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
      unet.dispose();
      tokens?.dispose();
      for (const t of owned) t.dispose();
    },
  };
}

/** Options of {@linkcode loadGenerator}. */
export interface LoadGeneratorOptions {
  /** Adapters merged into the weights, in order. */
  adapters?: readonly AdapterSpec[];
  /** Textual-inversion embedding files whose concepts prompts may then use (checked against the base). */
  embeddings?: readonly string[];
  /** Hears about each adapter merged (e.g. to log it). */
  onAdapter?: (spec: AdapterSpec, set: AdapterSet) => void;
}

/** Loads a model file, merges its adapters, and returns it ready for `generate`. */
export async function loadGenerator(path: string, opts: LoadGeneratorOptions = {}): Promise<Generator> {
  const model = await loadModelFile(path);
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
    model.unet.dispose();
    model.tokens?.dispose();
    for (const t of vectors) t.dispose();
    throw error;
  }
  return unetGenerator(model, vectors);
}
