/**
 * The description of an adapter — what was adapted, how, and on which base model — as kept by an
 * `AdapterSet` and stored in an adapter file's safetensors `__metadata__` (key `adapter`, JSON), next to a
 * few flat keys for tools that only list metadata.
 *
 * @module
 */

import { ADAPTER_KINDS, type AdapterKind } from "./method.ts";

/** The `format` metadata value of adapter files. */
export const ADAPTER_FORMAT = "voxgen-adapter";
/** Version of the adapter file layout. */
export const ADAPTER_FORMAT_VERSION = "1";

/** One adapted layer. */
export interface AdaptedLayerInfo {
  /** Module path in the model, e.g. `down_blocks.0.resnets.1.conv1.conv`. */
  name: string;
  /** The layer type. */
  layer: "linear" | "conv2d" | "conv3d";
  /** Output features or channels. */
  out: number;
  /** Input features or channels. */
  in: number;
  /** Kernel sizes ([] for a Linear). */
  kernel: number[];
  /** Method used on this layer (TenVOO kinds use "quanta" on linear layers). */
  kind: AdapterKind;
  /** Input factors (TenVOO, QuanTA, LoKr), or null. */
  inFactors: number[] | null;
  /** Output factors, or null. */
  outFactors: number[] | null;
  /** Trainable elements of the cores. */
  numParameters: number;
  /** Elements of the frozen copy (0 without one). */
  numFrozen: number;
  /** The method's formula, as text. */
  formula: string;
}

/** Everything an adapter file records besides the tensors. */
export interface AdapterInfo {
  /** The requested kind. */
  kind: AdapterKind;
  /** Rank. */
  rank: number;
  /** Alpha (ΔW is scaled by alpha / rank). */
  alpha: number;
  /** The target patterns as given (RegExps as `/source/flags`). */
  targets: string[];
  /** Channel-count factorisation overrides. */
  factors: Record<number, number[]>;
  /** Norm layers were trained too. */
  trainNorms: boolean;
  /** Biases of adapted layers were trained too. */
  trainBiases: boolean;
  /** Joint fine-tuning: false, true (every other layer), or the module patterns. */
  jointModules: boolean | string[];
  /** Seed of the initial cores. */
  seed: number;
  /** {@linkcode modelHash} of the base model before any change. */
  baseHash: string;
  /** Parameters of the base model. */
  numBaseParameters: number;
  /** The adapted layers, in model order. */
  layers: AdaptedLayerInfo[];
  /** Layers that matched a target but were left alone, with the reason. */
  skipped: Array<{ name: string; reason: string }>;
  /** Base parameters trained along (norms, biases, joint layers) and stored in the file. */
  trainedBase: Array<{ name: string; size: number }>;
}

/** Trainable elements: the cores plus the base parameters trained along. */
export function trainableCount(info: AdapterInfo): number {
  return info.layers.reduce((n, l) => n + l.numParameters, 0) +
    info.trainedBase.reduce((n, p) => n + p.size, 0);
}

/** The safetensors metadata of an adapter file. */
export function encodeAdapterMetadata(info: AdapterInfo): Record<string, string> {
  return {
    format: ADAPTER_FORMAT,
    version: ADAPTER_FORMAT_VERSION,
    kind: info.kind,
    rank: String(info.rank),
    alpha: String(info.alpha),
    base_hash: info.baseHash,
    trainable: String(trainableCount(info)),
    adapter: JSON.stringify(info),
  };
}

/** Reads and checks the metadata of an adapter file (`source` names the file in errors). */
export function decodeAdapterMetadata(metadata: Record<string, string>, source: string): AdapterInfo {
  const fail = (why: string): never => {
    throw new Error(`adapter file ${source}: ${why}`);
  };
  if (metadata.format !== ADAPTER_FORMAT) {
    fail(
      `not a voxgen adapter (metadata format is ${JSON.stringify(metadata.format ?? null)}, expected ` +
        `"${ADAPTER_FORMAT}").`,
    );
  }
  if (metadata.version !== ADAPTER_FORMAT_VERSION) {
    fail(
      `layout version ${metadata.version} is not supported (this voxgen reads ${ADAPTER_FORMAT_VERSION}).`,
    );
  }
  let info: AdapterInfo;
  try {
    info = JSON.parse(metadata.adapter);
  } catch (e) {
    return fail(`the "adapter" metadata is not valid JSON (${(e as Error).message}).`);
  }
  if (!ADAPTER_KINDS.includes(info.kind)) fail(`unknown adapter kind ${JSON.stringify(info.kind)}.`);
  if (!Number.isInteger(info.rank) || info.rank < 1) fail(`invalid rank ${JSON.stringify(info.rank)}.`);
  if (typeof info.baseHash !== "string" || !Array.isArray(info.layers) || !Array.isArray(info.trainedBase)) {
    fail("the adapter description lacks baseHash, layers or trainedBase.");
  }
  return info;
}
