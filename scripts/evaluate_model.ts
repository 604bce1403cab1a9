/**
 * Evidence that a model learned: N samples of the trained model and N samples of the same network untrained
 * (its fresh initialisation) are each compared with N augmented training volumes by MMD (Gaussian kernel
 * with σ = the median distance, and linear, on voxels) and by MS-SSIM (mean over generated × real pairs, and the nearest
 * real volume per sample). Prints a markdown table and writes JSON.
 *
 *   deno run -A scripts/evaluate_model.ts --model models/default/brain32.safetensors \
 *     --data ../shared/data/MNI152_2009_template.nii.gz --count 16 --steps 20 --json docs/models/brain32-eval.json
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ready } from "../engine/device.ts";
import { scope } from "../engine/memory.ts";
import { concat } from "../engine/ops/view.ts";
import type { Tensor } from "../engine/tensor.ts";
import { medianDistance, mmd } from "../metrics/mmd.ts";
import { msSsim, type MsSsimOptions, nearestRealMsSsim } from "../metrics/ssim.ts";
import { DiffusionModelUNet } from "../models/unet.ts";
import { augment } from "../pipelines/augment.ts";
import { listNiftiFiles, loadVolume, volumeTensor } from "../pipelines/dataset.ts";
import { loadModelFile } from "../pipelines/modelfile.ts";
import { writeSlicesPng } from "../io/png.ts";
import { sample } from "../samplers/sample.ts";
import { DDIMScheduler } from "../samplers/scheduler.ts";

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
await ready();
const { unet, info } = await loadModelFile(values.model);
const [nx, ny, nz] = info.volume.shape;
const fresh = new DiffusionModelUNet(info.unet).eval();

// Real set: augmentations with seeds the training loop never used (training seeds are < 2^32 products).
const files = await listNiftiFiles(values.data.split(","));
const bases = [];
for (const f of files) {
  bases.push(volumeTensor(await loadVolume(f, { shape: [nx, ny, nz], fov: "foreground", range: [-1, 1] })));
}
const reals: Tensor[] = [];
for (let i = 0; i < count; i++) reals.push(augment(bases[i % bases.length], 0x7fff0000 + i).image);

// MS-SSIM options that fit a small grid: 3 scales, window 5 (needs ≥ 17 voxels per axis).
const ssimOpts: MsSsimOptions = {
  spatialDims: 3,
  dataRange: 2,
  kernelSize: 5,
  kernelSigma: 1.5,
  weights: [0.0448, 0.2856, 0.3001],
};

async function generate(net: DiffusionModelUNet, label: string): Promise<Tensor[]> {
  const out: Tensor[] = [];
  const started = performance.now();
  for (let i = 0; i < count; i++) {
    out.push(
      await sample((x, t) => net.forward(x, t), new DDIMScheduler({ ...info.scheduler }), {
        shape: [1, 1, nz, ny, nx],
        steps,
        seed: 1000 + i,
      }),
    );
    console.error(
      `${label}: sample ${i + 1}/${count} (${((performance.now() - started) / 1000).toFixed(0)} s)`,
    );
  }
  return out;
}

async function flatten(ts: Tensor[]): Promise<Float32Array[]> {
  return await Promise.all(ts.map((t) => t.toArray()));
}

async function score(fakes: Tensor[]) {
  const fakeRows = await flatten(fakes);
  const realRows = await flatten(reals);
  // σ = the median cross-set distance (TenVOO's own form uses it as α, which underflows on 32k-voxel vectors).
  const gaussian = mmd(fakeRows, realRows, {
    kernel: "gaussian",
    bandwidth: medianDistance(fakeRows, realRows),
  });
  const linear = mmd(fakeRows, realRows, { kernel: "linear" });
  const all = scope(() => {
    const f = concat(fakes.flatMap((t) => Array(count).fill(t)), 0);
    const r = concat(Array(count).fill(0).flatMap(() => reals), 0);
    return msSsim(f, r, ssimOpts);
  });
  const pairValues = await all.toArray();
  all.dispose();
  const nearest = await nearestRealMsSsim(fakes, reals, ssimOpts);
  return {
    mmdGaussian: gaussian,
    mmdLinear: linear,
    msSsimMean: pairValues.reduce((a, b) => a + b, 0) / pairValues.length,
    msSsimNearest: nearest.mean,
  };
}

const trained = await generate(unet, "trained");
const untrained = await generate(fresh, "untrained");
const resultTrained = await score(trained);
const resultUntrained = await score(untrained);
if (values.previews) {
  for (const [name, set] of [["trained", trained], ["untrained", untrained], ["real", reals]] as const) {
    for (let i = 0; i < Math.min(4, set.length); i++) {
      await writeSlicesPng(`${values.previews}/${name}_${i}.png`, await set[i].toArray(), [nx, ny, nz], {
        window: [-1, 1],
      });
    }
  }
}
const rows = [
  [
    "",
    "MMD (Gaussian, σ = median distance) ↓",
    "MMD (linear) ↓",
    "MS-SSIM to real, mean over pairs ↑",
    "MS-SSIM to nearest real ↑",
  ],
  ["trained", ...Object.values(resultTrained).map((v) => v.toPrecision(4))],
  ["untrained (initialisation)", ...Object.values(resultUntrained).map((v) => v.toPrecision(4))],
];
console.log(rows.map((r) => `| ${r.join(" | ")} |`).join("\n").replace(/\n/, `\n|${" --- |".repeat(5)}\n`));
if (values.json) {
  await Deno.writeTextFile(
    values.json,
    JSON.stringify({ count, steps, trained: resultTrained, untrained: resultUntrained }, null, 2),
  );
}
for (const t of [...trained, ...untrained, ...reals, ...bases]) t.dispose();
unet.dispose();
fresh.dispose();
