/**
 * How well a model file denoises: the training template (preprocessed like training) is noised to several
 * timesteps with a fixed seed, the model predicts its target (ε, v or x0, as it was trained), and the script
 * reports the MSE of that prediction and the MSE of the implied clean volume x̂0, writing x̂0 previews.
 *
 *   deno run -A scripts/denoise_check.ts models/default/brain32.safetensors docs/models/brain32-previews
 *
 * @module
 */

import { ready } from "../engine/device.ts";
import { noGrad } from "../engine/autograd.ts";
import { mseLoss } from "../engine/ops/elementwise.ts";
import { randn } from "../engine/ops/random.ts";
import { writeSlicesPng } from "../io/png.ts";
import { loadVolume, volumeTensor } from "../pipelines/dataset.ts";
import { loadModelFile } from "../pipelines/modelfile.ts";
import { DDPMScheduler } from "../samplers/scheduler.ts";

const [modelPath, outDir] = Deno.args;
if (!modelPath || !outDir) throw new Error("usage: denoise_check.ts MODEL OUT_DIR");
await Deno.mkdir(outDir, { recursive: true });
await ready();
const { unet, info } = await loadModelFile(modelPath);
const [nx, ny, nz] = info.volume.shape;
const volume = await loadVolume(
  new URL("../../shared/data/MNI152_2009_template.nii.gz", import.meta.url).pathname,
  {
    shape: [nx, ny, nz],
    fov: "foreground",
    range: info.volume.range,
  },
);
const x0 = volumeTensor(volume);
const scheduler = new DDPMScheduler(info.scheduler);
const prediction = scheduler.predictionType;
const label = prediction === "epsilon" ? "ε" : prediction === "v_prediction" ? "v" : "x0";
console.log(`| t | √ᾱ | ${label} MSE | x̂0 MSE |\n| --- | --- | --- | --- |`);
for (const t of [100, 400, 700, 950]) {
  const noise = randn(x0.shape, { seed: 5 });
  const xt = scheduler.addNoise(x0, noise, t);
  const output = noGrad(() => unet.forward(xt, [t]));
  const target = prediction === "epsilon"
    ? noise
    : prediction === "v_prediction"
    ? scheduler.getVelocity(x0, noise, t)
    : x0;
  const { prevSample, predOriginalSample } = scheduler.step(output, t, xt, { noise });
  const predictionError = await mseLoss(output, target).item();
  const x0Error = await mseLoss(predOriginalSample, x0).item();
  console.log(
    `| ${t} | ${Math.sqrt(scheduler.alphaBar(t)).toFixed(3)} | ${predictionError.toFixed(4)} | ${
      x0Error.toFixed(4)
    } |`,
  );
  await writeSlicesPng(`${outDir}/denoised_t${t}.png`, await predOriginalSample.toArray(), [nx, ny, nz], {
    window: [-1, 1],
  });
  await writeSlicesPng(`${outDir}/noisy_t${t}.png`, await xt.toArray(), [nx, ny, nz]);
  if (target !== noise && target !== x0) target.dispose();
  for (const tensor of [noise, xt, output, prevSample, predOriginalSample]) tensor.dispose();
}
x0.dispose();
unet.dispose();
