/**
 * Textual inversion (Gal et al.; seed 002 = de Wilde et al.): learn the vectors of a new concept from a few
 * volumes while everything else stays frozen. The new rows are a separate tensor spliced into the context
 * as `[<bos>, new rows…, <pad>…]` (AUTOMATIC1111's way: the U-Net and the token table are never written,
 * so their weights stay bit-identical), and the loss is the base model's own diffusion loss. AdamW with
 * weight decay 0 and a constant rate by default, as A1111 and the paper.
 *
 * @module
 */

import { tensor } from "../engine/ops/create.ts";
import type { Tensor } from "../engine/tensor.ts";
import { loadSafetensors } from "../io/safetensors.ts";
import { checkConceptName, type TokenTable } from "../models/tokens.ts";
import type { Scheduler } from "../samplers/scheduler.ts";
import { augmentedBatches, type AugmentOptions } from "./augment.ts";
import { conditionalBatches, ConditionalNetwork } from "./conditional.ts";
import type { LoadedModel } from "./modelfile.ts";
import { type RunSetting, train, type TrainResult } from "./train.ts";

/**
 * The initial vectors [n, dim] of a new concept: the rows of `init` (a concept of the table) cycled as
 * A1111 does (vector i = row ⌊i·m/n⌋ of its m rows), or, without `init`, the mean of every concept row
 * repeated (a neutral start inside the learned distribution).
 */
export async function initialVectors(tokens: TokenTable, n: number, init?: string): Promise<Float32Array> {
  const dim = tokens.dim;
  const table = await tokens.weight.toArray();
  const concepts = tokens.vocabulary.concepts;
  const out = new Float32Array(n * dim);
  if (init !== undefined) {
    tokens.checkTokens([init]);
    let first = 2;
    for (const c of concepts) {
      if (c.name === init) break;
      first += c.vectors;
    }
    const m = concepts.find((c) => c.name === init)?.vectors;
    if (m === undefined) throw new Error(`--init ${init}: only the model's own concepts can initialise.`);
    for (let i = 0; i < n; i++) {
      const row = first + Math.floor((i * m) / n);
      out.set(table.subarray(row * dim, (row + 1) * dim), i * dim);
    }
    return out;
  }
  const rows = tokens.numEmbeddings - 2;
  if (rows === 0) throw new Error("the model has no concepts to start from; give --init.");
  const mean = new Float32Array(dim);
  for (let r = 2; r < tokens.numEmbeddings; r++) {
    for (let d = 0; d < dim; d++) mean[d] += table[r * dim + d] / rows;
  }
  for (let i = 0; i < n; i++) out.set(mean, i * dim);
  return out;
}

/** Options of {@linkcode invertConcept}. */
export interface InvertOptions {
  /** The new concept's token, e.g. `<flair>`. */
  name: string;
  /** Its number of vectors (≤ context length − 1). */
  vectors: number;
  /** A concept of the model to start from (default: the mean of all concept rows). */
  init?: string;
  /** Optimizer steps. */
  steps: number;
  /** Learning rate (default 5e-3, A1111's and the paper's). */
  lr?: number;
  /** Final learning rate (default lr: constant). */
  minLr?: number;
  /** Volumes per step (default 1, as the paper). */
  batch?: number;
  /** Seed of the noise, timesteps and augmentation (default 0). */
  seed?: number;
  /** Augmentation, or null for the volumes as they are. */
  augment: AugmentOptions | null;
  /** Run folder (checkpoint, loss.csv, loss.png); a rerun continues from its checkpoint. */
  outDir: string;
  /** Checkpoint every N steps (default 250). */
  checkpointEvery?: number;
  /** Settings that define the run besides these (e.g. the data files), compared on resume. */
  settings?: Record<string, RunSetting>;
  /** Progress on stderr (default true). */
  progress?: boolean;
}

/** A finished inversion: the learned vectors [n, dim] (the caller disposes them) and the run's summary. */
export interface InvertResult {
  /** The learned vectors. */
  vectors: Tensor;
  /** The training run. */
  result: TrainResult;
}

/** The parameter name of the new vectors in checkpoints. */
function parameterName(name: string): string {
  return `ti.${name}`;
}

/** The frozen model plus the new vectors, as one network whose only trainable parameter is the vectors. */
class InversionNetwork extends ConditionalNetwork {
  constructor(model: LoadedModel, readonly vectors: Tensor, readonly name: string) {
    super(model.unet, model.tokens);
  }

  override namedParameters(): Array<[string, Tensor]> {
    return [[parameterName(this.name), this.vectors], ...super.namedParameters()];
  }
}

/**
 * Learns `opts.name` on `volumes` (preprocessed [1, C, …] tensors on the model's grid) with the frozen
 * `model` (which must have a token table). The model's weights are not modified.
 */
export async function invertConcept(
  model: LoadedModel,
  scheduler: Scheduler,
  volumes: readonly Tensor[],
  opts: InvertOptions,
): Promise<InvertResult> {
  const tokens = model.tokens;
  if (!tokens) throw new Error("the base model has no token table: textual inversion needs one.");
  checkConceptName(opts.name);
  if (tokens.concepts().some((c) => c.name === opts.name)) {
    throw new Error(`the base model already has a concept ${opts.name}; choose another --name.`);
  }
  if (!Number.isInteger(opts.vectors) || opts.vectors < 1 || opts.vectors > tokens.contextLength - 1) {
    throw new Error(
      `--vectors ${opts.vectors}: 1..${
        tokens.contextLength - 1
      } fit the model's contexts of ${tokens.contextLength}.`,
    );
  }
  model.unet.eval().freeze();
  tokens.eval().freeze();
  const initial = await initialVectors(tokens, opts.vectors, opts.init);
  const vectors = tensor(initial, [opts.vectors, tokens.dim], { requiresGrad: true });
  tokens.addConcept(opts.name, vectors);
  try {
    const lr = opts.lr ?? 5e-3;
    const seed = opts.seed ?? 0;
    const base = augmentedBatches(volumes, { batch: opts.batch ?? 1, seed, augment: opts.augment });
    // Every item is an example of the new concept; nothing is dropped (the null context stays the base's).
    const data = conditionalBatches(base, volumes.map(() => ({ tokens: [opts.name] })), {
      tokens,
      uncondProb: 0,
      seed,
    });
    const network = new InversionNetwork(model, vectors, opts.name);
    const result = await train(network, scheduler, data, {
      steps: opts.steps,
      lr,
      minLr: opts.minLr ?? lr,
      warmupSteps: 0,
      weightDecay: 0,
      emaDecay: 0,
      seed,
      outDir: opts.outDir,
      checkpointEvery: opts.checkpointEvery,
      trainableOnly: true,
      progress: opts.progress,
      settings: {
        name: opts.name,
        vectors: opts.vectors,
        init: opts.init ?? "mean of the concepts",
        batch: opts.batch ?? 1,
        minLr: opts.minLr === undefined ? "lr" : opts.minLr,
        ...opts.settings,
      },
    });
    // The run's last weights (a resumed run that had nothing left to do gets them from its checkpoint).
    const saved = await loadSafetensors(result.weightsPath);
    const learned = saved.get(parameterName(opts.name));
    for (const [n, t] of saved) if (n !== parameterName(opts.name)) t.dispose();
    if (!learned) throw new Error(`${result.weightsPath} lacks the learned vectors ${opts.name}.`);
    return { vectors: learned, result };
  } finally {
    tokens.removeConcept(opts.name);
    vectors.dispose();
  }
}
