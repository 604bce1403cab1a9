/**
 * `deno task invert`: textual inversion — teaches a conditional model file a new concept from a few
 * volumes by learning only that concept's token vectors, and writes them as `NAME.ti.safetensors`
 * (diffusers' layout plus the base model's hash). Sample with it: `deno task sample --model BASE
 * --embedding NAME.ti.safetensors --prompt "<NAME>"`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ready } from "../engine/device.ts";
import type { Tensor } from "../engine/tensor.ts";
import { checkConceptName } from "../models/tokens.ts";
import type { AugmentOptions } from "../pipelines/augment.ts";
import { listNiftiFiles, loadVolume, volumeTensor } from "../pipelines/dataset.ts";
import { baseModelHash, saveEmbeddingFile } from "../pipelines/embedding.ts";
import { invertConcept } from "../pipelines/invert.ts";
import { isManifestPath, readManifest } from "../pipelines/manifest.ts";
import { loadModelFile } from "../pipelines/modelfile.ts";
import { DDPMScheduler } from "../samplers/scheduler.ts";
import { explainResumeMismatch, numberOption, portablePath } from "./options.ts";

const HELP = `Usage: deno task invert --base MODEL --data <files|dir|glob|manifest.json> --name NAME [options]

  --base FILE          a voxgen model file with a token table (trained on a manifest with concepts)
  --data SPEC          the new concept's volumes: NIfTI files, folders or globs (repeat or comma-separate),
                       or a manifest .json (its files; prompts are ignored); resampled to the base model's
                       grid, fitted to the foreground
  --name NAME          the new concept's token, e.g. flair or <flair> (used in prompts as <flair>)
  --vectors N          vectors of the new token (default 8; at most the context length − 1)
  --init TOKEN         start from this concept's rows, cycled (A1111); default: the mean of every concept row
  --steps N            optimizer steps (default 500)
  --lr X               learning rate (default 5e-3, constant; AdamW, weight decay 0)
  --min-lr X           end of a cosine decay instead (default: = --lr)
  --batch N            volumes per step (default 1)
  --seed N             seed of noise, timesteps and augmentation (default 0)
  --no-augment         train on the volumes as they are (default: augmented as in \`train\`)
  --out FILE           the embedding file (default NAME.ti.safetensors)
  --run-dir DIR        checkpoint/, loss.csv, loss.png (default: --out without .safetensors + ".run"); rerunning
                       the same command continues there (only --steps may change)
  --checkpoint-every N default 250
`;

/** Runs the command with `args`. */
export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      base: { type: "string" },
      data: { type: "string", multiple: true },
      name: { type: "string" },
      vectors: { type: "string" },
      init: { type: "string" },
      steps: { type: "string" },
      lr: { type: "string" },
      "min-lr": { type: "string" },
      batch: { type: "string" },
      seed: { type: "string" },
      "no-augment": { type: "boolean" },
      out: { type: "string" },
      "run-dir": { type: "string" },
      "checkpoint-every": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  if (!values.base) throw new Error("--base is required (a model file with a token table).");
  if (!values.data?.length) throw new Error("--data is required (the new concept's volumes).");
  if (!values.name) throw new Error("--name is required (the new concept's token, e.g. flair).");
  const name = values.name.startsWith("<") ? values.name : `<${values.name}>`;
  try {
    checkConceptName(name);
  } catch (error) {
    throw new Error(`--name: ${(error as Error).message}`);
  }
  const out = values.out ?? `${name.slice(1, -1)}.ti.safetensors`;
  if (!out.endsWith(".safetensors")) throw new Error(`--out ${out} must end in .safetensors.`);
  const vectors = numberOption("vectors", values.vectors, 8, 1, 4096, true);
  const steps = numberOption("steps", values.steps, 500, 1, 1e7, true);
  const lr = numberOption("lr", values.lr, 5e-3, 0, 10);
  const minLr = values["min-lr"] === undefined
    ? undefined
    : numberOption("min-lr", values["min-lr"], lr, 0, 10);
  const batch = numberOption("batch", values.batch, 1, 1, 64, true);
  const seed = numberOption("seed", values.seed, 0, 0, 2 ** 31, true);
  const checkpointEvery = numberOption("checkpoint-every", values["checkpoint-every"], 250, 1, 1e7, true);
  const runDir = (values["run-dir"] ?? `${out.slice(0, -".safetensors".length)}.run`).replace(/\/$/, "");
  try {
    await Deno.stat(values.base);
  } catch {
    throw new Error(`--base: no such file ${values.base}.`);
  }
  const specs = values.data.flatMap((d) => d.split(",")).filter(Boolean);
  const files = specs.length === 1 && isManifestPath(specs[0])
    ? (await readManifest(specs[0])).items.map((i) => i.file)
    : await listNiftiFiles(specs);
  if (files.length === 0) throw new Error(`--data: no NIfTI files (.nii, .nii.gz) in ${specs.join(", ")}.`);

  const device = await ready();
  const model = await loadModelFile(values.base);
  const volumes: Tensor[] = [];
  try {
    if (!model.tokens) {
      throw new Error(
        `--base ${values.base} has no token table; textual inversion needs a model trained on concepts ` +
          "(deno task train --data MANIFEST.json).",
      );
    }
    if (values.init !== undefined) {
      try {
        model.tokens.checkTokens([values.init]);
      } catch (error) {
        throw new Error(`--init: ${(error as Error).message}`);
      }
    }
    const hash = await baseModelHash(model.unet, model.tokens);
    const { shape, range } = model.info.volume;
    console.error(
      `inverting ${name} (${vectors} vectors × ${model.tokens.dim}) from ${files.length} volume(s) at ` +
        `${shape.join("×")} on ${device.adapter}; run folder ${runDir}`,
    );
    for (const f of files) {
      volumes.push(volumeTensor(await loadVolume(f, { shape, fov: "foreground", range })));
    }
    const augment: AugmentOptions | null = values["no-augment"] ? null : { range };
    const settings = {
      base: hash,
      data: await Promise.all(files.map((f) => portablePath(f))),
      "no-augment": values["no-augment"] ?? false,
    };
    const { vectors: learned, result } = await invertConcept(
      model,
      new DDPMScheduler(model.info.scheduler),
      volumes,
      {
        name,
        vectors,
        init: values.init,
        steps,
        lr,
        minLr,
        batch,
        seed,
        augment,
        outDir: runDir,
        checkpointEvery,
        settings,
      },
    ).catch((error) => {
      throw explainResumeMismatch(error, { ...settings, name, vectors, init: values.init ?? null, batch }, {
        base: "--base (hash of its weights)",
        minLr: "--min-lr",
      }, "another --run-dir (or --out)");
    });
    try {
      await saveEmbeddingFile(out, learned, {
        name,
        numVectors: vectors,
        dim: model.tokens.dim,
        contextLength: model.tokens.contextLength,
        baseModelHash: hash,
        init: values.init ?? "mean",
        steps: result.step,
        lr,
      });
    } finally {
      learned.dispose();
    }
    console.error(
      `inverted ${result.step} steps in ${result.seconds.toFixed(0)} s; final loss (mean of last 50) ${
        result.finalLoss.toFixed(4)
      }`,
    );
    console.log(`wrote ${out}`);
  } finally {
    model.unet.dispose();
    model.tokens?.dispose();
    for (const t of volumes) t.dispose();
  }
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    console.error(`invert: ${(error as Error).message}`);
    Deno.exit(1);
  }
}
