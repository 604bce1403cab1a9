/**
 * Training a tiny 3-D diffusion model (DDPM) with the library API: load a NIfTI volume onto a 16³ grid,
 * train a two-level U-Net for a few steps with `train()`, and save a model file that `deno task sample`
 * (or examples/sample_from_model.ts) can sample from.
 *
 *     deno run -A examples/train_small_model.ts [NIFTI] [OUT_DIR] [--steps N]
 *
 * NIFTI defaults to the MNI152 template in ../shared/data, OUT_DIR to `example_output/`. A few steps only
 * show the mechanics; `deno task train` adds augmentation, several volumes, EMA and previews.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  DDPMScheduler,
  DiffusionModelUNet,
  type DiffusionModelUNetOptions,
  ready,
  type SchedulerOptions,
} from "@voxgen/voxgen";
import { pathOrUrl, saveModelFile } from "@voxgen/voxgen/files";
import { loadVolume, train, volumeTensor } from "@voxgen/voxgen/pipelines";

const DEFAULT_DATA = pathOrUrl(new URL("../../shared/data/MNI152_2009_template.nii.gz", import.meta.url));

/** Trains the model; returns the model file's path and the mean loss of the last steps. */
export async function main(args: string[]): Promise<{ model: string; finalLoss: number }> {
  const { positionals, values } = parseArgs({
    args,
    options: { steps: { type: "string", default: "20" } },
    allowPositionals: true,
  });
  const [dataPath = DEFAULT_DATA, outDir = "example_output"] = positionals;
  await ready();

  // The volume, resampled to 16³ around its foreground, with intensities scaled to [-1, 1].
  const size = 16;
  const volume = await loadVolume(dataPath, { shape: [size, size, size], fov: "foreground", range: [-1, 1] });

  const unetOptions: DiffusionModelUNetOptions = {
    spatialDims: 3,
    inChannels: 1,
    outChannels: 1,
    channels: [8, 8],
    attentionLevels: [false, false],
    numResBlocks: 1,
    normNumGroups: 4,
    seed: 0,
  };
  const schedulerOptions: SchedulerOptions = { numTrainTimesteps: 1000, schedule: "scaled_linear_beta" };
  const unet = new DiffusionModelUNet(unetOptions);
  console.log(`U-Net: ${unet.numParameters().toLocaleString("en-US")} parameters`);

  // Every step trains on the same volume (a fresh tensor each time: `train` disposes the batches it is given).
  const result = await train(
    unet,
    new DDPMScheduler(schedulerOptions),
    () => ({ x0: volumeTensor(volume) }),
    {
      steps: Number(values.steps),
      lr: 1e-3,
      warmupSteps: 0,
      emaDecay: 0, // too few steps for EMA weights to mean anything
      outDir: `${outDir}/run`, // checkpoint, loss.csv and loss.png
      resume: false,
      progress: false,
      onStep: ({ step, steps, loss }) => console.log(`  step ${step}/${steps}: loss ${loss.toFixed(4)}`),
    },
  );

  // The model file: the weights plus everything needed to sample (U-Net options, schedule, geometry).
  const model = `${outDir}/model.safetensors`;
  await saveModelFile(model, unet.stateDict(), {
    unet: unetOptions,
    scheduler: schedulerOptions,
    volume: { shape: volume.shape, affine: volume.affine, range: [-1, 1] },
    description: `examples/train_small_model.ts: ${result.step} steps on ${dataPath.split("/").pop()}`,
  });
  unet.dispose();
  console.log(`wrote ${model} (final loss ${result.finalLoss.toFixed(4)})`);
  return { model, finalLoss: result.finalLoss };
}

if (import.meta.main) await main(Deno.args);
