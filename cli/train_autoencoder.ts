/**
 * `deno task train-autoencoder`: trains MONAI's `AutoencoderKL` on NIfTI volumes with GPU augmentation (the 3D
 * LDM tutorial's losses: L1 + KL, a patch discriminator after a warm-up), validating PSNR/SSIM on held-out
 * augmentations, then writes an autoencoder file that `deno task train --autoencoder` trains a latent
 * diffusion model on.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { noGrad } from "../engine/autograd.ts";
import { ready } from "../engine/device.ts";
import { loadSafetensors } from "../io/safetensors.ts";
import { AutoencoderKL, type AutoencoderKLOptions } from "../models/autoencoder.ts";
import { PatchDiscriminator } from "../models/discriminator.ts";
import { augment, augmentedBatches, type AugmentOptions } from "../pipelines/augment.ts";
import type { ReconstructionLoss } from "../pipelines/autoencoder_losses.ts";
import { listNiftiFiles, loadVolume, type Volume, volumeTensor } from "../pipelines/dataset.ts";
import { saveAutoencoderFile } from "../pipelines/latent_modelfile.ts";
import type { RunSetting } from "../pipelines/train.ts";
import { trainAutoencoder } from "../pipelines/train_autoencoder.ts";
import { explainResumeMismatch, numberList, numberOption, portablePath } from "./options.ts";

const HELP = `Usage: deno task train-autoencoder --data <files|dir|glob> --out DIR [options]

Data
  --data SPEC          NIfTI files, folders or globs (repeat or comma-separate)
  --size N             cubic grid N³ (default 32), fitted to the foreground of each volume
  --no-augment         train on the volumes as they are (default: flips, affine, elastic, bias, intensity)
  --validation N       held-out augmentations scored (PSNR/SSIM) and previewed at each checkpoint (default 4;
                       drawn from their own seed stream, never from the training batches' draws)
Autoencoder (MONAI AutoencoderKL)
  --channels LIST      channels per level (default 16,32,32); each level but the last halves the size
  --latent-channels N  default 3
  --res-blocks N       residual blocks per level (default 1)
  --groups N           GroupNorm groups (default 8)
  --attention LIST     attention per level as 0/1 (default: none)
  --nonlocal           residual-attention-residual blocks in encoder and decoder (default off)
  --convtranspose      upsample with learned transposed convolutions (default nearest + conv)
Losses (MONAI's 3D LDM tutorial)
  --loss NAME          l1 (default) | l2
  --kl X               KL weight (default 1e-6)
  --adversarial X      patch-GAN weight (default 0.01; 0 = no discriminator)
  --adversarial-warmup N  steps before the adversarial terms start (default steps/4)
  --disc-channels N    discriminator filters of the first layer (default 16)
  --disc-layers N      discriminator middle layers (default 3)
  (No perceptual loss: it needs pretrained LPIPS weights, which voxgen does not ship; the library API
   accepts a feature network of your own.)
Training
  --steps N            optimizer steps (default 2000)
  --batch N            volumes per step (default 1)
  --lr X               learning rate (default 1e-4), constant unless --min-lr
  --min-lr X           final learning rate of a cosine decay (default: = --lr)
  --seed N             seed (default 0)
  --init FILE          start from these autoencoder weights (safetensors state dict, MONAI names)
  --checkpoint-every N checkpoint, validation and preview every N steps (default 250)
  --gradient-checkpointing  recompute each residual block's activations in backward instead of keeping
                       them: less memory for large volumes, same gradients, about one more forward per step
Output
  --out DIR            run folder: checkpoint/, loss.csv, loss.png, validation.csv, preview_<step>.png (input
                       above its reconstruction), autoencoder.safetensors; rerunning continues from its
                       checkpoint (with the same settings; only --steps may change)
  --description TEXT   stored in the autoencoder file
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
      validation: { type: "string" },
      channels: { type: "string", default: "16,32,32" },
      "latent-channels": { type: "string" },
      "res-blocks": { type: "string" },
      groups: { type: "string" },
      attention: { type: "string" },
      nonlocal: { type: "boolean" },
      convtranspose: { type: "boolean" },
      loss: { type: "string", default: "l1" },
      kl: { type: "string" },
      adversarial: { type: "string" },
      "adversarial-warmup": { type: "string" },
      "disc-channels": { type: "string" },
      "disc-layers": { type: "string" },
      steps: { type: "string" },
      batch: { type: "string" },
      lr: { type: "string" },
      "min-lr": { type: "string" },
      seed: { type: "string" },
      init: { type: "string" },
      "checkpoint-every": { type: "string" },
      "gradient-checkpointing": { type: "boolean" },
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
  if (values.loss !== "l1" && values.loss !== "l2") {
    throw new Error(`--loss: "${values.loss}" is not l1 or l2.`);
  }
  const size = numberOption("size", values.size, 32, 8, 512, true);
  const channels = numberList("channels", values.channels!);
  const attention = values.attention
    ? numberList("attention", values.attention).map((v) => v !== 0)
    : channels.map(() => false);
  if (attention.length !== channels.length) {
    throw new Error(
      `--attention has ${attention.length} entries for ${channels.length} levels of --channels.`,
    );
  }
  if (size % 2 ** (channels.length - 1) !== 0) {
    throw new Error(
      `--size ${size} must be divisible by 2^${channels.length - 1} for ${channels.length} levels.`,
    );
  }
  const steps = numberOption("steps", values.steps, 2000, 1, 1e7, true);
  const batch = numberOption("batch", values.batch, 1, 1, 64, true);
  const seed = numberOption("seed", values.seed, 0, 0, 2 ** 31, true);
  const validationCount = numberOption("validation", values.validation, 4, 0, 256, true);
  const adversarialWeight = numberOption("adversarial", values.adversarial, 0.01, 0, 1e3);
  const aeOptions: AutoencoderKLOptions = {
    spatialDims: 3,
    inChannels: 1,
    outChannels: 1,
    channels,
    latentChannels: numberOption("latent-channels", values["latent-channels"], 3, 1, 64, true),
    numResBlocks: numberOption("res-blocks", values["res-blocks"], 1, 0, 8, true),
    normNumGroups: numberOption("groups", values.groups, 8, 1, 64, true),
    attentionLevels: attention,
    withEncoderNonlocalAttn: values.nonlocal ?? false,
    withDecoderNonlocalAttn: values.nonlocal ?? false,
    useConvtranspose: values.convtranspose ?? false,
    seed,
  };
  const discChannels = numberOption("disc-channels", values["disc-channels"], 16, 1, 512, true);
  const discLayers = numberOption("disc-layers", values["disc-layers"], 3, 1, 8, true);

  const device = await ready();
  const files = await listNiftiFiles(values.data.flatMap((d) => d.split(",")));
  console.error(`training an autoencoder on ${files.length} volume(s) at ${size}³ on ${device.adapter}`);
  const volumes: Volume[] = [];
  for (const f of files) {
    volumes.push(await loadVolume(f, { shape: [size, size, size], fov: "foreground", range: [-1, 1] }));
  }
  const tensors = volumes.map(volumeTensor);
  const ae = new AutoencoderKL(aeOptions);
  // Not a run setting (nor stored in the file): it changes memory and time, not the gradients, so a resumed
  // run may switch it.
  if (values["gradient-checkpointing"]) ae.gradientCheckpointing(true);
  if (values.init) {
    const init = await loadSafetensors(values.init);
    ae.loadStateDict(init);
    for (const t of init.values()) t.dispose();
  }
  const disc = adversarialWeight > 0
    ? new PatchDiscriminator({
      spatialDims: 3,
      channels: discChannels,
      inChannels: 1,
      numLayersD: discLayers,
      norm: "INSTANCE",
      seed: seed + 1,
    })
    : undefined;
  console.error(
    `AutoencoderKL: ${ae.numParameters().toLocaleString()} parameters, latent ${
      ae.latentShape([size, size, size]).join("×")
    }` + (disc ? `; discriminator ${disc.numParameters().toLocaleString()}` : ""),
  );
  const augmentOptions: AugmentOptions | null = values["no-augment"] ? null : {};
  const batches = augmentedBatches(tensors, { batch, seed, augment: augmentOptions });
  // Held-out volumes: augmentations from a seed stream the batches never use (their seeds are seed·2654435761
  // + k; these are seed·2654435761 + 2³¹ + i, beyond any k of a run shorter than 2³¹/7919 steps).
  const validation = Array.from({ length: validationCount }, (_, i) => {
    const source = tensors[i % tensors.length];
    return noGrad(() => augment(source, (seed * 2654435761 + 2 ** 31 + i) >>> 0, augmentOptions ?? {}).image);
  });
  const settings: Record<string, RunSetting> = {
    data: await Promise.all(files.map((f) => portablePath(f))),
    size,
    "no-augment": values["no-augment"] ?? false,
    validation: validationCount,
    channels,
    "latent-channels": aeOptions.latentChannels!,
    "res-blocks": aeOptions.numResBlocks as number,
    groups: aeOptions.normNumGroups!,
    attention: attention.map(Number),
    nonlocal: values.nonlocal ?? false,
    convtranspose: values.convtranspose ?? false,
    "disc-channels": disc ? discChannels : null,
    "disc-layers": disc ? discLayers : null,
    init: values.init ? await portablePath(values.init) : null,
    batch,
  };
  const lr = numberOption("lr", values.lr, 1e-4, 0, 1);
  const result = await trainAutoencoder(ae, (step) => batches(step, 0).x0, {
    steps,
    lr,
    minLr: values["min-lr"] === undefined ? undefined : numberOption("min-lr", values["min-lr"], lr, 0, 1),
    weights: {
      reconstruction: values.loss as ReconstructionLoss,
      kl: numberOption("kl", values.kl, 1e-6, 0, 1e3),
      adversarial: adversarialWeight,
    },
    adversarialWarmup: values["adversarial-warmup"] === undefined
      ? undefined
      : numberOption("adversarial-warmup", values["adversarial-warmup"], 0, 0, 1e7, true),
    discriminator: disc,
    seed,
    outDir: values.out,
    checkpointEvery: numberOption("checkpoint-every", values["checkpoint-every"], 250, 1, 1e7, true),
    settings,
    validation,
    range: [-1, 1],
  }).catch((error) => {
    throw explainResumeMismatch(error, settings, {
      reconstructionLoss: "--loss",
      klWeight: "--kl",
      adversarialWeight: "--adversarial",
      adversarialWarmup: "--adversarial-warmup",
      discriminatorLr: "--lr",
      warmupSteps: "--steps",
      perceptualWeight: "(perceptual loss)",
    }, "another --out folder");
  });
  const last = result.validation[result.validation.length - 1];
  console.error(
    `trained ${result.step} steps in ${result.seconds.toFixed(0)} s; final loss (mean of last 50) ${
      result.finalLoss.toFixed(4)
    }` + (last ? `; validation PSNR ${last.psnr.toFixed(2)} dB, SSIM ${last.ssim.toFixed(4)}` : ""),
  );
  const weights = await loadSafetensors(result.weightsPath);
  const path = `${values.out.replace(/\/$/, "")}/autoencoder.safetensors`;
  await saveAutoencoderFile(path, weights, {
    autoencoder: aeOptions,
    volume: { shape: [size, size, size], affine: volumes[0].affine, range: [-1, 1] },
    validation: last,
    description: values.description ??
      `AutoencoderKL trained by voxgen on ${files.map((f) => f.split("/").pop()).join(", ")} (${
        augmentOptions ? "augmented" : "as is"
      }), ${result.step} steps, batch ${batch}, ${size}³`,
  });
  for (const t of weights.values()) t.dispose();
  console.log(`wrote ${path}`);
  for (const t of [...tensors, ...validation]) t.dispose();
  ae.dispose();
  disc?.dispose();
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    console.error(`train-autoencoder: ${(error as Error).message}`);
    Deno.exit(1);
  }
}
