/**
 * Loader of the MONAI model fixtures that hold a state dict plus `fixture.*` inputs and outputs (made by
 * tests/fixtures/make_monai_autoencoder_fixtures.py), and the relative error the model tests compare with.
 *
 * @module
 */

import type { Tensor } from "../../mod.ts";
import { loadSafetensors, parseSafetensors } from "../../io/safetensors.ts";
import { disposeAll } from "./gpu.ts";

/** A MONAI fixture: config, state dict, and the `fixture.*` tensors (as tensors and as values). */
export interface ModelFixture {
  config: Record<string, unknown>;
  format: string;
  state: Map<string, Tensor>;
  inputs: Map<string, Tensor>;
  values: Map<string, Float32Array>;
}

/** Loads `tests/fixtures/<file>.safetensors`, splitting the state dict from the `fixture.*` entries. */
export async function loadModelFixture(file: string): Promise<ModelFixture> {
  const bytes = await Deno.readFile(new URL(`../fixtures/${file}.safetensors`, import.meta.url));
  const { metadata, tensors: raw } = parseSafetensors(bytes, file);
  const all = await loadSafetensors(bytes);
  const state = new Map([...all].filter(([k]) => !k.startsWith("fixture.")));
  const inputs = new Map(
    [...all].filter(([k]) => k.startsWith("fixture.")).map(([k, t]) => [k.slice("fixture.".length), t]),
  );
  const values = new Map(
    [...inputs.keys()].map((k) => [k, raw.get(`fixture.${k}`)!.data as Float32Array]),
  );
  return { config: JSON.parse(metadata.config), format: metadata.format, state, inputs, values };
}

/** Frees a fixture's tensors. */
export function disposeModelFixture(f: ModelFixture): void {
  disposeAll([...f.state.values()], [...f.inputs.values()]);
}

/** max |a − e| / RMS(e). */
export function relError(actual: Float32Array, expected: Float32Array): number {
  if (actual.length !== expected.length) throw new Error(`length ${actual.length} vs ${expected.length}`);
  let worst = 0;
  let sq = 0;
  for (let i = 0; i < expected.length; i++) {
    worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
    sq += expected[i] * expected[i];
  }
  return worst / Math.sqrt(sq / expected.length);
}
