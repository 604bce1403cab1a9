/**
 * `deno task sample`: generates volumes from a voxgen model file (by default the embedded demo model) and
 * writes them as NIfTI with a PNG preview of the orthogonal mid-slices. Adapters written by `finetune` can be
 * blended in, each with its own weight.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { loadAdapters, modelHash } from "../adapters/mod.ts";
import { ready } from "../engine/device.ts";
import { scope } from "../engine/memory.ts";
import { map } from "../engine/ops/map.ts";
import { writeNifti } from "../io/nifti.ts";
import { writeSlicesPng } from "../io/png.ts";
import type { DiffusionModelUNet } from "../models/unet.ts";
import { loadModelFile, type VolumeInfo } from "../pipelines/modelfile.ts";
import { generateSliceVolumes, isSliceModelFile, loadSliceModelFile } from "../pipelines/slice_model.ts";
import type { Tensor } from "../engine/tensor.ts";
import { sample } from "../samplers/sample.ts";
import {
  DDIMScheduler,
  DDPMScheduler,
  EulerAncestralScheduler,
  type Scheduler,
} from "../samplers/scheduler.ts";
import { numberOption } from "./options.ts";
import { Progress } from "../io/progress.ts";

/** Path of the embedded default model. */
export const DEFAULT_MODEL: string =
  new URL("../models/default/brain32.safetensors", import.meta.url).pathname;

const HELP = `Usage: deno task sample [options]

  --model FILE      voxgen model file (default: the embedded demo model, models/default/brain32.safetensors)
  --adapter FILE[:W]
                    an adapter written by \`deno task finetune\` for this model, merged with weight W
                    (default 1; 0 = the base model); repeat to blend several
  --sampler NAME    ddim (default), ddpm or euler-a (Euler ancestral; "euler" is accepted too)
  --steps N         sampling steps (default 50)
  --eta X           DDIM η (default 0)
  --seed N          random seed (default 0)
  --batch N         number of volumes (default 1)
  --depth N         slices per volume, for slice models (cDPM; default: the training depth); they are
                    built stage by stage
  --out FILE        output NIfTI (.nii or .nii.gz; default sample.nii.gz); batches get _0, _1, … suffixes
  --png FILE        preview image (default: the output name with .png)
`;

/** The samplers `--sampler` accepts; `euler` is also accepted, as an alias of `euler-a`. */
export const SAMPLERS: readonly string[] = ["ddim", "ddpm", "euler-a"];

function unknownSampler(name: string): Error {
  return new Error(`--sampler: "${name}" is not one of ${SAMPLERS.join(", ")}.`);
}

/**
 * Builds a scheduler by name from the model's schedule: `ddpm`, `ddim`, or `euler-a` (Euler ancestral;
 * `euler` is kept as an alias for it, the name the server API uses).
 */
export function makeScheduler(name: string, opts: ConstructorParameters<typeof DDPMScheduler>[0]): Scheduler {
  switch (name) {
    case "ddpm":
      return new DDPMScheduler(opts);
    case "ddim":
      return new DDIMScheduler(opts);
    case "euler-a":
    case "euler":
      return new EulerAncestralScheduler(opts);
    default:
      throw unknownSampler(name);
  }
}

/** An adapter file and the weight its update is merged with. */
export interface AdapterSpec {
  /** The adapter file. */
  path: string;
  /** Scale of its update (1 = as trained). */
  weight: number;
}

/** Parses `FILE` or `FILE:WEIGHT` (the part after the last colon is the weight when it is a number). */
export function parseAdapterSpec(spec: string): AdapterSpec {
  const colon = spec.lastIndexOf(":");
  const suffix = colon >= 0 ? spec.slice(colon + 1) : "";
  if (colon === spec.length - 1) {
    throw new Error(`--adapter: "${spec}" ends in ":"; write FILE or FILE:WEIGHT.`);
  }
  if (colon > 0 && /^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(suffix)) {
    return { path: spec.slice(0, colon), weight: Number(suffix) };
  }
  if (spec === "") throw new Error("--adapter: empty file name.");
  return { path: spec, weight: 1 };
}

/**
 * Bakes adapters into `unet`: each is loaded onto the base weights (checked against the hash taken before the
 * first one changed them), merged with its weight and removed again, so the next one finds plain layers.
 */
export async function applyAdapters(
  unet: DiffusionModelUNet,
  adapters: readonly AdapterSpec[],
): Promise<void> {
  if (adapters.length === 0) return;
  const baseHash = await modelHash(unet);
  for (const { path, weight } of adapters) {
    const set = await loadAdapters(unet, path, { baseHash });
    console.error(
      `adapter ${path}: ${set.info.kind} rank ${set.info.rank}, ${set.layers.size} layers, weight ${weight}`,
    );
    set.merge(weight);
    set.remove();
  }
}

/** Runs the command with `args`. */
export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: "string" },
      adapter: { type: "string", multiple: true },
      sampler: { type: "string", default: "ddim" },
      steps: { type: "string" },
      eta: { type: "string" },
      seed: { type: "string" },
      batch: { type: "string" },
      depth: { type: "string" },
      out: { type: "string", default: "sample.nii.gz" },
      png: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  const out = values.out!;
  if (!out.endsWith(".nii") && !out.endsWith(".nii.gz")) {
    throw new Error(`--out: "${out}" must end in .nii or .nii.gz.`);
  }
  const steps = numberOption("steps", values.steps, 50, 1, 1000, true);
  const seed = numberOption("seed", values.seed, 0, 0, 2 ** 53 - 1, true);
  const batch = numberOption("batch", values.batch, 1, 1, 64, true);
  const eta = numberOption("eta", values.eta, 0, 0, 1);
  // Checked here, before the model is loaded, so a typo fails at once.
  if (!SAMPLERS.includes(values.sampler!) && values.sampler !== "euler") {
    throw unknownSampler(values.sampler!);
  }
  const modelPath = values.model ?? DEFAULT_MODEL;
  const adapters = (values.adapter ?? []).map(parseAdapterSpec);
  try {
    await Deno.stat(modelPath);
  } catch {
    throw new Error(
      modelPath === DEFAULT_MODEL
        ? `The embedded default model ${modelPath} is missing; train one with \`deno task train-default\`.`
        : `--model: no such file ${modelPath}.`,
    );
  }
  for (const { path } of adapters) {
    try {
      await Deno.stat(path);
    } catch {
      throw new Error(`--adapter: no such file ${path}.`);
    }
  }
  const device = await ready();
  const write = (x: Tensor, volume: VolumeInfo) =>
    writeSamples(x, volume, { out, png: values.png, seed, batch });
  if (await isSliceModelFile(modelPath)) {
    if (adapters.length > 0) throw new Error("--adapter: adapters apply to 3-D models, not to slice models.");
    const model = await loadSliceModelFile(modelPath);
    try {
      const [nx, ny, nz] = model.info.volume.shape;
      const depth = numberOption("depth", values.depth, nz, 1, 4096, true);
      const scheduler = makeScheduler(values.sampler!, { ...model.info.scheduler });
      console.error(
        `slice model ${modelPath}: ${model.net.numParameters().toLocaleString()} parameters, ${model.info.slots} ` +
          `slots; ${depth} slices; ${device.adapter}`,
      );
      let progress: Progress | null = null;
      const x = await generateSliceVolumes(model, scheduler, {
        volumes: batch,
        depth,
        steps,
        seed,
        eta,
        onProgress: (p) => {
          progress ??= new Progress(`sampling (${values.sampler}, seed ${seed})`, p.stages * p.steps);
          progress.update((p.stage - 1) * p.steps + p.step, `stage ${p.stage}/${p.stages}`);
        },
      });
      await write(x, { ...model.info.volume, shape: [nx, ny, depth] });
    } finally {
      model.net.dispose();
    }
    return;
  }
  if (values.depth !== undefined) throw new Error("--depth applies to slice models only.");
  const { unet, info } = await loadModelFile(modelPath);
  try {
    await applyAdapters(unet, adapters);
    const scheduler = makeScheduler(values.sampler!, { ...info.scheduler });
    const [nx, ny, nz] = info.volume.shape;
    const channels = unet.config.inChannels;
    console.error(
      `model ${modelPath}: ${unet.numParameters().toLocaleString()} parameters; ${device.adapter}`,
    );
    const progress = new Progress(`sampling (${values.sampler}, seed ${seed})`, steps);
    const x = await sample((xt, t) => unet.forward(xt, t), scheduler, {
      shape: [batch, channels, nz, ny, nx],
      steps,
      seed,
      eta,
      onProgress: (p) => progress.update(p.step),
    });
    await write(x, info.volume);
  } finally {
    unet.dispose();
  }
}

/**
 * Writes the volumes x [B, C, nz, ny, nx] (disposed here) as NIfTI files with PNG previews, clamped to the
 * model's intensity range; a batch gets _0, _1, … suffixes.
 */
async function writeSamples(
  x: Tensor,
  volume: VolumeInfo,
  opts: { out: string; png?: string; seed: number; batch: number },
): Promise<void> {
  const [nx, ny, nz] = volume.shape;
  const channels = x.shape[1];
  // Bring samples back to the trained intensity range (x̂0 is clipped there by the scheduler already).
  const [lo, hi] = volume.range;
  const clipped = scope(() => map("clamp", "min(max(a, s0), s1)", [x], [lo, hi]));
  x.dispose();
  const values3d = await clipped.toArray();
  clipped.dispose();
  const voxels = nx * ny * nz * channels;
  for (let b = 0; b < opts.batch; b++) {
    const data = values3d.subarray(b * voxels, b * voxels + nx * ny * nz);
    const name = opts.batch === 1 ? opts.out : opts.out.replace(/(\.nii(\.gz)?)$/, `_${b}$1`);
    await writeNifti(name, { data, shape: [nx, ny, nz], affine: volume.affine }, {
      description: `voxgen sample seed ${opts.seed}`,
    });
    const png = opts.png && opts.batch === 1 ? opts.png : name.replace(/\.nii(\.gz)?$/, ".png");
    await writeSlicesPng(png, data, [nx, ny, nz], { window: [lo, hi] });
    console.log(`wrote ${name} and ${png}`);
  }
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    console.error(`sample: ${(error as Error).message}`);
    Deno.exit(1);
  }
}
