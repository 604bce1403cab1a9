/**
 * `deno task finetune`: fine-tunes a voxgen model file on NIfTI volumes, either with a parameter-efficient
 * adapter (LoCon, LoHa, LoKr, TenVOO-L/Q, QuanTA; writes an adapter file) or in full (writes a new model
 * file). The volumes are preprocessed to the base model's grid and augmented as in `train`; the training
 * loop's progress, loss.csv/loss.png and checkpoints go to the run folder, and rerunning the same
 * command (or one with more --steps) continues from its checkpoint; other settings are refused.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  ADAPTER_KINDS,
  type AdapterKind,
  type AdapterSet,
  injectAdapters,
  modelHash,
  trainableCount,
} from "../adapters/mod.ts";
import { noGrad } from "../engine/autograd.ts";
import { ready } from "../engine/device.ts";
import { copyInto } from "../engine/ops/map.ts";
import type { Tensor } from "../engine/tensor.ts";
import { loadSafetensors } from "../io/safetensors.ts";
import type { DiffusionModelUNet } from "../models/unet.ts";
import { augmentedBatches, type AugmentOptions } from "../pipelines/augment.ts";
import { listNiftiFiles, loadVolume, volumeTensor } from "../pipelines/dataset.ts";
import { loadModelFile, saveModelFile } from "../pipelines/modelfile.ts";
import { type RunSetting, train } from "../pipelines/train.ts";
import { DDPMScheduler } from "../samplers/scheduler.ts";
import { explainResumeMismatch, numberOption, portablePath } from "./options.ts";

/** What `--adapter` accepts: an adapter kind, or "full" for fine-tuning every parameter. */
export const FINETUNE_KINDS: readonly string[] = [...ADAPTER_KINDS, "full"];

const HELP =
  `Usage: deno task finetune --base MODEL --adapter KIND --data <files|dir|glob> --out FILE [options]

  --base FILE          voxgen model file to fine-tune (e.g. models/default/brain32.safetensors)
  --adapter KIND       ${ADAPTER_KINDS.join(" | ")} | full
                       (full trains every parameter and writes a new model file instead of an adapter)
  --rank N             adapter rank (default 4)
  --alpha X            ΔW is scaled by alpha/rank (default: rank/4 for locon/loha/lokr, rank otherwise)
  --joint              also train every layer that carries no adapter, in full (the TenVOO paper's joint fine-tuning)
  --data SPEC          NIfTI files, folders or globs (repeat or comma-separate); resampled to the base
                       model's grid, fitted to the foreground
  --no-augment         train on the volumes as they are (default: augmented as in \`train\`)
  --out FILE           the adapter (or, with full, the model) file to write (.safetensors)
  --run-dir DIR        checkpoint/, loss.csv, loss.png (default: the --out path without .safetensors + ".run");
                       rerunning the same command continues from the checkpoint there (only --steps may
                       change: a run with other settings is refused)
Training
  --steps N            optimizer steps (default 500)
  --batch N            volumes per step (default 2)
  --accumulate N       micro-batches per step (default 1)
  --lr X               peak learning rate (default 1e-4; the TenVOO paper used 5e-5 with batch 1 × 4 accumulated)
  --min-lr X           final learning rate of the cosine decay (default lr: constant)
  --warmup N           linear warm-up steps (default steps/10, at most 100)
  --ema X              EMA decay of the trained parameters (default 0.995; 0 disables), warmed up: step t
                       uses min(X, (1 + t)/(10 + t)), so short runs do not keep the initial weights
  --seed N             seed of the adapter's initial cores, the noise and the augmentation (default 0)
  --checkpoint-every N default 250
  --description TEXT   stored in the model file (full fine-tuning)
`;

/** Runs the command with `args`. */
export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      base: { type: "string" },
      adapter: { type: "string" },
      rank: { type: "string" },
      alpha: { type: "string" },
      joint: { type: "boolean" },
      data: { type: "string", multiple: true },
      "no-augment": { type: "boolean" },
      out: { type: "string" },
      "run-dir": { type: "string" },
      steps: { type: "string" },
      batch: { type: "string" },
      accumulate: { type: "string" },
      lr: { type: "string" },
      "min-lr": { type: "string" },
      warmup: { type: "string" },
      ema: { type: "string" },
      seed: { type: "string" },
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
  if (!values.base) throw new Error("--base is required: the voxgen model file to fine-tune.");
  if (!values.adapter) throw new Error(`--adapter is required: one of ${FINETUNE_KINDS.join(", ")}.`);
  if (!FINETUNE_KINDS.includes(values.adapter)) {
    throw new Error(`--adapter: "${values.adapter}" is not one of ${FINETUNE_KINDS.join(", ")}.`);
  }
  const full = values.adapter === "full";
  if (full) {
    const given = (["rank", "alpha", "joint"] as const).filter((o) => values[o] !== undefined);
    if (given.length > 0) {
      const list = given.map((o) => `--${o}`).join(", ");
      throw new Error(
        `--adapter full trains every parameter; ${list} ${given.length === 1 ? "applies" : "apply"} ` +
          "only to adapters.",
      );
    }
  }
  if (!values.data?.length) throw new Error("--data is required (NIfTI files, folders or globs).");
  if (!values.out) {
    throw new Error(`--out is required: the ${full ? "model" : "adapter"} file to write (.safetensors).`);
  }
  const out = values.out;
  if (!out.endsWith(".safetensors")) throw new Error(`--out: "${out}" must end in .safetensors.`);
  const rank = numberOption("rank", values.rank, 4, 1, 4096, true);
  const alpha = values.alpha === undefined ? undefined : numberOption("alpha", values.alpha, 0);
  const steps = numberOption("steps", values.steps, 500, 1, 1e7, true);
  const batch = numberOption("batch", values.batch, 2, 1, 64, true);
  const accumulation = numberOption("accumulate", values.accumulate, 1, 1, 64, true);
  const lr = numberOption("lr", values.lr, 1e-4, 0, 1);
  const minLr = numberOption("min-lr", values["min-lr"], lr, 0, 1);
  const warmup = numberOption("warmup", values.warmup, Math.min(100, Math.floor(steps / 10)), 0, 1e7, true);
  const emaDecay = numberOption("ema", values.ema, 0.995, 0, 1);
  const seed = numberOption("seed", values.seed, 0, 0, 2 ** 31, true);
  const checkpointEvery = numberOption("checkpoint-every", values["checkpoint-every"], 250, 1, 1e7, true);
  const runDir = (values["run-dir"] ?? `${out.slice(0, -".safetensors".length)}.run`).replace(/\/$/, "");
  try {
    await Deno.stat(values.base);
  } catch {
    throw new Error(`--base: no such file ${values.base}.`);
  }
  if (full && await samePath(out, values.base)) {
    throw new Error(`--out ${out} is the base model itself; write the fine-tuned model to another file.`);
  }
  const files = await listNiftiFiles(values.data.flatMap((d) => d.split(",")).filter(Boolean));
  if (files.length === 0) {
    throw new Error(`--data: no NIfTI files (.nii, .nii.gz) in ${values.data.join(", ")}.`);
  }

  const device = await ready();
  const { unet, info } = await loadModelFile(values.base);
  const tensors: Tensor[] = [];
  let set: AdapterSet | null = null;
  try {
    const shape = info.volume.shape;
    const range = info.volume.range;
    const baseHash = await modelHash(unet);
    const numBase = unet.numParameters();
    if (full) {
      unet.unfreeze();
      console.error(`full fine-tuning: ${numBase.toLocaleString("en-US")} trainable parameters`);
    } else {
      set = await injectAdapters(unet, {
        kind: values.adapter as AdapterKind,
        rank,
        alpha,
        jointModules: values.joint ?? false,
        seed,
        baseHash,
      });
      const trainable = trainableCount(set.info);
      const share = `${(100 * trainable / numBase).toFixed(3)}% of ${numBase.toLocaleString("en-US")}`;
      console.error(
        `${values.adapter} rank ${rank}, alpha ${set.info.alpha}: ${trainable.toLocaleString("en-US")} ` +
          `trainable parameters (${share}) on ${set.layers.size} layers`,
      );
    }
    // With train's own (lr, EMA, seed, schedule…), what a resumed run must share with its checkpoint; the
    // checkpoint holds only the trained tensors, the frozen base is rebuilt from --base and --seed.
    const settings: Record<string, RunSetting> = {
      base: baseHash,
      adapter: values.adapter,
      rank: full ? null : rank,
      // The default alpha follows --rank: stored as the rule, so a new rank is one change, not two.
      alpha: full ? null : alpha ?? "default for the rank",
      joint: values.joint ?? false,
      data: await Promise.all(files.map((f) => portablePath(f))),
      "no-augment": values["no-augment"] ?? false,
      size: shape,
      range,
      batch,
      // Defaults that follow other settings are stored as their rule: the warm-up follows --steps, which
      // may grow on resume, and a new --lr is one change, not two.
      warmupSteps: values.warmup === undefined ? "steps/10, at most 100" : warmup,
      minLr: values["min-lr"] === undefined ? "lr" : minLr,
    };

    console.error(
      `fine-tuning on ${files.length} volume(s) at ${
        shape.join("×")
      } on ${device.adapter}; run folder ${runDir}`,
    );
    for (const f of files) {
      tensors.push(volumeTensor(await loadVolume(f, { shape, fov: "foreground", range })));
    }
    const augmentOptions: AugmentOptions | null = values["no-augment"] ? null : { range };
    const data = augmentedBatches(tensors, { batch, seed, augment: augmentOptions });
    unet.train();
    const result = await train(unet, new DDPMScheduler(info.scheduler), data, {
      steps,
      lr,
      minLr,
      warmupSteps: warmup,
      emaDecay,
      gradAccumulation: accumulation,
      seed,
      outDir: runDir,
      checkpointEvery,
      // The frozen base is rebuilt from --base and --seed on resume: only the trained tensors are kept.
      trainableOnly: true,
      settings,
    }).catch((error) => {
      throw explainResumeMismatch(error, settings, {
        warmupSteps: "--warmup",
        base: "--base (hash of its weights)",
        size: "size (of the base model)",
        range: "range (of the base model)",
      }, "another --run-dir (or --out)");
    });
    unet.eval();
    console.error(
      `fine-tuned ${result.step} steps in ${result.seconds.toFixed(0)} s; final loss (mean of last 50) ${
        result.finalLoss.toFixed(4)
      }`,
    );

    // The file holds the EMA weights (or the last ones without EMA).
    await loadTrained(unet, result.weightsPath);
    if (set) {
      await set.save(out);
    } else {
      const names = files.map((f) => f.split("/").pop()).join(", ");
      await saveModelFile(out, unet.stateDict(), {
        ...info,
        description: values.description ??
          `${info.description ? `${info.description}; ` : ""}fine-tuned by voxgen on ${names} ` +
            `(${augmentOptions ? "augmented" : "as is"}), ${result.step} steps, batch ${batch}`,
      });
    }
    console.log(`wrote ${out}`);
  } finally {
    set?.remove();
    unet.dispose();
    for (const t of tensors) t.dispose();
  }
}

/** Copies the trained tensors saved at `path` into the model's trainable parameters. */
async function loadTrained(unet: DiffusionModelUNet, path: string): Promise<void> {
  const state = await loadSafetensors(path);
  try {
    noGrad(() => {
      for (const [name, t] of unet.namedParameters()) {
        if (!t.requiresGrad) continue;
        const src = state.get(name);
        if (!src) throw new Error(`${path} lacks the trained parameter "${name}".`);
        copyInto(t, src);
      }
    });
  } finally {
    for (const t of state.values()) t.dispose();
  }
}

/** Whether two paths name the same existing file. */
async function samePath(a: string, b: string): Promise<boolean> {
  try {
    return await Deno.realPath(a) === await Deno.realPath(b);
  } catch {
    return false;
  }
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    console.error(`finetune: ${(error as Error).message}`);
    Deno.exit(1);
  }
}
