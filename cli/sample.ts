/**
 * `deno task sample`: generates volumes from a voxgen model file (by default the embedded demo model) and
 * writes them as NIfTI with a PNG preview of the orthogonal mid-slices. Adapters written by `finetune` can be
 * blended in, each with its own weight, and a control module (`train-control`) steers it with condition volumes.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type AdapterSet, type AdapterSpec, mergeAdapterFiles } from "../adapters/mod.ts";
import { ready } from "../engine/device.ts";
import type { DiffusionModelUNet } from "../models/unet.ts";
import { generate } from "../pipelines/generate.ts";
import { loadGenerator, loadModelWithEmbeddings } from "../pipelines/generators.ts";
import { DEFAULT_MODEL } from "../pipelines/modelfile.ts";
import { controlledGenerator } from "../pipelines/control.ts";
import { writeVolumeFiles } from "../pipelines/output.ts";
import { findSampler, SAMPLER_REGISTRY, unknownSamplerMessage } from "../samplers/registry.ts";
import { numberOption } from "./options.ts";
import { Progress } from "../io/progress.ts";
import { readNifti } from "../io/nifti.ts";
import { parsePrompt } from "../models/prompt.ts";
import { type InpaintNormalize, prepareInpainting } from "../pipelines/inpaint.ts";
import { isUrl } from "../io/read.ts";

export { DEFAULT_MODEL, DEFAULT_MODEL_URL } from "../pipelines/modelfile.ts";
export type { AdapterSpec } from "../adapters/mod.ts";

const SAMPLER_HELP = SAMPLER_REGISTRY.map((s) =>
  `${s.name}${s.aliases.length ? ` (alias ${s.aliases.join(", ")})` : ""}: ${s.description}`
).join("\n                    ");

const HELP = `Usage: deno task sample [options]

  --model FILE      voxgen model file (default: the embedded demo model, models/default/brain32.safetensors)
  --adapter FILE[:W]
                    an adapter written by \`deno task finetune\` for this model, merged with weight W
                    (default 1; 0 = the base model); repeat to blend several
  --sampler NAME    default ${SAMPLER_REGISTRY[0].name}; one of
                    ${SAMPLER_HELP}
  --prompt TEXT     for a model with a token table: "<t1>", "<t1> <lesion>", or composable
                    "<t1>:0.25 AND <flair>:0.75" (weights multiply --cfg; negative ones push away);
                    "" (the default) is the null prompt. \`deno task info MODEL\` lists the concepts
  --cfg X           classifier-free guidance scale (default 1: plain conditional sampling, no
                    unconditional pass; the textual-inversion paper used 2)
  --class N         class label, for a class-conditional model
  --condition FILE  condition volume(s) for a model trained with them (NIfTI on the model's grid, one
                    volume per condition channel; e.g. a mask)
  --embedding FILE  a textual-inversion embedding (NAME.ti.safetensors from \`deno task invert\`, or
                    diffusers' learned_embeds.safetensors of the same width); repeat for several.
                    Its token can then be used in --prompt
  --inpaint-image FILE
                    NIfTI on the model's grid whose voxels are kept outside the mask
  --inpaint-mask FILE
                    NIfTI on the model's grid: non-zero voxels are generated
  --inpaint-normalize auto|none|percentile
                    how the image reaches the model's intensity range (default auto: none when it is
                    already inside it, e.g. a sample of this model; else percentiles as in training)
  --steps N         sampling steps (default 50)
  --eta X           DDIM η (default 0)
  --seed N          random seed (default 0)
  --batch N         number of volumes (default 1)
  --depth N         slices per volume, for slice models (cDPM; default: the training depth); they are
                    built stage by stage
  --out FILE        output NIfTI (.nii or .nii.gz; default sample.nii.gz); batches get _0, _1, … suffixes
  --png FILE        preview image (default: the output name with .png)
  --control-model FILE
                    a control module written by \`deno task train-control\` for this model (VCM or ControlNet)
  --control FILE    its condition volume (NIfTI on the grid of the volumes the model generates — for a latent
                    model too —, in the model's intensity range for image conditions); repeat once per condition of the module, in its order ("none": absent,
                    VCM only)
  --control-scale S strength of the control (default 1)
`;

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

/** The values of a condition NIfTI on the model's grid (every volume of a 4-D file: one per channel). */
function conditionValues(
  volume: { data: Float32Array; shape: readonly number[] },
  shape: readonly number[],
  path: string,
): Float32Array {
  if (volume.shape.slice(0, 3).join() !== shape.join()) {
    throw new Error(
      `--condition ${path} is ${volume.shape.join("×")}; the model generates ${shape.join("×")}.`,
    );
  }
  return volume.data;
}

/** Logs one merged adapter. */
function logAdapter({ path, weight }: AdapterSpec, set: AdapterSet): void {
  console.error(
    `adapter ${path}: ${set.info.kind} rank ${set.info.rank}, ${set.layers.size} layers, weight ${weight}`,
  );
}

/**
 * Bakes adapters into `unet` (see `mergeAdapterFiles`), logging each: for scripts that hold a bare U-Net.
 */
export async function applyAdapters(
  unet: DiffusionModelUNet,
  adapters: readonly AdapterSpec[],
): Promise<void> {
  await mergeAdapterFiles(unet, adapters, logAdapter);
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
      prompt: { type: "string" },
      cfg: { type: "string" },
      class: { type: "string" },
      embedding: { type: "string", multiple: true },
      condition: { type: "string" },
      "inpaint-image": { type: "string" },
      "inpaint-mask": { type: "string" },
      "inpaint-normalize": { type: "string" },
      out: { type: "string", default: "sample.nii.gz" },
      png: { type: "string" },
      "control-model": { type: "string" },
      control: { type: "string", multiple: true },
      "control-scale": { type: "string" },
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
  const guidanceScale = numberOption("cfg", values.cfg, 1, -100, 100);
  const classLabel = values.class === undefined
    ? undefined
    : numberOption("class", values.class, 0, 0, 2 ** 31 - 1, true);
  // The prompt's syntax is checked before anything is loaded; its tokens once the model is.
  if (values.prompt !== undefined) {
    try {
      parsePrompt(values.prompt);
    } catch (error) {
      throw new Error(`--prompt: ${(error as Error).message}`);
    }
  }
  if ((values["inpaint-image"] === undefined) !== (values["inpaint-mask"] === undefined)) {
    throw new Error("--inpaint-image and --inpaint-mask go together: give both or neither.");
  }
  const normalize = values["inpaint-normalize"] ?? "auto";
  if (!["auto", "none", "percentile"].includes(normalize)) {
    throw new Error(`--inpaint-normalize: "${normalize}" is not auto, none or percentile.`);
  }
  // Checked here, before the model is loaded, so a typo fails at once.
  const sampler = values.sampler!;
  if (!findSampler(sampler)) throw new Error(`--sampler: ${unknownSamplerMessage(sampler)}`);
  const modelPath = values.model ?? DEFAULT_MODEL;
  const adapters = (values.adapter ?? []).map(parseAdapterSpec);
  try {
    // A remote model (running from a URL) is checked when it is fetched.
    if (!isUrl(modelPath)) await Deno.stat(modelPath);
  } catch {
    throw new Error(
      modelPath === DEFAULT_MODEL
        ? `The embedded default model ${modelPath} is missing; train one with \`deno task train-default\`.`
        : `--model: no such file ${modelPath}.`,
    );
  }
  const files: Array<[string, string | undefined]> = [
    ...adapters.map(({ path }) => ["adapter", path] as [string, string]),
    ...(values.embedding ?? []).map((path) => ["embedding", path] as [string, string]),
    ["inpaint-image", values["inpaint-image"]],
    ["condition", values.condition],
    ["inpaint-mask", values["inpaint-mask"]],
  ];
  for (const [flag, path] of files) {
    if (path === undefined) continue;
    try {
      await Deno.stat(path);
    } catch {
      throw new Error(`--${flag}: no such file ${path}.`);
    }
  }
  const controlModel = values["control-model"];
  if (!controlModel && (values.control?.length || values["control-scale"] !== undefined)) {
    throw new Error("--control and --control-scale need --control-model (the control module to apply).");
  }
  if (controlModel && values.depth !== undefined) {
    throw new Error(
      "--control-model applies to whole-volume U-Net models: it cannot be combined with --depth.",
    );
  }
  if (controlModel && !values.control?.length) {
    throw new Error(
      "--control-model needs its condition volumes: --control COND.nii.gz (once per condition).",
    );
  }
  const controlScale = numberOption("control-scale", values["control-scale"], 1, -100, 100);
  const conditions = await Promise.all((values.control ?? []).map(async (path) => {
    if (path === "none") return null;
    const nii = await readNifti(path).catch((error) => {
      throw new Error(`--control: cannot read ${path}: ${(error as Error).message}`);
    });
    return { data: nii.data, shape: nii.shape, source: path };
  }));
  const device = await ready();
  const model = controlModel
    ? await loadModelWithEmbeddings(modelPath, {
      adapters,
      embeddings: values.embedding,
      onAdapter: logAdapter,
    })
      .then(({ model, vectors }) =>
        controlledGenerator(model, { file: controlModel, conditions, scale: controlScale }, vectors)
      )
    : await loadGenerator(modelPath, {
      adapters,
      embeddings: values.embedding,
      onAdapter: logAdapter,
      depth: values.depth === undefined ? undefined : numberOption("depth", values.depth, 1, 1, 4096, true),
    });
  try {
    console.error(
      `model ${modelPath}: ${model.parameterCount.toLocaleString()} parameters; ${device.adapter}`,
    );
    // A staged model (slice model) reports its steps over all stages.
    let progress: Progress | null = null;
    const startedAt = performance.now() / 1000;
    const inpaint = values["inpaint-image"] === undefined ? undefined : prepareInpainting(
      await readNifti(values["inpaint-image"]),
      await readNifti(values["inpaint-mask"]!),
      model.volume,
      { normalize: normalize as InpaintNormalize },
      {
        image: `--inpaint-image ${values["inpaint-image"]}`,
        mask: `--inpaint-mask ${values["inpaint-mask"]}`,
      },
    );
    const condition = values.condition === undefined
      ? undefined
      : conditionValues(await readNifti(values.condition), model.volume.shape, values.condition);
    const generated = await generate(model, {
      condition,
      sampler,
      steps,
      seed,
      batch,
      eta,
      guidanceScale,
      prompt: values.prompt,
      classLabel,
      inpaint,
      onProgress: (p) => {
        progress ??= new Progress(`sampling (${sampler}, seed ${seed})`, p.total, { startedAt });
        const stages = p.total / steps;
        progress.update(p.step, stages > 1 ? `stage ${Math.ceil(p.step / steps)}/${stages}` : undefined);
      },
    });
    const written = await writeVolumeFiles(generated, out, {
      png: values.png,
      description: `voxgen sample seed ${seed}`,
    });
    for (const { nifti, png } of written) console.log(`wrote ${nifti} and ${png}`);
  } finally {
    model.dispose();
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
