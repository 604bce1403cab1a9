/**
 * `injectAdapters`: puts adapters on a model's target layers, freezes the base model and returns the
 * {@linkcode AdapterSet} that trains, merges, saves and removes them.
 *
 * @module
 */

import type { Tensor } from "../engine/tensor.ts";
import { saveSafetensors } from "../io/safetensors.ts";
import { seedStream } from "../nn/conv.ts";
import { seededRandom } from "../nn/init.ts";
import { Linear } from "../nn/linear.ts";
import type { Module } from "../nn/module.ts";
import { GroupNorm, LayerNorm } from "../nn/norm.ts";
import { type AdaptedLayerInfo, type AdapterInfo, encodeAdapterMetadata, trainableCount } from "./format.ts";
import { modelHash } from "./hash.ts";
import { type AdaptableLayer, AdaptedLayer, assertNoAdapters, isAdaptable, weightShapeOf } from "./layer.ts";
import { locon, loconParameterCount, loha, lohaParameterCount, lokr, lokrParameterCount } from "./lycoris.ts";
import {
  ADAPTER_KINDS,
  type AdapterKind,
  type LayerMethod,
  type MethodOptions,
  type WeightShape,
} from "./method.ts";
import { quanta, quantaParameterCount } from "./quanta.ts";
import { tenvoo, tenvooParameterCount } from "./tenvoo.ts";

/**
 * The TenVOO repository's targets (`ddpm_unet.py`, `DDPM_LAYERS` for conv1, conv2, to_q, to_v, time_emb,
 * time_proj), as regular expressions searched in module paths: the ResnetBlocks' two convolutions and time
 * projections, the attention query and value projections, and the time embedding's second Linear.
 *
 * As in the paper's code these match `…resnets.N…` and `…attentions.N…`, so the middle block (whose layers
 * are `middle_block.resnet_1`, `middle_block.attention`) is not adapted; add {@linkcode MIDDLE_BLOCK_TARGETS}
 * to include it.
 */
export const DEFAULT_TARGETS: readonly string[] = Object.freeze([
  ".*resnets.*.conv1.conv",
  ".*resnets.*.conv2.conv",
  ".*attentions.*.to_q",
  ".*attentions.*.to_v",
  "time_embed.2",
  ".*resnets.*.time_emb_proj",
]);

/** The same layers in the U-Net's middle block (not among the paper's targets). */
export const MIDDLE_BLOCK_TARGETS: readonly string[] = Object.freeze([
  "middle_block\\.resnet_\\d\\.(conv1|conv2)\\.conv$",
  "middle_block\\.resnet_\\d\\.time_emb_proj$",
  "middle_block\\.attention\\..*to_[qv]$",
]);

/** Options of {@linkcode injectAdapters}. */
export interface AdapterOptions {
  /** The method. TenVOO-L/Q adapt convolutions and use QuanTA on linear layers. */
  kind: AdapterKind;
  /** Rank of the cores (TenVOO's bond dimension; LoCon/LoHa/LoKr's matrix rank). */
  rank: number;
  /**
   * ΔW is scaled by alpha / rank. Default: rank / 4 for LoCon, LoHa and LoKr (scale 1/4, what the TenVOO
   * repository's `alpha = rank // 4` gives for multiples of 4), rank for TenVOO and QuanTA (scale 1).
   */
  alpha?: number;
  /**
   * Layers to adapt: regular expressions (strings are compiled) searched in module paths such as
   * `down_blocks.0.resnets.1.conv1.conv`; only `ConvNd` and `Linear` layers qualify. Default
   * {@linkcode DEFAULT_TARGETS}. Each pattern given explicitly must match at least one layer.
   */
  targets?: ReadonlyArray<RegExp | string>;
  /** Channel count → three factors, overriding the table and the balanced default (TenVOO, QuanTA). */
  factors?: Readonly<Record<number, readonly number[]>>;
  /** Also train GroupNorm and LayerNorm parameters (the TenVOO repository's default does). Default false. */
  trainNorms?: boolean;
  /** Also train the biases of adapted layers (the repository's `bias="lora_only"` default). Default false. */
  trainBiases?: boolean;
  /**
   * Jointly fine-tune (the TenVOO paper, Table 2): `true` trains every parameter outside the adapted layers in full;
   * patterns (searched in module paths) train only the parameters of matching modules. Adapted layers'
   * own weights stay frozen. Default false.
   */
  jointModules?: boolean | ReadonlyArray<RegExp | string>;
  /** Skip convolutions with one input or output channel (the U-Net's first and last). Default true. */
  skipSingleChannel?: boolean;
  /** Seed of the initial cores. Default 0. */
  seed?: number;
  /** The base model's {@linkcode modelHash}, when already known (saves reading the weights back). */
  baseHash?: string;
}

/** Internal: layers to adapt by exact path (adapter loading), and the targets to record. */
export interface ExactLayers {
  /** Module paths. */
  names: readonly string[];
  /** The target patterns the adapter was made with. */
  targets: readonly string[];
  /** Base parameters trained along, by name. */
  trainedBase: readonly string[];
}

const DEFAULT_ALPHA_DIVISOR: Record<AdapterKind, number> = {
  locon: 4,
  loha: 4,
  lokr: 4,
  "tenvoo-l": 1,
  "tenvoo-q": 1,
  quanta: 1,
};

/** The method for a layer of `shape` ("tenvoo-*" on a Linear is QuanTA). */
export function createMethod(kind: AdapterKind, shape: WeightShape, opts: MethodOptions): LayerMethod {
  const linear = shape.kernel.length === 0;
  switch (kind) {
    case "locon":
      return locon(shape, opts);
    case "loha":
      return loha(shape, opts);
    case "lokr":
      return lokr(shape, opts);
    case "quanta":
      return quanta(shape, opts);
    case "tenvoo-l":
    case "tenvoo-q":
      return linear ? quanta(shape, opts) : tenvoo(kind, shape, opts);
  }
}

/** The trainable parameter count `kind` gives a layer of `shape` (by the method's formula). */
export function adapterParameterCount(
  kind: AdapterKind,
  shape: WeightShape,
  rank: number,
  factors: Readonly<Record<number, readonly number[]>> = {},
): number {
  const linear = shape.kernel.length === 0;
  switch (kind) {
    case "locon":
      return loconParameterCount(shape, rank);
    case "loha":
      return lohaParameterCount(shape, rank);
    case "lokr":
      return lokrParameterCount(shape, rank);
    case "quanta":
      return quantaParameterCount(shape, rank, factors);
    case "tenvoo-l":
    case "tenvoo-q":
      return linear
        ? quantaParameterCount(shape, rank, factors)
        : tenvooParameterCount(kind, shape, rank, factors);
  }
}

function patternOf(p: RegExp | string, what: string): RegExp {
  // Without g/y: those make `test` stateful (it would resume from the previous match's lastIndex).
  if (p instanceof RegExp) return new RegExp(p.source, p.flags.replace(/[gy]/g, ""));
  if (typeof p !== "string" || p === "") {
    throw new Error(
      `injectAdapters: ${what} must be RegExps or non-empty strings, got ${JSON.stringify(p)}.`,
    );
  }
  try {
    return new RegExp(p);
  } catch (e) {
    throw new Error(`injectAdapters: ${what} pattern ${JSON.stringify(p)} is not a regular expression: ${e}`);
  }
}

function describePattern(p: RegExp | string): string {
  return p instanceof RegExp ? String(p) : p;
}

function layerType(layer: AdaptableLayer): AdaptedLayerInfo["layer"] {
  return layer instanceof Linear ? "linear" : layer.spatialDims === 2 ? "conv2d" : "conv3d";
}

/** The module that holds `path` as a direct child, and the child's name. */
function parentOf(model: Module, modules: Map<string, Module>, path: string): [Module, string] {
  const dot = path.lastIndexOf(".");
  return dot < 0 ? [model, path] : [modules.get(path.slice(0, dot))!, path.slice(dot + 1)];
}

/**
 * Adapters on a model's layers. Created by {@linkcode injectAdapters} or `loadAdapters`; train the model as
 * usual (only the trainable parameters get gradients), then `save`, or `merge` for inference.
 */
export class AdapterSet {
  /** The adapted layers by module path. */
  readonly layers: ReadonlyMap<string, AdaptedLayer>;
  #model: Module;
  #info: Omit<AdapterInfo, "layers" | "trainedBase">;
  #trainedBase: Array<[string, Tensor]>;
  #originalFlags: Map<Tensor, boolean>;
  #removed = false;

  /** Internal: use {@linkcode injectAdapters}. */
  constructor(
    model: Module,
    layers: Map<string, AdaptedLayer>,
    info: Omit<AdapterInfo, "layers" | "trainedBase">,
    trainedBase: Array<[string, Tensor]>,
    originalFlags: Map<Tensor, boolean>,
  ) {
    this.#model = model;
    this.layers = layers;
    this.#info = info;
    this.#trainedBase = trainedBase;
    this.#originalFlags = originalFlags;
  }

  #check(op: string): void {
    if (this.#removed) throw new Error(`AdapterSet.${op}: the adapters were removed from the model.`);
  }

  /** What the adapter is, as stored in its file. */
  get info(): AdapterInfo {
    const layers = [...this.layers].map(([name, layer]): AdaptedLayerInfo => {
      const s = layer.weightShape;
      return {
        name,
        layer: layerType(layer.base),
        out: s.out,
        in: s.in,
        kernel: [...s.kernel],
        kind: layer.method.kind,
        inFactors: layer.method.inFactors,
        outFactors: layer.method.outFactors,
        numParameters: layer.numAdapterParameters,
        numFrozen: layer.numFrozenParameters,
        formula: layer.method.formula,
      };
    });
    return {
      ...this.#info,
      layers,
      trainedBase: this.#trainedBase.map(([name, t]) => ({ name, size: t.size })),
    };
  }

  /** The hash of the base model the adapter belongs to. */
  get baseHash(): string {
    return this.#info.baseHash;
  }

  /** Trainable tensors with their model paths: every layer's cores, then base parameters trained along. */
  namedParameters(): Array<[string, Tensor]> {
    const out: Array<[string, Tensor]> = [];
    for (const [name, layer] of this.layers) {
      for (const [n, t] of layer.namedParameters(name)) if (layer.cores.includes(t)) out.push([n, t]);
    }
    return [...out, ...this.#trainedBase];
  }

  /** The trainable tensors (what an optimizer updates). */
  parameters(): Tensor[] {
    return this.namedParameters().map(([, t]) => t);
  }

  /** Number of trainable elements: the cores plus any base parameters trained along. */
  get numParameters(): number {
    return trainableCount(this.info);
  }

  /** Number of core elements (the adapters alone). */
  get numAdapterParameters(): number {
    return [...this.layers.values()].reduce((n, l) => n + l.numAdapterParameters, 0);
  }

  /** Number of frozen-copy elements (stored in the file, not trained). */
  get numFrozenParameters(): number {
    return [...this.layers.values()].reduce((n, l) => n + l.numFrozenParameters, 0);
  }

  /** Whether the updates are folded into the weights. */
  get merged(): boolean {
    return [...this.layers.values()].some((l) => l.merged);
  }

  /**
   * Folds every layer's update into its weight (zero overhead at inference). `amount` scales the updates
   * (1 = as trained), e.g. to blend adapters.
   */
  merge(amount = 1): void {
    this.#check("merge");
    if (this.merged) throw new Error("AdapterSet.merge: already merged; unmerge() first.");
    for (const layer of this.layers.values()) layer.merge(amount);
  }

  /** Takes the merged updates out of the weights again (up to f32 rounding). */
  unmerge(): void {
    this.#check("unmerge");
    if (!this.merged) throw new Error("AdapterSet.unmerge: the updates are not merged.");
    for (const layer of this.layers.values()) layer.unmerge();
  }

  /**
   * Writes the adapter to a safetensors file: the cores, their frozen copies, the base parameters trained
   * along (norms, biases, joint layers) under their model paths, and the description in the metadata.
   */
  async save(path: string): Promise<void> {
    this.#check("save");
    const tensors = new Map<string, Tensor>();
    for (const [name, layer] of this.layers) {
      const own = new Set([...layer.cores, ...layer.frozenCores]);
      for (const [n, t] of layer.namedParameters(name)) if (own.has(t)) tensors.set(n, t);
    }
    for (const [name, t] of this.#trainedBase) tensors.set(name, t);
    await saveSafetensors(path, tensors, encodeAdapterMetadata(this.info));
  }

  /**
   * Takes the adapters out of the model: the original layers go back, the `requiresGrad` flags of the base
   * parameters are restored and the cores are freed. A merged update stays in the weights (baked in).
   */
  remove(): void {
    this.#check("remove");
    const modules = new Map(this.#model.namedModules());
    for (const [name, layer] of this.layers) {
      const [parent, child] = parentOf(this.#model, modules, name);
      parent.replaceChild(child, layer.base);
      layer.disposeAdapter();
    }
    for (const [t, flag] of this.#originalFlags) if (!t.isDisposed) t.setRequiresGrad(flag);
    this.#removed = true;
  }
}

/** Checks and completes the options. */
function resolve(opts: AdapterOptions) {
  const fail = (why: string): never => {
    throw new Error(`injectAdapters: ${why}`);
  };
  if (typeof opts !== "object" || opts === null) fail("options { kind, rank, … } are required.");
  if (!ADAPTER_KINDS.includes(opts.kind)) {
    fail(`kind must be one of ${ADAPTER_KINDS.join(", ")}; got ${JSON.stringify(opts.kind)}.`);
  }
  if (!Number.isInteger(opts.rank) || opts.rank < 1) {
    fail(`rank must be a positive integer, got ${opts.rank}.`);
  }
  const alpha = opts.alpha ?? opts.rank / DEFAULT_ALPHA_DIVISOR[opts.kind];
  if (!Number.isFinite(alpha)) fail(`alpha must be a finite number, got ${opts.alpha}.`);
  const seed = opts.seed ?? 0;
  if (!Number.isInteger(seed)) fail(`seed must be an integer, got ${seed}.`);
  const factors: Record<number, number[]> = {};
  for (const [n, f] of Object.entries(opts.factors ?? {})) factors[Number(n)] = [...f];
  const joint = opts.jointModules ?? false;
  if (typeof joint !== "boolean" && !Array.isArray(joint)) {
    fail(`jointModules must be true, false or a list of patterns, got ${JSON.stringify(joint)}.`);
  }
  return {
    kind: opts.kind,
    rank: opts.rank,
    alpha,
    seed,
    factors,
    explicitTargets: opts.targets !== undefined,
    targets: [...(opts.targets ?? DEFAULT_TARGETS)],
    trainNorms: opts.trainNorms ?? false,
    trainBiases: opts.trainBiases ?? false,
    joint: joint as boolean | ReadonlyArray<RegExp | string>,
    skipSingleChannel: opts.skipSingleChannel ?? true,
  };
}

/**
 * Adapts the target layers of `model` in place: each matching `ConvNd` or `Linear` is replaced by an
 * {@linkcode AdaptedLayer} whose cores are the only trainable parameters (plus norms, biases or joint layers
 * when asked). At the start the adapted model computes exactly what the base model computes. The base
 * model's hash is taken first (a GPU readback of its weights, hence async) and stored with the adapter.
 *
 * @example
 * ```ts
 * const adapters = await injectAdapters(unet, { kind: "tenvoo-l", rank: 4 });
 * console.log(adapterSummary(adapters));
 * await train(unet, scheduler, data, { steps: 1000, outDir: "runs/ft" });
 * await adapters.save("adapter.safetensors");
 * ```
 */
export async function injectAdapters(model: Module, opts: AdapterOptions): Promise<AdapterSet> {
  return await adapt(model, opts);
}

/** Internal: {@linkcode injectAdapters}, or exactly the `exact` layers (for loading a file). */
export async function adapt(model: Module, opts: AdapterOptions, exact?: ExactLayers): Promise<AdapterSet> {
  const cfg = resolve(opts);
  assertNoAdapters(model, "injectAdapters");
  const named = model.namedParameters();
  const baseHash = opts.baseHash ?? await modelHash(model);
  const modules = new Map(model.namedModules());

  // Which layers to adapt.
  const patterns = cfg.targets.map((p) => patternOf(p, "targets"));
  const hits = patterns.map(() => 0);
  const chosen: string[] = [];
  const skipped: Array<{ name: string; reason: string }> = [];
  if (exact) {
    for (const name of exact.names) {
      const m = modules.get(name);
      if (!m || !isAdaptable(m)) {
        throw new Error(`injectAdapters: the model has no Linear or convolution at "${name}".`);
      }
      chosen.push(name);
    }
  } else {
    for (const [name, m] of modules) {
      if (!name || !isAdaptable(m)) continue;
      const matched = patterns.map((p, i) => (p.test(name) ? i : -1)).filter((i) => i >= 0);
      if (matched.length === 0) continue;
      for (const i of matched) hits[i]++;
      const s = weightShapeOf(m);
      if (cfg.skipSingleChannel && s.kernel.length > 0 && (s.in === 1 || s.out === 1)) {
        skipped.push({ name, reason: `${s.in === 1 ? "one input" : "one output"} channel` });
        continue;
      }
      chosen.push(name);
    }
    const unmatched = cfg.targets.filter((_, i) => hits[i] === 0);
    if (chosen.length === 0 || (cfg.explicitTargets && unmatched.length > 0)) {
      const layers = [...modules].filter(([n, m]) => n && isAdaptable(m)).map(([n]) => n);
      throw new Error(
        `injectAdapters: ${
          chosen.length === 0
            ? "no layer to adapt"
            : `target pattern(s) ${unmatched.map(describePattern).join(", ")} match no layer`
        } (targets: ${cfg.targets.map(describePattern).join(", ")}). Linear and convolution layers of the ` +
          `model: ${layers.slice(0, 12).join(", ")}${
            layers.length > 12 ? `, … (${layers.length} in all)` : ""
          }.`,
      );
    }
  }

  // Freeze everything, remembering the flags for remove().
  const originalFlags = new Map(named.map(([, t]) => [t, t.requiresGrad]));
  for (const [, t] of named) t.setRequiresGrad(false);

  const nextSeed = seedStream(cfg.seed);
  const layers = new Map<string, AdaptedLayer>();
  for (const name of chosen) {
    const base = modules.get(name) as AdaptableLayer;
    const method = createMethod(cfg.kind, weightShapeOf(base), {
      rank: cfg.rank,
      scale: cfg.alpha / cfg.rank,
      random: seededRandom(nextSeed()),
      factors: cfg.factors,
    });
    if (method.cores.reduce((n, c) => n + c.values.length, 0) !== method.formulaCount) {
      throw new Error(`injectAdapters: ${method.kind} on "${name}": core sizes disagree with the formula.`);
    }
    const layer = new AdaptedLayer(base, method);
    const [parent, child] = parentOf(model, modules, name);
    parent.replaceChild(child, layer);
    layers.set(name, layer);
  }

  // What else trains along.
  const adaptedPaths = [...layers.keys()];
  const insideAdapted = (path: string) => adaptedPaths.some((a) => path === a || path.startsWith(`${a}.`));
  const trainable = new Set<Tensor>();
  if (exact) {
    const byName = new Map(named);
    for (const name of exact.trainedBase) {
      const t = byName.get(name);
      if (!t) throw new Error(`injectAdapters: the model has no parameter "${name}" to train along.`);
      trainable.add(t);
    }
  } else {
    if (cfg.joint !== false) {
      const jointPatterns = cfg.joint === true ? null : cfg.joint.map((p) => patternOf(p, "jointModules"));
      for (const [name, t] of named) {
        const owner = name.slice(0, Math.max(0, name.lastIndexOf(".")));
        if (insideAdapted(owner)) continue;
        if (!jointPatterns || jointPatterns.some((p) => p.test(owner))) trainable.add(t);
      }
    }
    if (cfg.trainNorms) {
      for (const [, m] of modules) {
        if (m instanceof GroupNorm || m instanceof LayerNorm) {
          for (const t of m.parameters()) trainable.add(t);
        }
      }
    }
    if (cfg.trainBiases) { for (const layer of layers.values()) if (layer.bias) trainable.add(layer.bias); }
  }
  for (const t of trainable) t.setRequiresGrad(true);
  const trainedBase = named.filter(([, t]) => trainable.has(t));

  const info = {
    kind: cfg.kind,
    rank: cfg.rank,
    alpha: cfg.alpha,
    targets: exact ? [...exact.targets] : cfg.targets.map(describePattern),
    factors: cfg.factors,
    trainNorms: cfg.trainNorms,
    trainBiases: cfg.trainBiases,
    jointModules: typeof cfg.joint === "boolean" ? cfg.joint : cfg.joint.map(describePattern),
    seed: cfg.seed,
    baseHash,
    numBaseParameters: named.reduce((n, [, t]) => n + t.size, 0),
    skipped,
  };
  return new AdapterSet(model, layers, info, trainedBase, originalFlags);
}
