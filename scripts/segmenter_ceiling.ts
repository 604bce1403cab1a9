/**
 * The segmenter's ceiling (pipelines/segment.ts): the template pair on a model's grid, deformed with held-out
 * seeds as the control training pairs are, segmented, and scored against its own deformed labels.
 *
 *   deno run -A scripts/segmenter_ceiling.ts [--model FILE] [--volumes N] [--json OUT]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ready } from "../engine/device.ts";
import { loadTemplatePair, pairSeed } from "../pipelines/control_data.ts";
import { loadModelFile } from "../pipelines/modelfile.ts";
import { segmenterCeiling, tissueCentroids } from "../pipelines/segment.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { model: { type: "string" }, volumes: { type: "string" }, json: { type: "string" } },
});
await ready();
const modelPath = values.model ?? "models/default/brain32.safetensors";
const { unet, info } = await loadModelFile(modelPath);
unet.dispose();
const pair = await loadTemplatePair(
  "../shared/data/MNI152_2009_template.nii.gz",
  "../shared/data/mni152_pveseg.nii.gz",
  info.volume.shape,
  info.volume.range,
);
const [image, labels] = await Promise.all([pair.image.toArray(), pair.labels.toArray()]);
const init = tissueCentroids(image, labels.subarray(0, image.length));
const n = Number(values.volumes ?? 16);
// Seeds of held-out deformations: training uses pairSeed(seed, k) with the run's seed (0 by default).
const seeds = Array.from({ length: n }, (_, i) => pairSeed(1000, i));
const ceiling = await segmenterCeiling(pair, seeds, init, { range: info.volume.range });
const result = { model: modelPath, centroids: init, ...ceiling };
console.log(JSON.stringify(result, null, 2));
if (values.json) await Deno.writeTextFile(values.json, JSON.stringify(result, null, 2) + "\n");
pair.image.dispose();
pair.labels.dispose();
