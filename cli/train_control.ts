/**
 * `deno task train-control`: trains a control module (VCM or ControlNet) on a frozen voxgen model with paired
 * data (an image and its tissue map, moved together by random deformations) and writes a control file. The
 * training loop's progress, loss.csv/loss.png and checkpoints go to the run folder; rerunning the same
 * command (or one with more --steps) continues from its checkpoint, other settings are refused.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { modelHash } from "../adapters/hash.ts";
import { noGrad } from "../engine/autograd.ts";
import { ready } from "../engine/device.ts";
import { copyInto } from "../engine/ops/map.ts";
import { loadSafetensors } from "../io/safetensors.ts";
import {
  CONTROL_KINDS,
  controlBatches,
  controlGeometry,
  type ControlKind,
  controlTrainingNetwork,
  createControl,
  nullConditioning,
  saveControlFile,
} from "../pipelines/control.ts";
import {
  CONDITION_CHANNELS,
  CONDITION_KINDS,
  loadTemplatePair,
  pairedBatches,
  parseConditionKinds,
} from "../pipelines/control_data.ts";
import { disposeModel, loadModelFile } from "../pipelines/modelfile.ts";
import { type RunSetting, train } from "../pipelines/train.ts";
import { DDPMScheduler } from "../samplers/scheduler.ts";
import { explainResumeMismatch, numberOption } from "./options.ts";

const HELP = `Usage: deno task train-control --kind vcm|controlnet --base MODEL --out FILE [options]

  --kind KIND          vcm | controlnet
  --base FILE          the frozen voxgen model file (e.g. models/default/brain32.safetensors), or a latent
                       model file: then the images are encoded by its frozen autoencoder and the module
                       steers the latent U-Net, its conditions staying on the image grid. A prompt or
                       class-conditional base predicts under its null prompt / null class while the module
                       learns (models with condition channels are refused)
  --data MANIFEST      JSON {"image": FILE, "labels": FILE}: an image and its tissue map (0 background,
                       1 CSF, 2 grey, 3 white); default the MNI template and its tissue map in ../shared/data
  --conditions LIST    comma-separated, in order: ${CONDITION_KINDS.join(", ")} (default ventricles)
  --pool N             distinct training pairs (fixed deformations; the paper's 10 or 50); 0 = a new
                       deformation every sample (default 0)
  --slice-every K      the slices condition keeps every K-th axial slice (default 4)
  --out FILE           the control file to write (.safetensors)
  --run-dir DIR        checkpoint/, loss.csv, loss.png (default: --out without .safetensors + ".run")
VCM
  --preset P           small (default; for 32³ pixel models) | paper (the release's sizes, 45 M parameters)
  --release-head       the release's head: InstanceNorm after γ and β, not zero-initialised
  --resize-condition   the paper's "trilinear" ablation: the condition resized to the model grid, no encoder
  --lambda X           weight of mean|γ| + mean|β| in the loss (default 1: the paper's λ = 1/(b·c·h·w·d))
Training
  --steps N            optimizer steps (default 500)
  --batch N            pairs per step (default 2)
  --lr X               peak learning rate (default 1e-4)
  --min-lr X           final learning rate of the cosine decay (default lr/10)
  --warmup N           linear warm-up steps (default steps/30, the release's share)
  --ema X              EMA decay of the module (default 0; e.g. 0.995)
  --seed N             seed of the module's weights, the deformations and the latent dropout (default 0)
  --checkpoint-every N default 100
`;

/** Runs the command with `args`. */
export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      kind: { type: "string" },
      base: { type: "string" },
      data: { type: "string" },
      conditions: { type: "string" },
      pool: { type: "string" },
      "slice-every": { type: "string" },
      out: { type: "string" },
      "run-dir": { type: "string" },
      preset: { type: "string" },
      "release-head": { type: "boolean" },
      "resize-condition": { type: "boolean" },
      lambda: { type: "string" },
      steps: { type: "string" },
      batch: { type: "string" },
      lr: { type: "string" },
      "min-lr": { type: "string" },
      warmup: { type: "string" },
      ema: { type: "string" },
      seed: { type: "string" },
      "checkpoint-every": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  const kind = values.kind as ControlKind;
  if (!CONTROL_KINDS.includes(kind)) {
    throw new Error(
      `--kind is required: one of ${CONTROL_KINDS.join(", ")}${values.kind ? `, not "${values.kind}"` : ""}.`,
    );
  }
  if (!values.base) throw new Error("--base is required: the voxgen model file to steer.");
  if (!values.out?.endsWith(".safetensors")) {
    throw new Error("--out is required: the control file (.safetensors).");
  }
  if (
    kind === "controlnet" &&
    (values.preset || values["release-head"] || values.lambda || values["resize-condition"])
  ) {
    throw new Error("--preset, --release-head, --resize-condition and --lambda apply to --kind vcm only.");
  }
  const preset = values.preset ?? "small";
  if (preset !== "small" && preset !== "paper") {
    throw new Error(`--preset: "${preset}" is not small or paper.`);
  }
  const conditions = parseConditionKinds((values.conditions ?? "ventricles").split(",").map((s) => s.trim()));
  const manifest = values.data
    ? JSON.parse(await Deno.readTextFile(values.data)) as { image?: string; labels?: string }
    : { image: "../shared/data/MNI152_2009_template.nii.gz", labels: "../shared/data/mni152_pveseg.nii.gz" };
  if (!manifest.image || !manifest.labels) {
    throw new Error(`--data ${values.data}: the manifest must be JSON {"image": FILE, "labels": FILE}.`);
  }
  const pool = numberOption("pool", values.pool, 0, 0, 1e6, true);
  const sliceEvery = numberOption("slice-every", values["slice-every"], 4, 1, 64, true);
  const lambda = numberOption("lambda", values.lambda, 1, 0, 1e6);
  const steps = numberOption("steps", values.steps, 500, 1, 1e7, true);
  const batch = numberOption("batch", values.batch, 2, 1, 64, true);
  const lr = numberOption("lr", values.lr, 1e-4, 0, 1);
  const minLr = numberOption("min-lr", values["min-lr"], lr / 10, 0, 1);
  const warmup = numberOption("warmup", values.warmup, Math.max(1, Math.floor(steps / 30)), 0, 1e7, true);
  const emaDecay = numberOption("ema", values.ema, 0, 0, 1);
  const seed = numberOption("seed", values.seed, 0, 0, 2 ** 31, true);
  const checkpointEvery = numberOption("checkpoint-every", values["checkpoint-every"], 100, 1, 1e7, true);
  const out = values.out;
  const runDir = (values["run-dir"] ?? `${out.slice(0, -".safetensors".length)}.run`).replace(/\/$/, "");

  const device = await ready();
  // A latent model's U-Net is steered on its latents; the pairs and their conditions stay on the image grid.
  const model = await loadModelFile(values.base, { allowLatent: true });
  const { unet: base, info } = model;
  let geometry;
  let baseConditioning;
  try {
    geometry = controlGeometry(model);
    // A conditional base predicts under its null condition while the module learns (the pairs carry none).
    baseConditioning = nullConditioning(model);
  } catch (error) {
    disposeModel(model);
    throw error;
  }
  const pair = await loadTemplatePair(manifest.image, manifest.labels, info.volume.shape, info.volume.range);
  const control = await createControl(kind, base, {
    conditions,
    conditionChannels: conditions.map((c) => CONDITION_CHANNELS[c]),
    downsamplings: geometry.downsamplings,
    preset,
    releaseHead: values["release-head"],
    encoder: values["resize-condition"] ? "resize" : undefined,
    seed,
  }).catch((error) => {
    disposeModel(model);
    pair.image.dispose();
    pair.labels.dispose();
    throw error;
  });
  try {
    const count = control.module.numParameters();
    const where = model.latent
      ? `${info.volume.shape.join("×")} images, ${geometry.modelGrid.join("×")} latents`
      : info.volume.shape.join("×");
    console.error(
      `${kind} on ${values.base} (${where}), conditions ${conditions.join(", ")}: ` +
        `${count.toLocaleString("en-US")} trainable parameters; ${device.adapter}; run folder ${runDir}`,
    );
    const settings: Record<string, RunSetting> = {
      kind,
      base: control.info.baseHash,
      image: await Deno.realPath(manifest.image),
      labels: await Deno.realPath(manifest.labels),
      conditions,
      pool,
      sliceEvery,
      preset: kind === "vcm" ? preset : null,
      releaseHead: values["release-head"] ?? false,
      resizeCondition: values["resize-condition"] ?? false,
      lambda: kind === "vcm" ? lambda : null,
      batch,
      warmupSteps: values.warmup === undefined ? "steps/30" : warmup,
      minLr: values["min-lr"] === undefined ? "lr/10" : minLr,
    };
    const scheduler = new DDPMScheduler(info.scheduler);
    const data = controlBatches(
      model,
      pairedBatches(pair, {
        batch,
        seed,
        conditions,
        augment: { range: info.volume.range },
        pool,
        sliceEvery,
      }),
      seed,
    );
    control.module.train();
    const result = await train(
      controlTrainingNetwork(base, scheduler, control, { lambda, baseConditioning }),
      scheduler,
      data,
      {
        steps,
        lr,
        minLr,
        warmupSteps: warmup,
        emaDecay,
        seed,
        outDir: runDir,
        checkpointEvery,
        trainableOnly: true,
        settings,
      },
    ).catch((error) => {
      throw explainResumeMismatch(error, settings, {
        base: "--base (hash of its weights)",
        warmupSteps: "--warmup",
        sliceEvery: "--slice-every",
        releaseHead: "--release-head",
        resizeCondition: "--resize-condition",
        image: "--data (image)",
        labels: "--data (labels)",
      }, "another --run-dir (or --out)");
    });
    control.module.eval();
    const state = await loadSafetensors(result.weightsPath);
    try {
      noGrad(() => {
        for (const [name, t] of control.module.namedParameters()) copyInto(t, state.get(name)!);
      });
    } finally {
      for (const t of state.values()) t.dispose();
    }
    if (await modelHash(base) !== control.info.baseHash) {
      throw new Error("the base model changed during training.");
    }
    control.info.description = `${kind} trained by voxgen on ${manifest.image} + ${manifest.labels} (${
      pool ? `${pool} pairs` : "fresh deformations"
    }), conditions ${conditions.join(", ")}, ${result.step} steps, batch ${batch}, lr ${lr}`;
    await saveControlFile(out, control);
    console.error(
      `trained ${result.step} steps in ${result.seconds.toFixed(0)} s; final loss (mean of last 50) ${
        result.finalLoss.toFixed(4)
      }`,
    );
    console.log(`wrote ${out}`);
  } finally {
    control.module.dispose();
    disposeModel(model);
    pair.image.dispose();
    pair.labels.dispose();
  }
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    console.error(`train-control: ${(error as Error).message}`);
    Deno.exit(1);
  }
}
