/**
 * `deno task train`: trains a 3-D DDPM U-Net on NIfTI volumes with GPU augmentation — or, with `--slots`, a
 * 2-D cDPM slice model on slices of them — then writes a voxgen model file (EMA weights + everything
 * `sample` needs), sample previews, loss.csv and loss.png.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ready } from "../engine/device.ts";
import { writeSlicesPng } from "../io/png.ts";
import { loadSafetensors } from "../io/safetensors.ts";
import { DiffusionModelUNet, type DiffusionModelUNetOptions } from "../models/unet.ts";
import { augmentedBatches, type AugmentOptions } from "../pipelines/augment.ts";
import { listNiftiFiles, loadVolume, type Volume, volumeTensor } from "../pipelines/dataset.ts";
import { saveModelFile, type VolumeInfo } from "../pipelines/modelfile.ts";
import { sliceBatches } from "../pipelines/slice_data.ts";
import { generateSliceVolumes, saveSliceModelFile, type SliceModelInfo } from "../pipelines/slice_model.ts";
import { SliceDiffusionUNet, type SliceUNetOptions } from "../models/slice_unet.ts";
import { type RunSetting, train } from "../pipelines/train.ts";
import { sample } from "../samplers/sample.ts";
import {
  DDIMScheduler,
  DDPMScheduler,
  type PredictionType,
  type SchedulerOptions,
} from "../samplers/scheduler.ts";
import type { ScheduleName } from "../samplers/schedule.ts";
import { explainResumeMismatch, numberList, numberOption } from "./options.ts";

const HELP = `Usage: deno task train --data <files|dir|glob> --out DIR [options]

Data
  --data SPEC          NIfTI files, folders or globs (repeat or comma-separate)
  --size N             cubic training grid N³ (default 32), fitted to the foreground of each volume
  --no-augment         train on the volumes as they are (default: flips, affine, elastic, bias, intensity)
Model
  --channels LIST      U-Net channels per level (default 16,32,32)
  --attention LIST     attention per level as 0/1 (default 0,0,1)
  --res-blocks N       ResnetBlocks per level (default 1)
  --groups N           GroupNorm groups (default 8)
  --head-channels N    channels per attention head (default 16)
  --slots N            train a 2-D slice model (cDPM) on N slices per example (condition + target, slices
                       along z) instead of a 3-D model; \`sample\` builds volumes from it stage by stage
Diffusion
  --schedule NAME      linear_beta | scaled_linear_beta (default) | cosine
  --beta-start X       default 0.0005 (seed 004's scaled-linear schedule)
  --beta-end X         default 0.0195
  --prediction NAME    epsilon (default) | v_prediction | sample
Training
  --steps N            optimizer steps (default 2000)
  --batch N            volumes per step (default 2)
  --accumulate N       micro-batches per step (default 1)
  --lr X               peak learning rate (default 2e-4), warm-up 100 steps, then cosine decay
  --min-lr X           final learning rate of the decay (default lr/10; = lr keeps it constant)
  --ema X              EMA decay (default 0.995; 0 disables), warmed up: step t uses min(X, (1 + t)/(10 + t))
  --seed N             seed (default 0)
  --init FILE          start from these weights (safetensors state dict)
  --checkpoint-every N default 250
Output
  --out DIR            run folder: checkpoint/, loss.csv, loss.png, model.safetensors, samples; rerunning
                       continues from its checkpoint (with the same settings; only --steps may change)
  --description TEXT   stored in the model file
  --previews N         DDIM sample previews written at the end (default 2)
`;

/** Runs the command with `args`. */
export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      data: { type: "string", multiple: true },
      out: { type: "string" },
      size: { type: "string" },
      "no-augment": { type: "boolean" },
      channels: { type: "string", default: "16,32,32" },
      attention: { type: "string", default: "0,0,1" },
      "res-blocks": { type: "string" },
      groups: { type: "string" },
      "head-channels": { type: "string" },
      slots: { type: "string" },
      schedule: { type: "string", default: "scaled_linear_beta" },
      "beta-start": { type: "string" },
      "beta-end": { type: "string" },
      prediction: { type: "string", default: "epsilon" },
      steps: { type: "string" },
      batch: { type: "string" },
      accumulate: { type: "string" },
      lr: { type: "string" },
      "min-lr": { type: "string" },
      previews: { type: "string" },
      ema: { type: "string" },
      seed: { type: "string" },
      init: { type: "string" },
      "checkpoint-every": { type: "string" },
      description: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  if (!values.data?.length) throw new Error("--data is required (NIfTI files, folders or globs).");
  if (!values.out) throw new Error("--out is required (the run folder).");
  const size = numberOption("size", values.size, 32, 8, 256, true);
  const channels = numberList("channels", values.channels!);
  const attention = numberList("attention", values.attention!).map((v) => v !== 0);
  if (attention.length !== channels.length) {
    throw new Error(
      `--attention has ${attention.length} entries for ${channels.length} levels of --channels.`,
    );
  }
  if (size % 2 ** (channels.length - 1) !== 0) {
    throw new Error(
      `--size ${size} must be divisible by 2^${channels.length - 1} for ${channels.length} U-Net levels.`,
    );
  }
  const steps = numberOption("steps", values.steps, 2000, 1, 1e7, true);
  const lr = numberOption("lr", values.lr, 2e-4, 0, 1);
  const previews = numberOption("previews", values.previews, 2, 0, 64, true);
  const batch = numberOption("batch", values.batch, 2, 1, 64, true);
  const seed = numberOption("seed", values.seed, 0, 0, 2 ** 31, true);
  const schedulerOptions: SchedulerOptions = {
    numTrainTimesteps: 1000,
    schedule: values.schedule as ScheduleName,
    betaStart: numberOption("beta-start", values["beta-start"], 0.0005, 0, 1),
    betaEnd: numberOption("beta-end", values["beta-end"], 0.0195, 0, 1),
    predictionType: values.prediction as PredictionType,
    clipSample: true,
  };
  const scheduler = new DDPMScheduler(schedulerOptions);
  const unetOptions: DiffusionModelUNetOptions = {
    spatialDims: 3,
    inChannels: 1,
    outChannels: 1,
    channels,
    attentionLevels: attention,
    numResBlocks: numberOption("res-blocks", values["res-blocks"], 1, 1, 8, true),
    normNumGroups: numberOption("groups", values.groups, 8, 1, 64, true),
    numHeadChannels: numberOption("head-channels", values["head-channels"], 16, 1, 1024, true),
    seed,
  };

  const slots = values.slots === undefined ? null : numberOption("slots", values.slots, 8, 2, 64, true);
  const sliceOptions: SliceUNetOptions = {
    inChannels: 1,
    channels,
    attentionLevels: attention,
    numResBlocks: unetOptions.numResBlocks as number,
    normNumGroups: unetOptions.normNumGroups,
    numHeadChannels: unetOptions.numHeadChannels as number,
    seed,
  };

  const device = await ready();
  const files = await listNiftiFiles(values.data.flatMap((d) => d.split(",")));
  console.error(`training on ${files.length} volume(s) at ${size}³ on ${device.adapter}`);
  const volumes: Volume[] = [];
  for (const f of files) {
    volumes.push(await loadVolume(f, { shape: [size, size, size], fov: "foreground", range: [-1, 1] }));
  }
  const tensors = volumes.map(volumeTensor);
  const unet = slots ? new SliceDiffusionUNet(sliceOptions) : new DiffusionModelUNet(unetOptions);
  if (values.init) unet.loadStateDict(await loadSafetensors(values.init));
  console.error(`U-Net: ${unet.numParameters().toLocaleString()} parameters`);
  const augmentOptions: AugmentOptions | null = values["no-augment"] ? null : {};
  const volumeBatches = augmentedBatches(tensors, { batch, seed, augment: augmentOptions });
  const data = slots ? sliceBatches(volumeBatches, slots, seed) : volumeBatches;
  // With train's own (lr, EMA, seed, schedule…), what a resumed run must share with its checkpoint.
  const settings: Record<string, RunSetting> = {
    data: await Promise.all(files.map((f) => Deno.realPath(f))),
    size,
    "no-augment": values["no-augment"] ?? false,
    channels,
    attention: attention.map(Number),
    "res-blocks": unetOptions.numResBlocks!,
    groups: unetOptions.normNumGroups!,
    "head-channels": unetOptions.numHeadChannels!,
    init: values.init ? await Deno.realPath(values.init) : null,
    batch,
    // Only slice models record it, so 3-D checkpoints made before the option still resume.
    ...(slots ? { slots } : {}),
  };
  const result = await train(unet, scheduler, data, {
    steps,
    lr,
    // Unset, train's default lr/10 applies (and is recorded as that rule).
    minLr: values["min-lr"] === undefined ? undefined : numberOption("min-lr", values["min-lr"], 0, 0, 1),
    warmupSteps: 100,
    emaDecay: numberOption("ema", values.ema, 0.995, 0, 1),
    gradAccumulation: numberOption("accumulate", values.accumulate, 1, 1, 64, true),
    seed,
    outDir: values.out,
    checkpointEvery: numberOption("checkpoint-every", values["checkpoint-every"], 250, 1, 1e7, true),
    settings,
  }).catch((error) => {
    // The run stops here: free what it holds (matters when main runs in-process, e.g. in tests).
    for (const t of tensors) t.dispose();
    unet.dispose();
    throw explainResumeMismatch(error, settings, {
      predictionType: "--prediction",
      noiseSchedule: "--schedule/--beta-start/--beta-end",
    }, "another --out folder");
  });
  console.error(
    `trained ${result.step} steps in ${result.seconds.toFixed(0)} s; final loss (mean of last 50) ${
      result.finalLoss.toFixed(4)
    }`,
  );

  // The model file holds the EMA weights.
  const weights = await loadSafetensors(result.weightsPath);
  const grid = volumes[0];
  const modelPath = `${values.out.replace(/\/$/, "")}/model.safetensors`;
  const volumeInfo: VolumeInfo = { shape: [size, size, size], affine: grid.affine, range: [-1, 1] };
  const description = values.description ??
    `${slots ? `cDPM slice model (${slots} slots)` : "DDPM"} trained by voxgen on ${
        files.map((f) => f.split("/").pop()).join(", ")
      } (${augmentOptions ? "augmented" : "as is"}), ` +
      `${result.step} steps, batch ${batch}, ${size}³`;
  const sliceInfo: SliceModelInfo | null = slots
    ? { network: sliceOptions, slots, scheduler: schedulerOptions, volume: volumeInfo, description }
    : null;
  if (sliceInfo) await saveSliceModelFile(modelPath, weights, sliceInfo);
  else {await saveModelFile(modelPath, weights, {
      unet: unetOptions,
      scheduler: schedulerOptions,
      volume: volumeInfo,
      description,
    });}
  for (const t of weights.values()) t.dispose();
  console.log(`wrote ${modelPath}`);

  // Previews from the trained (EMA) model: DDIM samples.
  const ema = await loadSafetensors(result.weightsPath);
  unet.loadStateDict(ema);
  for (const t of ema.values()) t.dispose();
  unet.eval();
  for (let s = 0; s < previews; s++) {
    const ddim = new DDIMScheduler(schedulerOptions);
    const x = unet instanceof SliceDiffusionUNet
      ? await generateSliceVolumes({ net: unet, info: sliceInfo! }, ddim, { steps: 50, seed: s })
      : await sample((xt, t) => unet.forward(xt, t), ddim, {
        shape: [1, 1, size, size, size],
        steps: 50,
        seed: s,
      });
    const path = `${values.out.replace(/\/$/, "")}/sample_${s}.png`;
    await writeSlicesPng(path, await x.toArray(), [size, size, size], { window: [-1, 1] });
    x.dispose();
    console.log(`wrote ${path}`);
  }
  for (const t of tensors) t.dispose();
  unet.dispose();
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    console.error(`train: ${(error as Error).message}`);
    Deno.exit(1);
  }
}
