/**
 * Conditional training: batches that carry each sample's context (its prompt through the token table)
 * and class label, with condition dropout — each sample's condition is replaced by the null one (the empty
 * prompt, the null class) with probability `uncondProb`, so that the model also learns the unconditional
 * prediction classifier-free guidance compares against (Ho & Salimans; SD drops 10 % of captions).
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { scope } from "../engine/memory.ts";
import { full, tensor } from "../engine/ops/create.ts";
import { mul } from "../engine/ops/elementwise.ts";
import { concat } from "../engine/ops/view.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { Timesteps } from "../nn/embedding.ts";
import { seededRandom } from "../nn/init.ts";
import type { TokenTable } from "../models/tokens.ts";
import type { DiffusionModelUNet } from "../models/unet.ts";
import { TOKEN_PREFIX } from "./modelfile.ts";
import type { Batch, ControlInput, DiffusionNetwork } from "./train.ts";

/** The condition of one training volume. */
export interface SampleCondition {
  /** Its tokens ([] = the null prompt). */
  tokens: readonly string[];
  /** Its class label. */
  classLabel?: number;
}

/** Options of {@linkcode conditionalBatches}. */
export interface ConditionalBatchOptions {
  /** Encodes prompts (absent: no context). */
  tokens?: TokenTable;
  /** The null class label, when the model has classes (required with classes and `uncondProb` > 0). */
  nullClass?: number;
  /** Probability of dropping a sample's condition (default 0.1). */
  uncondProb?: number;
  /** Seed of the dropout draws (deterministic per step, micro-step and item). */
  seed: number;
}

/**
 * Wraps a batch source that reports which volume each item came from (`augmentedBatches`) so that each
 * batch carries the items' contexts [B, L, D] (differentiable in the token table) and class labels [B];
 * the source's `paired` condition volumes [B, Cc, …] become `control.conditions[0]`, zeroed for the
 * dropped items (zeros are the null condition; {@linkcode ConditionalNetwork} concatenates them).
 */
export function conditionalBatches(
  base: (step: number, micro: number) => { x0: Tensor; sources: number[]; paired?: Tensor },
  conditions: readonly SampleCondition[],
  opts: ConditionalBatchOptions,
): (step: number, micro: number) => Batch {
  const p = opts.uncondProb ?? 0.1;
  if (!(p >= 0 && p <= 1)) throw new Error(`uncondProb ${p} must be in 0..1.`);
  const hasClasses = conditions.some((c) => c.classLabel !== undefined);
  if (hasClasses && p > 0 && opts.nullClass === undefined) {
    throw new Error("condition dropout with classes needs a null class label.");
  }
  return (step, micro) => {
    const { x0, sources, paired } = base(step, micro);
    const random = seededRandom((opts.seed * 7919 + step * 104729 + micro * 1299709 + 17) >>> 0);
    const dropped = sources.map(() => random() < p);
    const batch: Batch = { x0 };
    if (opts.tokens) {
      const contexts = sources.map((s, b) => opts.tokens!.encode(dropped[b] ? [] : conditions[s].tokens));
      batch.context = contexts.length === 1 ? contexts[0] : concat(contexts, 0);
      if (contexts.length > 1) { for (const c of contexts) c.dispose(); }
    }
    if (hasClasses) {
      const labels = sources.map((s, b) => (dropped[b] ? opts.nullClass! : conditions[s].classLabel!));
      batch.classLabels = labels.every((l) => l === labels[0])
        ? full([labels.length], labels[0])
        : tensor(Float32Array.from(labels), [labels.length]);
    }
    if (paired) {
      const keep = tensor(Float32Array.from(dropped, (d) => (d ? 0 : 1)), [dropped.length, 1, 1, 1, 1]);
      batch.control = { conditions: [noGrad(() => mul(paired, keep))] };
      keep.dispose();
      paired.dispose();
    }
    return batch;
  };
}

/**
 * A U-Net and its token table as one trainable network: parameters under the model file's names (the
 * table's as `token_embedding.weight`), so checkpoints and EMA weights save as a model file directly.
 */
export class ConditionalNetwork implements DiffusionNetwork {
  /**
   * The network; when conditioned on tokens, its table; `conditionChannels` input channels of the U-Net
   * that take condition volumes (concatenated after the image's).
   */
  constructor(
    readonly unet: DiffusionModelUNet,
    readonly tokens?: TokenTable,
    readonly conditionChannels = 0,
  ) {}

  /** The U-Net's prediction with the batch's context, class labels and condition volumes. */
  forward(
    x: Tensor,
    timesteps: Timesteps,
    cond: { context?: Tensor; classLabels?: Tensor; control?: ControlInput } = {},
  ): Tensor {
    const { context, classLabels } = cond;
    if (this.conditionChannels === 0) return this.unet.forward(x, timesteps, { context, classLabels });
    const condition = cond.control?.conditions[0];
    if (!condition) throw new Error("the model takes condition volumes, and the batch has none.");
    return scope(() => this.unet.forward(concat([x, condition], 1), timesteps, { context, classLabels }));
  }

  /** The U-Net's parameters, then the token table's under `token_embedding.`. */
  namedParameters(): Array<[string, Tensor]> {
    return [
      ...this.unet.namedParameters(),
      ...(this.tokens?.namedParameters().map(([n, t]) => [TOKEN_PREFIX + n, t] as [string, Tensor]) ?? []),
    ];
  }
}
