/**
 * Loading adapter files written by `AdapterSet.save`: the base model is checked against the hash in the file
 * before anything is changed, then the recorded layers are adapted and the stored tensors copied in.
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { copyInto } from "../engine/ops/map.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { loadSafetensorsFile, readSafetensorsMetadata } from "../io/safetensors.ts";
import type { Module } from "../nn/module.ts";
import { type AdapterInfo, decodeAdapterMetadata } from "./format.ts";
import { modelHash } from "./hash.ts";
import { adapt, type AdapterSet } from "./inject.ts";
import { assertNoAdapters } from "./layer.ts";

/** Options of {@linkcode loadAdapters}. */
export interface LoadAdapterOptions {
  /**
   * The base model's hash, when already known — e.g. taken before other adapters were merged into the model,
   * so that several adapters can be blended (load, merge(w), remove(), next).
   */
  baseHash?: string;
}

/** The description stored in an adapter file (no GPU needed). */
export async function readAdapterInfo(path: string): Promise<AdapterInfo> {
  return decodeAdapterMetadata(await readSafetensorsMetadata(path), path);
}

/**
 * Puts the adapter stored at `path` on `model`, which must be the base model it was trained on (same
 * parameter names, shapes and values; checked through the hash in the file). Returns the `AdapterSet`,
 * trainable as when it was saved, so fine-tuning can also continue from it.
 */
export async function loadAdapters(
  model: Module,
  path: string,
  opts: LoadAdapterOptions = {},
): Promise<AdapterSet> {
  assertNoAdapters(model, "loadAdapters");
  const { tensors, metadata } = await loadSafetensorsFile(path);
  try {
    const info = decodeAdapterMetadata(metadata, path);
    const hash = opts.baseHash ?? await modelHash(model);
    if (hash !== info.baseHash) {
      throw new Error(
        `loadAdapters: ${path} was trained on another base model (base hash ${
          info.baseHash.slice(0, 16)
        }… in the file, ${hash.slice(0, 16)}… for this model). Load the base model it was fine-tuned from.`,
      );
    }
    const set = await adapt(model, {
      kind: info.kind,
      rank: info.rank,
      alpha: info.alpha,
      factors: info.factors,
      trainNorms: info.trainNorms,
      trainBiases: info.trainBiases,
      jointModules: info.jointModules,
      seed: info.seed,
      baseHash: hash,
    }, {
      names: info.layers.map((l) => l.name),
      targets: info.targets,
      trainedBase: info.trainedBase.map((p) => p.name),
    });
    try {
      for (const l of info.layers) {
        const method = set.layers.get(l.name)!.method;
        if (method.kind !== l.kind || JSON.stringify(method.inFactors) !== JSON.stringify(l.inFactors)) {
          throw new Error(
            `loadAdapters: ${path} adapts "${l.name}" with ${l.kind} (factors ${l.inFactors}); this voxgen ` +
              `builds ${method.kind} (factors ${method.inFactors}) there.`,
          );
        }
      }
      fill(set, tensors, path);
    } catch (e) {
      set.remove();
      throw e;
    }
    return set;
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}

/** Copies the file's tensors into the adapter's cores, frozen copies and trained base parameters. */
function fill(set: AdapterSet, tensors: Map<string, Tensor>, path: string): void {
  const targets = new Map<string, Tensor>();
  for (const [name, layer] of set.layers) {
    const own = new Set([...layer.cores, ...layer.frozenCores]);
    for (const [n, t] of layer.namedParameters(name)) if (own.has(t)) targets.set(n, t);
  }
  const trainable = new Map(set.namedParameters());
  for (const { name } of set.info.trainedBase) targets.set(name, trainable.get(name)!);
  const missing = [...targets.keys()].filter((n) => !tensors.has(n));
  const unexpected = [...tensors.keys()].filter((n) => !targets.has(n));
  const wrong = [...targets].filter(([n, t]) =>
    tensors.has(n) && tensors.get(n)!.shape.join() !== t.shape.join()
  )
    .map(([n, t]) => `${n}: ${formatShape(tensors.get(n)!.shape)} in the file vs ${formatShape(t.shape)}`);
  if (missing.length + unexpected.length + wrong.length > 0) {
    const list = (title: string, items: string[]) =>
      items.length ? `\n  ${title}: ${items.slice(0, 20).join(", ")}${items.length > 20 ? ", …" : ""}` : "";
    throw new Error(
      `loadAdapters: ${path} does not match its own description (damaged or edited file).` +
        list("missing", missing) + list("unexpected", unexpected) + list("wrong shapes", wrong),
    );
  }
  noGrad(() => {
    for (const [n, t] of targets) copyInto(t, tensors.get(n)!);
  });
}

/** An adapter file and the weight its update is merged with. */
export interface AdapterSpec {
  /** The adapter file. */
  path: string;
  /** Scale of its update (1 = as trained; 0 = the base model). */
  weight: number;
}

/**
 * Bakes adapters into `model`: each is loaded onto the base weights (checked against the hash taken before
 * the first one changed them), merged with its weight and removed again, so the next one finds plain
 * layers. `onMerged` hears about each (e.g. to log it).
 */
export async function mergeAdapterFiles(
  model: Module,
  adapters: readonly AdapterSpec[],
  onMerged?: (spec: AdapterSpec, set: AdapterSet) => void,
): Promise<void> {
  if (adapters.length === 0) return;
  const baseHash = await modelHash(model);
  for (const spec of adapters) {
    const set = await loadAdapters(model, spec.path, { baseHash });
    onMerged?.(spec, set);
    set.merge(spec.weight);
    set.remove();
  }
}
