/**
 * Sampling from a voxgen model file, step by step: load the model, run a few DDIM steps from seeded noise,
 * and write the volume as NIfTI with a PNG of its three orthogonal middle slices.
 *
 *     deno run -A examples/sample_from_model.ts [MODEL] [OUT_DIR] [--steps N] [--seed N]
 *
 * MODEL defaults to the embedded demo model (models/default/brain32.safetensors), OUT_DIR to
 * `example_output/`. `deno task sample` does the same with more options (samplers, batches, adapters).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { DDIMScheduler, ready, sample } from "@voxgen/voxgen";
import { DEFAULT_MODEL, loadModelFile, writeNifti, writeSlicesPng } from "@voxgen/voxgen/files";

/** Samples one volume; returns the paths of the NIfTI file and the PNG preview it wrote. */
export async function main(args: string[]): Promise<{ nifti: string; png: string }> {
  const { positionals, values } = parseArgs({
    args,
    options: { steps: { type: "string", default: "10" }, seed: { type: "string", default: "0" } },
    allowPositionals: true,
  });
  const [modelPath = DEFAULT_MODEL, outDir = "example_output"] = positionals;

  await ready(); // acquire the WebGPU device
  const { unet, info } = await loadModelFile(modelPath);
  console.log(`${modelPath}: ${unet.numParameters().toLocaleString("en-US")} parameters`);

  // The model file records the noise schedule it was trained with; DDIM can skip most of its timesteps.
  const scheduler = new DDIMScheduler(info.scheduler);
  const [nx, ny, nz] = info.volume.shape;
  const x = await sample((xt, t) => unet.forward(xt, t), scheduler, {
    shape: [1, unet.config.inChannels, nz, ny, nx], // tensors are [N, C, D, H, W] with W = x
    steps: Number(values.steps),
    seed: Number(values.seed),
    onProgress: ({ step, total }) => console.log(`  step ${step}/${total}`),
  });
  // Back to the CPU, clipped to the intensity range the model was trained in.
  const [lo, hi] = info.volume.range;
  const volume = (await x.toArray()).subarray(0, nx * ny * nz).map((v) => Math.min(hi, Math.max(lo, v)));
  x.dispose();
  unet.dispose();

  await Deno.mkdir(outDir, { recursive: true });
  const nifti = `${outDir}/sample.nii.gz`;
  const png = `${outDir}/sample.png`;
  await writeNifti(nifti, { data: volume, shape: [nx, ny, nz], affine: info.volume.affine });
  await writeSlicesPng(png, volume, [nx, ny, nz], { window: [lo, hi] });
  console.log(`wrote ${nifti} and ${png}`);
  return { nifti, png };
}

if (import.meta.main) await main(Deno.args);
