/**
 * `deno task train`: trains a 3-D DDPM U-Net on NIfTI volumes with GPU augmentation (or, with `--slots`, a
 * 2-D cDPM slice model on slices of them; with `--independent-slices`, that model without slice attention;
 * with `--slab`, the 3-D U-Net on z-slabs of them), then writes a voxgen model file (EMA weights + everything
 * `sample` needs), sample previews, loss.csv and loss.png.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ready } from "../engine/device.ts";
import { writeSlicesPng } from "../io/png.ts";
import { loadSafetensors } from "../io/safetensors.ts";
import { DiffusionModelUNet, type DiffusionModelUNetOptions } from "../models/unet.ts";
import { augmentedBatches, type AugmentOptions, batchDraw } from "../pipelines/augment.ts";
import { listNiftiFiles, loadLabels, loadVolume, type Volume, volumeTensor } from "../pipelines/dataset.ts";
import { conditionalBatches, ConditionalNetwork } from "../pipelines/conditional.ts";
import { generate } from "../pipelines/generate.ts";
import { loadGenerator } from "../pipelines/generators.ts";
import { loadAutoencoderFile, saveLatentModelFile } from "../pipelines/latent_modelfile.ts";
import { type LatentTraining, prepareLatentTraining } from "../pipelines/latent.ts";
import { isManifestPath, type Manifest, readManifest } from "../pipelines/manifest.ts";
import { type ModelInfo, saveModelFile, TOKEN_PREFIX } from "../pipelines/modelfile.ts";
import { type RunSetting, train } from "../pipelines/train.ts";
import { sliceBatches } from "../pipelines/slice_data.ts";
import { saveSliceModelFile } from "../pipelines/slice_model.ts";
import { slabBatches } from "../pipelines/slabs.ts";
import { SliceDiffusionUNet, type SliceUNetOptions } from "../models/slice_unet.ts";
import { TokenTable, type TokenVocabulary } from "../models/tokens.ts";
import { DDPMScheduler, type PredictionType, type SchedulerOptions } from "../samplers/scheduler.ts";
import type { ScheduleName } from "../samplers/schedule.ts";
import { explainResumeMismatch, numberList, numberOption } from "./options.ts";

const HELP = `Usage: deno task train --data <files|dir|glob> --out DIR [options]

Data
  --data SPEC          NIfTI files, folders or globs (repeat or comma-separate), or one manifest .json for
                       conditional training: {"items": [{"file", "concept" | "prompt", "class", "condition"}]}
                       (paths relative to the manifest). Concepts become learned tokens (cross-attention),
                       classes class embeddings, condition volumes (masks, label maps: nearest-neighbour onto
                       each image's grid, values as they are) an extra input channel
  --size N             cubic training grid N³ (default 32), fitted to the foreground of each volume
  --no-augment         train on the volumes as they are (default: flips, affine, elastic, bias, intensity)
  --slab N             train the 3-D U-Net on random slabs of N consecutive slices along z of each (augmented)
                       volume; the model then generates slabs of size × size × N voxels (the cDPM study's
                       "3-D on slabs" model)
  --autoencoder FILE   latent diffusion: train on s·z of this frozen autoencoder (deno task train-autoencoder;
                       s = 1/std of the first batch's latents); the model file then holds both networks
Model
  --channels LIST      U-Net channels per level (default 16,32,32)
  --attention LIST     attention per level as 0/1 (default 0,0,1)
  --res-blocks N       ResnetBlocks per level (default 1)
  --groups N           GroupNorm groups (default 8)
  --head-channels N    channels per attention head (default 16)
  --slots N            train a 2-D slice model (cDPM) on N slices per example (condition + target, slices
                       along z) instead of a 3-D model; \`sample\` builds volumes from it stage by stage
  --independent-slices N
                       train the same 2-D slice model without slice attention on N random slices per volume,
                       each alone with its index (the cDPM study's "2-D independent" baseline); \`sample\`
                       generates every slice of a volume independently, in one batch
Conditioning (with a manifest)
  --uncond-prob X      condition dropout: each sample's prompt/class/condition volume is replaced by the null
                       one (empty prompt, null class, zeros) with this
                       probability (default 0.1), so that the model can be guided (--cfg)
  --vectors N          token rows per concept (default 4)
  --context-length N   tokens per context, <bos> and <pad> included (default 16)
  --token-dim N        token width = the U-Net's cross-attention width (default 64)
Diffusion
  --schedule NAME      linear_beta | scaled_linear_beta (default) | cosine
  --beta-start X       default 0.0005 (Basile et al.'s scaled-linear schedule)
  --beta-end X         default 0.0195
  --prediction NAME    v_prediction (default, as docs/models/brain32.md recommends) | epsilon | sample
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
      slab: { type: "string" },
      autoencoder: { type: "string" },
      channels: { type: "string", default: "16,32,32" },
      attention: { type: "string", default: "0,0,1" },
      "res-blocks": { type: "string" },
      groups: { type: "string" },
      "head-channels": { type: "string" },
      slots: { type: "string" },
      "independent-slices": { type: "string" },
      schedule: { type: "string", default: "scaled_linear_beta" },
      "beta-start": { type: "string" },
      "beta-end": { type: "string" },
      prediction: { type: "string", default: "v_prediction" },
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
      "uncond-prob": { type: "string" },
      vectors: { type: "string" },
      "context-length": { type: "string" },
      "token-dim": { type: "string" },
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
  // The autoencoder's latent size decides the U-Net's grid, so it loads before the other checks.
  const stage = values.autoencoder ? (await ready(), await loadAutoencoderFile(values.autoencoder)) : null;
  const ae = stage?.autoencoder;
  // The U-Net's grid: the image, or the autoencoder's latent of it.
  const grid = ae ? ae.latentShape([size, size, size])[1] : size;
  if (grid % 2 ** (channels.length - 1) !== 0) {
    throw new Error(
      `--size ${size} must be divisible by 2^${channels.length - 1} for ${channels.length} U-Net levels` +
        (ae
          ? ` (on the ${grid}³ latent: use a --size that is a multiple of ${
            ae.downsampling * 2 ** (channels.length - 1)
          }).`
          : "."),
    );
  }
  const slab = values.slab === undefined ? null : numberOption("slab", values.slab, size, 1, size, true);
  if (slab !== null && (ae || values.slots !== undefined || values["independent-slices"] !== undefined)) {
    ae?.dispose();
    throw new Error(
      "--slab trains a 3-D image model: it does not combine with --autoencoder or slice models.",
    );
  }
  if (slab !== null && slab % 2 ** (channels.length - 1) !== 0) {
    throw new Error(
      `--slab ${slab} must be divisible by 2^${channels.length - 1} for ${channels.length} U-Net levels.`,
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
    // Latents are not bounded to [-1, 1] like images.
    clipSample: !ae,
  };
  const scheduler = new DDPMScheduler(schedulerOptions);
  const unetOptions: DiffusionModelUNetOptions = {
    spatialDims: 3,
    inChannels: ae?.config.latentChannels ?? 1,
    outChannels: ae?.config.latentChannels ?? 1,
    channels,
    attentionLevels: attention,
    numResBlocks: numberOption("res-blocks", values["res-blocks"], 1, 1, 8, true),
    normNumGroups: numberOption("groups", values.groups, 8, 1, 64, true),
    numHeadChannels: numberOption("head-channels", values["head-channels"], 16, 1, 1024, true),
    seed,
  };

  const specs = values.data.flatMap((d) => d.split(","));
  const manifest = specs.some(isManifestPath) ? await readManifestSpec(specs) : null;
  if (manifest && ae) {
    ae.dispose();
    throw new Error(
      "--autoencoder with a conditional manifest: latent diffusion trains unconditional models for now; " +
        "give NIfTI files, folders or globs as --data.",
    );
  }
  if (manifest && slab !== null) {
    throw new Error("--slab trains unconditional models: give NIfTI files as --data.");
  }
  const conditioning = manifest ? conditioningOf(manifest, values) : null;
  if (conditioning?.vocabulary) {
    unetOptions.withConditioning = true;
    unetOptions.crossAttentionDim = conditioning.vocabulary.dim;
  }
  if (conditioning?.numClassEmbeds) unetOptions.numClassEmbeds = conditioning.numClassEmbeds;
  // Condition volumes are extra input channels after the image's.
  const conditionChannels = manifest?.hasConditions ? 1 : 0;
  unetOptions.inChannels = unetOptions.inChannels! + conditionChannels;
  const independent = values["independent-slices"] === undefined
    ? null
    : numberOption("independent-slices", values["independent-slices"], 8, 1, size, true);
  if (independent && values.slots !== undefined) {
    throw new Error("--slots and --independent-slices are two kinds of slice model: give one.");
  }
  const slots = independent ??
    (values.slots === undefined ? null : numberOption("slots", values.slots, 8, 2, 64, true));
  if (slots && (manifest || ae)) {
    ae?.dispose();
    throw new Error(
      "--slots, --independent-slices: slice models train unconditional image models (no manifest, no --autoencoder).",
    );
  }
  const sliceOptions: SliceUNetOptions = {
    inChannels: 1,
    channels,
    attentionLevels: attention,
    numResBlocks: unetOptions.numResBlocks as number,
    normNumGroups: unetOptions.normNumGroups,
    numHeadChannels: unetOptions.numHeadChannels as number,
    ...(independent ? { sliceAttention: false } : {}),
    seed,
  };

  const device = await ready();
  const files = manifest ? manifest.items.map((i) => i.file) : await listNiftiFiles(specs);
  console.error(`training on ${files.length} volume(s) at ${size}³ on ${device.adapter}`);
  const volumes: Volume[] = [];
  for (const f of files) {
    volumes.push(await loadVolume(f, { shape: [size, size, size], fov: "foreground", range: [-1, 1] }));
  }
  const tensors = volumes.map(volumeTensor);
  // Condition volumes (masks, label maps) on each image's grid, nearest neighbour, values as they are.
  const conditionVolumes = manifest?.hasConditions
    ? await Promise.all(manifest.items.map((item, i) => loadLabels(item.condition!, volumes[i])))
    : [];
  const conditionTensors = conditionVolumes.map(volumeTensor);
  const unet = new DiffusionModelUNet(unetOptions);
  const tokens = conditioning?.vocabulary
    ? new TokenTable(conditioning.vocabulary, { seed: seed + 1 })
    : undefined;
  const network = new ConditionalNetwork(unet, tokens, conditionChannels);
  const sliceNet = slots ? new SliceDiffusionUNet(sliceOptions) : null;
  if (values.init) {
    const init = await loadSafetensors(values.init);
    (sliceNet ?? unet).loadStateDict(new Map([...init].filter(([n]) => !n.startsWith(TOKEN_PREFIX))));
    if (tokens) {
      tokens.loadStateDict(
        new Map(
          [...init].filter(([n]) => n.startsWith(TOKEN_PREFIX)).map((
            [n, t],
          ) => [n.slice(TOKEN_PREFIX.length), t]),
        ),
      );
    }
    for (const t of init.values()) t.dispose();
  }
  console.error(
    `U-Net: ${(sliceNet ?? unet).numParameters().toLocaleString()} parameters` +
      (tokens
        ? `; token table ${tokens.numEmbeddings} × ${tokens.dim} (${
          conditioning!.vocabulary!.concepts.map((c) => c.name).join(", ")
        })`
        : "") +
      (conditioning?.numClassEmbeds ? `; ${manifest!.classes} classes` : ""),
  );
  const augmentOptions: AugmentOptions | null = values["no-augment"] ? null : {};
  const images = augmentedBatches(
    tensors,
    { batch, seed, augment: augmentOptions },
    conditionChannels ? conditionTensors : undefined,
  );
  // Latent diffusion: batches of s·z, encoded under noGrad (posteriors cached when not augmenting).
  const latent: LatentTraining | null = ae
    ? await prepareLatentTraining(ae, images, {
      seed,
      sources: augmentOptions ? undefined : tensors,
      batch,
      pick: batchDraw,
    })
    : null;
  if (latent) {
    console.error(
      `latent diffusion on ${latent.latentShape.join("×")} latents of ${values.autoencoder}; scale factor ${
        latent.scaleFactor.toPrecision(6)
      }`,
    );
  }
  const data = slots
    ? sliceBatches(images, slots, seed, { independent: independent !== null })
    : latent
    ? latent.data
    : slab !== null
    ? slabBatches(images, slab, seed)
    : manifest && conditioning
    ? conditionalBatches(images, manifest.items, {
      tokens,
      nullClass: conditioning.nullClass,
      uncondProb: conditioning.uncondProb,
      seed,
    })
    : images;
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
    ...(manifest
      ? {
        prompts: manifest.items.map((i) => i.tokens.join(" ")),
        classes: manifest.items.map((i) => i.classLabel ?? -1),
        conditions: await Promise.all(
          manifest.items.map((i) => i.condition ? Deno.realPath(i.condition) : ""),
        ),
        "uncond-prob": conditioning!.uncondProb,
        vectors: conditioning!.vocabulary?.concepts[0]?.vectors ?? null,
        "context-length": conditioning!.vocabulary?.contextLength ?? null,
        "token-dim": conditioning!.vocabulary?.dim ?? null,
      }
      : {}),
    ...(ae
      ? { autoencoder: await Deno.realPath(values.autoencoder!), scaleFactor: latent!.scaleFactor }
      : {}),
    // Only slice models record it, so 3-D checkpoints made before the option still resume.
    ...(slots && !independent ? { slots } : {}),
    ...(independent ? { "independent-slices": independent } : {}),
    ...(slab !== null ? { slab } : {}),
  };
  const result = await train(sliceNet ?? network, scheduler, data, {
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
    tokens?.dispose();
    sliceNet?.dispose();
    latent?.dispose();
    ae?.dispose();
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
  const modelPath = `${values.out.replace(/\/$/, "")}/model.safetensors`;
  const info: ModelInfo = {
    unet: unetOptions,
    scheduler: schedulerOptions,
    // A slab model generates slabs (of the volumes' grid, at no particular height).
    volume: { shape: [size, size, slab ?? size], affine: volumes[0].affine, range: [-1, 1] },
    ...(conditioning?.vocabulary ? { tokens: conditioning.vocabulary } : {}),
    ...(conditioning
      ? {
        conditioning: {
          uncondProb: conditioning.uncondProb,
          ...(conditioning.nullClass !== undefined ? { nullClass: conditioning.nullClass } : {}),
          ...(conditionChannels ? { conditionChannels } : {}),
        },
      }
      : {}),
    description: values.description ??
      `${latent ? "latent " : ""}DDPM trained by voxgen on ${
          files.map((f) => f.split("/").pop()).join(", ")
        } (${augmentOptions ? "augmented" : "as is"}), ` +
        `${result.step} steps, batch ${batch}, ${size}³${slab !== null ? `, slabs of ${slab} slices` : ""}`,
  };
  if (slots) {
    await saveSliceModelFile(modelPath, weights, {
      network: sliceOptions,
      // Trained one slot per example; it generates all the slices of a volume at once.
      slots: independent ? 1 : slots,
      scheduler: schedulerOptions,
      volume: info.volume,
      description: values.description ??
        info.description!.replace(
          /^DDPM/,
          independent
            ? `2-D independent slice model (no slice attention, ${independent} slices per volume)`
            : `cDPM slice model (${slots} slots)`,
        ),
    });
  } else if (ae && latent) {
    await saveLatentModelFile(modelPath, weights, ae.stateDict(), {
      ...info,
      autoencoder: stage!.info.autoencoder,
      scaleFactor: latent.scaleFactor,
      latentShape: latent.latentShape,
    });
  } else {
    await saveModelFile(modelPath, weights, info);
  }
  for (const t of weights.values()) t.dispose();
  console.log(`wrote ${modelPath}`);
  for (const t of [...tensors, ...conditionTensors]) t.dispose();
  unet.dispose();
  sliceNet?.dispose();
  tokens?.dispose();
  latent?.dispose();
  ae?.dispose();

  // Previews from the trained (EMA) model, through the generation pipeline: DDIM samples, one per concept
  // (or class) in turn for a conditional model.
  const model = await loadGenerator(modelPath);
  try {
    const concepts = conditioning?.vocabulary?.concepts.map((c) => c.name) ?? [];
    for (let s = 0; s < previews; s++) {
      const prompt = concepts.length ? concepts[s % concepts.length] : undefined;
      const classLabel = manifest?.classes ? s % manifest.classes : undefined;
      const condition = conditionVolumes.length
        ? conditionVolumes[s % conditionVolumes.length].data
        : undefined;
      const generated = await generate(model, {
        sampler: "ddim",
        steps: 50,
        seed: s,
        prompt,
        classLabel,
        condition,
      });
      const path = `${values.out.replace(/\/$/, "")}/sample_${s}.png`;
      await writeSlicesPng(path, generated.volumes[0], generated.shape, { window: [-1, 1] });
      console.log(`wrote ${path}${prompt ? ` (${prompt})` : ""}`);
    }
  } finally {
    model.dispose();
  }
}

/** The manifest named among the data specs (then it must be the only one). */
async function readManifestSpec(specs: string[]): Promise<Manifest> {
  if (specs.length !== 1) {
    throw new Error(`--data: a manifest (.json) must be the only data spec (got ${specs.join(", ")}).`);
  }
  const manifest = await readManifest(specs[0]);
  return manifest;
}

/** The token vocabulary, classes and dropout of a conditional run. */
function conditioningOf(
  manifest: Manifest,
  values: Record<string, string | boolean | string[] | undefined>,
): {
  vocabulary?: TokenVocabulary;
  numClassEmbeds?: number;
  nullClass?: number;
  uncondProb: number;
} {
  const uncondProb = numberOption("uncond-prob", values["uncond-prob"] as string | undefined, 0.1, 0, 1);
  const out: ReturnType<typeof conditioningOf> = { uncondProb };
  if (manifest.concepts.length > 0) {
    const contextLength = numberOption(
      "context-length",
      values["context-length"] as string | undefined,
      16,
      2,
      256,
      true,
    );
    const vectors = numberOption(
      "vectors",
      values.vectors as string | undefined,
      4,
      1,
      contextLength - 1,
      true,
    );
    const longest = Math.max(...manifest.items.map((i) => i.tokens.length));
    if (1 + longest * vectors > contextLength) {
      throw new Error(
        `--context-length ${contextLength}: a prompt of ${longest} tokens × ${vectors} vectors needs ` +
          `${1 + longest * vectors} slots (<bos> included).`,
      );
    }
    out.vocabulary = {
      contextLength,
      dim: numberOption("token-dim", values["token-dim"] as string | undefined, 64, 1, 4096, true),
      concepts: manifest.concepts.map((name) => ({ name, vectors })),
    };
  }
  if (manifest.classes > 0) {
    // The null class is one more label, learned from the dropped samples.
    out.numClassEmbeds = manifest.classes + (uncondProb > 0 ? 1 : 0);
    if (uncondProb > 0) out.nullClass = manifest.classes;
  }
  return out;
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    console.error(`train: ${(error as Error).message}`);
    Deno.exit(1);
  }
}
