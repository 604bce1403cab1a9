/**
 * How far fine-tuning moved a model's weights: for each fine-tuned file (an adapter, merged into the base, or
 * a full model), the relative change ‖W − W₀‖ / ‖W₀‖ over all weights of the layers that changed, and over
 * the whole model. Separates "how far a method moved" from "where it moved to" in the adapter study.
 *
 *   deno run -A scripts/weight_change.ts --base models/default/brain32.safetensors \
 *     runs/study/locon/adapter.safetensors runs/study/full/model.safetensors …
 *
 * @module
 */

import { parseArgs } from "node:util";
import { loadAdapters } from "../adapters/mod.ts";
import { ready } from "../engine/device.ts";
import { loadModelFile } from "../pipelines/modelfile.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  options: { base: { type: "string" } },
  allowPositionals: true,
});
if (!values.base || positionals.length === 0) {
  throw new Error("usage: weight_change.ts --base MODEL FILE… (adapter files or full model files)");
}
await ready();
const base = await loadModelFile(values.base);
const baseWeights = new Map<string, Float32Array>();
for (const [name, t] of base.unet.namedParameters()) baseWeights.set(name, await t.toArray() as Float32Array);
base.unet.dispose();

console.log("| file | tensors changed | ‖ΔW‖/‖W₀‖ of the changed tensors | ‖ΔW‖/‖W₀‖ of the whole model |");
console.log("| --- | ---: | ---: | ---: |");
for (const file of positionals) {
  // A full model file loads as a model; anything else as an adapter on the base.
  const isModel = await loadModelFile(file).then((m) => m, () => null);
  const loaded = isModel ?? await loadModelFile(values.base);
  const set = isModel ? null : await loadAdapters(loaded.unet, file);
  set?.merge();
  let changedTensors = 0;
  let deltaChanged = 0;
  let normChanged = 0;
  let deltaAll = 0;
  let normAll = 0;
  for (const [name, t] of loaded.unet.namedParameters()) {
    const w0 = baseWeights.get(name);
    if (!w0) continue; // adapter cores: not base weights
    const w = await t.toArray();
    let d2 = 0;
    let n2 = 0;
    for (let i = 0; i < w0.length; i++) {
      d2 += (w[i] - w0[i]) ** 2;
      n2 += w0[i] ** 2;
    }
    deltaAll += d2;
    normAll += n2;
    if (d2 > 0) {
      changedTensors++;
      deltaChanged += d2;
      normChanged += n2;
    }
  }
  console.log(
    `| ${file} | ${changedTensors} | ${Math.sqrt(deltaChanged / normChanged).toExponential(3)} | ${
      Math.sqrt(deltaAll / normAll).toExponential(3)
    } |`,
  );
  set?.remove();
  loaded.unet.dispose();
}
