/**
 * Evidence that a model learned: N samples of the trained model and N samples of the same network untrained
 * (its fresh initialisation) are each compared with N augmented training volumes by MMD (Gaussian kernel,
 * and linear, on voxels) and by MS-SSIM (mean over generated × real pairs, and the nearest real volume per
 * sample). Both rows use one Gaussian kernel: σ = the median distance between the untrained samples and the
 * real set (a per-row σ would score each row with a different kernel; that variant is kept in the JSON as
 * `mmdGaussianOwnSigma`). Prints a markdown table and writes JSON (atomically).
 *
 *   deno run -A scripts/evaluate_model.ts --model models/default/brain32.safetensors \
 *     --data ../shared/data/MNI152_2009_template.nii.gz --count 16 --steps 20 --json docs/models/brain32-eval.json
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ready } from "../engine/device.ts";
import { atomicWrite } from "../io/atomic.ts";
import type { Tensor } from "../engine/tensor.ts";
import { DiffusionModelUNet } from "../models/unet.ts";
import { listNiftiFiles } from "../pipelines/dataset.ts";
import { loadModelFile } from "../pipelines/modelfile.ts";
import { writeSlicesPng } from "../io/png.ts";
import { evaluationSeeds, generateSamples, realTargetSet, scoreAgainstReal } from "./study_metrics.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    data: { type: "string" },
    count: { type: "string", default: "16" },
    steps: { type: "string", default: "20" },
    json: { type: "string" },
    previews: { type: "string" },
  },
});
if (!values.model || !values.data) throw new Error("--model and --data are required");
const count = Number(values.count);
const steps = Number(values.steps);
if (values.previews) await Deno.mkdir(values.previews, { recursive: true }); // fail before the long work
await ready();
const { unet, info } = await loadModelFile(values.model);
const [nx, ny, nz] = info.volume.shape;
const fresh = new DiffusionModelUNet(info.unet).eval();

// Real set: augmentations with seeds the training loop never used (0x7fff0000 + i; a seed-0 training run
// draws seeds below that for its first 271,000 steps).
const files = await listNiftiFiles(values.data.split(","));
const { sources, reals } = await realTargetSet(files, info, evaluationSeeds(count));

async function generate(net: DiffusionModelUNet, label: string): Promise<Tensor[]> {
  const started = performance.now();
  return await generateSamples((x, t) => net.forward(x, t), info, {
    count,
    steps,
    onSample: (done) =>
      console.error(
        `${label}: sample ${done}/${count} (${((performance.now() - started) / 1000).toFixed(0)} s)`,
      ),
  });
}

const trained = await generate(unet, "trained");
const untrained = await generate(fresh, "untrained");
const resultUntrained = await scoreAgainstReal(untrained, reals);
const resultTrained = await scoreAgainstReal(trained, reals, { sigma: resultUntrained.mmdGaussianSigma });
/** The four scores of the table, in its column order. */
const cells = (s: typeof resultTrained) =>
  [s.mmdGaussian, s.mmdLinear, s.msSsimMean, s.msSsimNearest].map((v) => v.toPrecision(4));
const rows = [
  [
    "",
    `MMD (Gaussian, σ = ${resultTrained.mmdGaussianSigma.toPrecision(4)}) ↓`,
    "MMD (linear) ↓",
    "MS-SSIM to real, mean over pairs ↑",
    "MS-SSIM to nearest real ↑",
  ],
  ["trained", ...cells(resultTrained)],
  ["untrained (initialisation)", ...cells(resultUntrained)],
];
console.log(rows.map((r) => `| ${r.join(" | ")} |`).join("\n").replace(/\n/, `\n|${" --- |".repeat(5)}\n`));
if (values.json) {
  await atomicWrite(
    values.json,
    new TextEncoder().encode(
      JSON.stringify({ count, steps, trained: resultTrained, untrained: resultUntrained }, null, 2) + "\n",
    ),
  );
}
if (values.previews) {
  for (const [name, set] of [["trained", trained], ["untrained", untrained], ["real", reals]] as const) {
    for (let i = 0; i < Math.min(4, set.length); i++) {
      await writeSlicesPng(`${values.previews}/${name}_${i}.png`, await set[i].toArray(), [nx, ny, nz], {
        window: [-1, 1],
      });
    }
  }
}
for (const t of [...trained, ...untrained, ...reals, ...sources]) t.dispose();
unet.dispose();
fresh.dispose();
