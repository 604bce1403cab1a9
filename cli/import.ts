/**
 * `deno task cli import --monai CHECKPOINT.pt --config CONFIG.json --out MODEL.safetensors`: turns a MONAI
 * `DiffusionModelUNet` checkpoint written by PyTorch's `torch.save` into a voxgen model file, reading the
 * pickle with a restricted unpickler (tensors and plain containers only; nothing in the file is executed).
 * A MONAI `ControlNet` checkpoint (a config with `conditioning_embedding_*` arguments) becomes a voxgen
 * control file instead, bound to the voxgen model file given with `--base` (the U-Net it steers), and a
 * MONAI `AutoencoderKL` checkpoint (a config with `latent_channels`) an autoencoder file for latent diffusion.
 *
 * CONFIG.json holds the network's constructor arguments as MONAI takes them (snake_case), either alone or as
 * `{"network": {...}, "scheduler": {...}, "volume": {...}}` with the noise scheduler's arguments (MONAI's
 * names: `num_train_timesteps`, `schedule`, `beta_start`, `beta_end`, `prediction_type`, `clip_sample`, …)
 * and the volume geometry (`shape`, `spacing`, `range`). Flags override the file.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ready } from "../engine/device.ts";
import { tensor } from "../engine/ops/create.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { Affine } from "../io/nifti.ts";
import { findStateDict, readTorchCheckpoint } from "../io/torch_checkpoint.ts";
import {
  convertGenerativeStateDict,
  DiffusionModelUNet,
  type DiffusionModelUNetOptions,
  unetOptionsFromMonai,
} from "../models/unet.ts";
import { loadModelFile, type ModelInfo, saveModelFile } from "../pipelines/modelfile.ts";
import { saveControlFile } from "../pipelines/control.ts";
import { ControlNet, controlNetOptionsFromMonai } from "../models/controlnet.ts";
import {
  AutoencoderKL,
  autoencoderOptionsFromMonai,
  convertGenerativeAutoencoderStateDict,
} from "../models/autoencoder.ts";
import { saveAutoencoderFile } from "../pipelines/latent_modelfile.ts";
import type { VolumeInfo } from "../pipelines/generate.ts";
import { modelHash } from "../adapters/hash.ts";
import type { PredictionType, SchedulerOptions } from "../samplers/scheduler.ts";
import { numberList } from "./options.ts";

const HELP = `Usage: deno task cli import --monai CHECKPOINT.pt --config CONFIG.json --out MODEL.safetensors

  --monai FILE      a MONAI DiffusionModelUNet checkpoint written by torch.save (zip or legacy format);
                    only tensors and plain containers are accepted, any other pickled object is refused
  --config FILE     JSON: the DiffusionModelUNet arguments (snake_case, as in MONAI), or
                    {"network": {...}, "scheduler": {...}, "volume": {"shape", "spacing", "range"}}
                    (old GenerativeModels configs, with "num_channels", are converted)
  --out FILE        the voxgen model file to write (.safetensors)
  --key NAME        the checkpoint entry holding the state dict (default: the file itself, or its only
                    dict of tensors, as in {"state_dict": ..., "epoch": ...})
  --shape X,Y,Z     volume size the model generates (required unless the config has volume.shape)
  --spacing S|X,Y,Z voxel size in mm (default 1)
  --range LO,HI     intensity range the model was trained in (default -1,1)
  --prediction P    epsilon, v_prediction or sample (default: the config's, else epsilon as in MONAI)
  --description T   text stored in the model file
AutoencoderKL checkpoints (a config with latent_channels) become autoencoder files for latent diffusion
(train a latent model on one with \`deno task train --autoencoder FILE\`); --shape, --spacing and --range
give the image geometry.
ControlNet checkpoints (a config with conditioning_embedding_in_channels / _num_channels):
  --base FILE       the voxgen model file of the U-Net the ControlNet steers (required)
  --conditions L    the condition volumes' names and channels, NAME:C,NAME:C,... in channel order
                    (default: one condition "condition" with every channel)
`;

/** MONAI scheduler argument → voxgen scheduler option. */
const SCHEDULER_KEYS: Record<string, keyof SchedulerOptions> = {
  num_train_timesteps: "numTrainTimesteps",
  schedule: "schedule",
  beta_start: "betaStart",
  beta_end: "betaEnd",
  s: "cosineS",
  sig_range: "sigmoidRange",
  prediction_type: "predictionType",
  clip_sample: "clipSample",
  clip_sample_min: "clipSampleMin",
  clip_sample_max: "clipSampleMax",
};

const PREDICTIONS: readonly PredictionType[] = ["epsilon", "v_prediction", "sample"];

/** The parts of an import config. */
export interface ImportConfig {
  /** DiffusionModelUNet constructor arguments, snake_case as in MONAI. */
  network: Record<string, unknown>;
  /** Scheduler arguments, snake_case as in MONAI. */
  scheduler: Record<string, unknown>;
  /** Volume geometry: shape, spacing, range. */
  volume: { shape?: number[]; spacing?: number | number[]; range?: number[] };
}

/** Splits a config file's JSON into its parts (the network arguments alone are accepted too). */
export function parseImportConfig(json: unknown, source: string): ImportConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new Error(`--config: ${source} must hold a JSON object.`);
  }
  const object = json as Record<string, unknown>;
  const sections = ["network", "scheduler", "volume"];
  const hasSections = Object.keys(object).some((k) => sections.includes(k));
  if (hasSections) {
    const extra = Object.keys(object).filter((k) => !sections.includes(k));
    if (extra.length) {
      throw new Error(`--config: ${source} has unknown sections ${extra.join(", ")}; known: ${sections}.`);
    }
    if (!object.network) throw new Error(`--config: ${source} has no "network" section.`);
  }
  const network = { ...(hasSections ? object.network : object) as Record<string, unknown> };
  // A MONAI bundle's network definition names its class; anything but the diffusion U-Net is refused.
  const target = network._target_;
  delete network._target_;
  if (target !== undefined && !/(DiffusionModelUNet|ControlNet|AutoencoderKL)$/.test(String(target))) {
    throw new Error(
      `--config: the network is ${target}; DiffusionModelUNet, ControlNet and AutoencoderKL checkpoints are imported.`,
    );
  }
  for (const [key, value] of Object.entries(network)) {
    if (typeof value === "string" && /^[@$%]/.test(value)) {
      throw new Error(
        `--config: network argument ${key} is the bundle expression ${JSON.stringify(value)}; ` +
          "write its value instead.",
      );
    }
  }
  const scheduler = { ...(object.scheduler ?? {}) as Record<string, unknown> };
  delete scheduler._target_;
  return { network, scheduler, volume: (object.volume ?? {}) as ImportConfig["volume"] };
}

/** Voxgen scheduler options from MONAI's scheduler arguments (unknown arguments are an error). */
export function schedulerOptionsFromMonai(args: Record<string, unknown>): SchedulerOptions {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(args)) {
    const name = SCHEDULER_KEYS[key];
    if (!name) {
      throw new Error(
        `--config: unknown scheduler argument "${key}"; known: ${Object.keys(SCHEDULER_KEYS).join(", ")}.`,
      );
    }
    if (value !== null) out[name] = value;
  }
  return out as SchedulerOptions;
}

/** An affine with voxel size `spacing` whose grid centre is the world origin. */
function centredAffine(shape: number[], spacing: number[]): Affine {
  const row = (axis: number) =>
    [0, 1, 2].map((j) => (j === axis ? spacing[axis] : 0)).concat(-((shape[axis] - 1) / 2) * spacing[axis]);
  return [row(0), row(1), row(2), [0, 0, 0, 1]] as Affine;
}

function threeNumbers(option: string, value: number[], positive: boolean): [number, number, number] {
  if (value.length !== 3 || value.some((v) => !(positive ? v > 0 : true))) {
    throw new Error(`--${option}: expected three ${positive ? "positive " : ""}numbers X,Y,Z, got ${value}.`);
  }
  return value as [number, number, number];
}

/** Runs the command with `args`. */
export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      monai: { type: "string" },
      config: { type: "string" },
      out: { type: "string" },
      key: { type: "string" },
      shape: { type: "string" },
      spacing: { type: "string" },
      range: { type: "string" },
      prediction: { type: "string" },
      description: { type: "string" },
      base: { type: "string" },
      conditions: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  for (const flag of ["monai", "config", "out"] as const) {
    if (!values[flag]) throw new Error(`--${flag} is required; see --help.`);
  }
  const checkpointPath = values.monai!;
  const out = values.out!;
  if (!out.endsWith(".safetensors")) throw new Error(`--out: "${out}" must end in .safetensors.`);

  let configJson: unknown;
  try {
    configJson = JSON.parse(await Deno.readTextFile(values.config!));
  } catch (error) {
    throw new Error(`--config: cannot read ${values.config} as JSON: ${(error as Error).message}`);
  }
  const config = parseImportConfig(configJson, values.config!);
  if (
    "conditioning_embedding_in_channels" in config.network ||
    "conditioning_embedding_num_channels" in config.network
  ) {
    return await importControlNet(checkpointPath, config, values);
  }
  if ("latent_channels" in config.network) return await importAutoencoder(checkpointPath, config, values);
  const generative = "num_channels" in config.network;
  const unetOptions: DiffusionModelUNetOptions = unetOptionsFromMonai(config.network, { generative });
  if ((unetOptions.spatialDims ?? 3) !== 3) {
    throw new Error(
      `--config: spatial_dims is ${unetOptions.spatialDims}; voxgen model files hold 3-D models.`,
    );
  }
  const scheduler = schedulerOptionsFromMonai(config.scheduler);
  if (values.prediction !== undefined) {
    if (!PREDICTIONS.includes(values.prediction as PredictionType)) {
      throw new Error(`--prediction: "${values.prediction}" is not one of ${PREDICTIONS.join(", ")}.`);
    }
    scheduler.predictionType = values.prediction as PredictionType;
  }
  const volume = volumeInfo(config, values);

  const bytes = await readCheckpoint(checkpointPath);
  const raw = findStateDict(await readTorchCheckpoint(bytes, checkpointPath), values.key, checkpointPath);

  await ready();
  const unet = new DiffusionModelUNet(unetOptions);
  let state = new Map<string, Tensor>();
  try {
    for (const [name, t] of raw) {
      state.set(name, tensor(t.data instanceof Float32Array ? t.data : Float32Array.from(t.data), t.shape));
    }
    if (generative) {
      const converted = convertGenerativeStateDict(state, unet);
      for (const name of converted.dropped) state.get(name)!.dispose();
      state = converted.state;
      if (converted.dropped.length) {
        console.error(`dropped (unused by the model): ${converted.dropped.join(", ")}`);
      }
    }
    unet.loadStateDict(state);
    const info: ModelInfo = {
      unet: unetOptions,
      scheduler,
      volume,
      description: values.description ?? `imported from ${checkpointPath.split("/").pop()}`,
    };
    await saveModelFile(out, unet.stateDict(), info);
    console.log(
      `wrote ${out}: ${unet.numParameters().toLocaleString("en-US")} parameters from ${raw.size} tensors ` +
        `(${[...new Set([...raw.values()].map((t) => t.dtype))].join(", ")})`,
    );
  } finally {
    for (const t of state.values()) t.dispose();
    unet.dispose();
  }
}

/** The volume geometry of the imported model: flags first, then the config's `volume` section. */
function volumeInfo(
  config: ImportConfig,
  values: { shape?: string; spacing?: string; range?: string },
): VolumeInfo {
  const shapeList = values.shape !== undefined ? numberList("shape", values.shape) : config.volume.shape;
  if (!shapeList) throw new Error("--shape is required (or volume.shape in the config); see --help.");
  const shape = threeNumbers("shape", shapeList, true);
  if (shape.some((n) => !Number.isInteger(n))) throw new Error(`--shape: ${shape} are not whole numbers.`);
  const spacingValue = values.spacing !== undefined
    ? numberList("spacing", values.spacing)
    : config.volume.spacing ?? 1;
  const spacingList = typeof spacingValue === "number" ? [spacingValue] : spacingValue;
  const spacing = threeNumbers(
    "spacing",
    spacingList.length === 1 ? [spacingList[0], spacingList[0], spacingList[0]] : spacingList,
    true,
  );
  const range = values.range !== undefined
    ? numberList("range", values.range)
    : config.volume.range ?? [-1, 1];
  if (range.length !== 2 || !(range[0] < range[1])) {
    throw new Error(`--range: expected LO,HI with LO < HI, got ${range}.`);
  }
  return { shape, affine: centredAffine(shape, spacing), range: [range[0], range[1]] };
}

/** The ControlNet branch of {@linkcode main}: a control file for the model file `--base`. */
async function importControlNet(
  checkpointPath: string,
  config: ImportConfig,
  values: { out?: string; key?: string; base?: string; conditions?: string; description?: string },
): Promise<void> {
  if (!values.base) {
    throw new Error("--base is required for a ControlNet: the model file of the U-Net it steers.");
  }
  const options = controlNetOptionsFromMonai(config.network);
  const channels = options.conditioningEmbeddingInChannels ?? 1;
  const conditions = (values.conditions ?? `condition:${channels}`).split(",").map((part) => {
    const [name, c] = part.split(":");
    const count = c === undefined ? 1 : Number(c);
    if (!name || !Number.isInteger(count) || count < 1) {
      throw new Error(`--conditions: "${part}" is not NAME or NAME:CHANNELS.`);
    }
    return { name, count };
  });
  const total = conditions.reduce((sum, c) => sum + c.count, 0);
  if (total !== channels) {
    throw new Error(
      `--conditions: ${total} channels in all, but the ControlNet's condition embedding takes ${channels}.`,
    );
  }
  const raw = findStateDict(
    await readTorchCheckpoint(await readCheckpoint(checkpointPath), checkpointPath),
    values.key,
    checkpointPath,
  );
  await ready();
  const base = await loadModelFile(values.base);
  const module = new ControlNet(options);
  const state = new Map<string, Tensor>();
  try {
    for (const [name, t] of raw) {
      state.set(name, tensor(t.data instanceof Float32Array ? t.data : Float32Array.from(t.data), t.shape));
    }
    module.loadStateDict(state);
    await saveControlFile(values.out!, {
      module,
      info: {
        kind: "controlnet",
        options,
        conditions: conditions.map((c) => c.name),
        conditionChannels: conditions.map((c) => c.count),
        baseHash: await modelHash(base.unet),
        description: values.description ?? `imported from ${checkpointPath.split("/").pop()}`,
      },
    });
    console.log(
      `wrote ${values.out}: ControlNet, ${module.numParameters().toLocaleString("en-US")} parameters from ` +
        `${raw.size} tensors, for ${values.base}`,
    );
  } finally {
    for (const t of state.values()) t.dispose();
    module.dispose();
    base.unet.dispose();
    base.tokens?.dispose();
  }
}

/** The AutoencoderKL branch of {@linkcode main}: an autoencoder file for latent diffusion. */
async function importAutoencoder(
  checkpointPath: string,
  config: ImportConfig,
  values: {
    out?: string;
    key?: string;
    shape?: string;
    spacing?: string;
    range?: string;
    description?: string;
  },
): Promise<void> {
  const generative = "num_channels" in config.network;
  const options = autoencoderOptionsFromMonai(config.network, { generative });
  const volume = volumeInfo(config, values);
  const raw = findStateDict(
    await readTorchCheckpoint(await readCheckpoint(checkpointPath), checkpointPath),
    values.key,
    checkpointPath,
  );
  await ready();
  const autoencoder = new AutoencoderKL(options);
  let state = new Map<string, Tensor>();
  try {
    for (const [name, t] of raw) {
      state.set(name, tensor(t.data instanceof Float32Array ? t.data : Float32Array.from(t.data), t.shape));
    }
    if (generative) {
      const converted = convertGenerativeAutoencoderStateDict(state, autoencoder);
      for (const name of converted.dropped) state.get(name)!.dispose();
      state = converted.state;
    }
    autoencoder.loadStateDict(state);
    await saveAutoencoderFile(values.out!, autoencoder.stateDict(), {
      autoencoder: options,
      volume,
      description: values.description ?? `imported from ${checkpointPath.split("/").pop()}`,
    });
    console.log(
      `wrote ${values.out}: AutoencoderKL, ${
        autoencoder.numParameters().toLocaleString("en-US")
      } parameters ` +
        `from ${raw.size} tensors`,
    );
  } finally {
    for (const t of state.values()) t.dispose();
    autoencoder.dispose();
  }
}

/** The checkpoint's bytes, or a clear error naming the option. */
async function readCheckpoint(path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch {
    throw new Error(`--monai: no such file ${path}.`);
  }
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    console.error(`import: ${(error as Error).message}`);
    Deno.exit(1);
  }
}
