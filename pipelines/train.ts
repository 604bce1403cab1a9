/**
 * Diffusion training: MSE on ε, v or x0 with AdamW, gradient accumulation, linear warm-up then cosine
 * decay, EMA weights with a warm-up of the decay, seeded noise and timesteps, atomic checkpoints (model,
 * EMA, optimizer state, the run's settings) with resume, progress on stderr, a CSV loss log and a PNG loss
 * plot.
 *
 * @module
 */

import { isAbsolute, relative } from "node:path";
import { grad, noGrad } from "../engine/autograd.ts";
import { keep, scope } from "../engine/memory.ts";
import { add, div, mseLoss, mul, square, sub } from "../engine/ops/elementwise.ts";
import { mean } from "../engine/ops/reduce.ts";
import { copyInto, map } from "../engine/ops/map.ts";
import { randn } from "../engine/ops/random.ts";
import { AdamW } from "../engine/optim.ts";
import type { Tensor } from "../engine/tensor.ts";
import { atomicWrite } from "../io/atomic.ts";
import { movingAverage, writePlotPng } from "../io/plot.ts";
import { loadSafetensors, saveSafetensors } from "../io/safetensors.ts";
import { seededRandom } from "../nn/init.ts";
import { Progress } from "../io/progress.ts";
import type { Scheduler } from "../samplers/scheduler.ts";
import type { SliceInputs } from "../models/slice_unet.ts";

/** Spatial conditions of a batch, for a control module (ControlNet, VCM) on a frozen model. */
export interface ControlInput {
  /** One condition volume [B, C_i, …] per condition (null: absent). */
  conditions: Array<Tensor | null>;
  /** Modality latent dropout: per condition, one 0/1 per sample (absent: keep all). */
  keep?: number[][];
}

/** What the training loop needs of a network. */
export interface DiffusionNetwork {
  /** Predicts ε (or v, or x0) for noisy `x` at `timesteps`. */
  forward(
    x: Tensor,
    timesteps: readonly number[],
    cond?: { context?: Tensor; classLabels?: Tensor; control?: ControlInput; slices?: SliceInputs },
  ): Tensor;
  /** Parameters with their state-dict names. */
  namedParameters(): Array<[string, Tensor]>;
  /**
   * The training loss, when it is not MSE(forward(x_t), target): e.g. VCM's MSE(ε', ε) plus its L1
   * regulariser, in ε space whatever the frozen model predicts. `noise` is the ε that made x_t.
   */
  trainingLoss?(xt: Tensor, timesteps: readonly number[], noise: Tensor, batch: Batch): Tensor;
}

/** One training batch. */
export interface Batch {
  /** Clean samples x0 [B, C, …]. */
  x0: Tensor;
  /** Optional cross-attention context. */
  context?: Tensor;
  /** Optional class labels. */
  classLabels?: Tensor;
  /** Optional spatial conditions (control modules). */
  control?: ControlInput;
  /** Slot layout and clean slices of a slice model (see pipelines/slice_data.ts); `clean` is freed by its owner. */
  slices?: SliceInputs;
  /** Weights broadcast against x0 (e.g. 1 on target slots): the loss is mean(w·err²) / mean(w). */
  lossMask?: Tensor;
}

/** Options of {@linkcode train}. */
export interface TrainOptions {
  /** Optimizer steps. */
  steps: number;
  /** Peak learning rate (default 1e-4). */
  lr?: number;
  /** Final learning rate of the cosine decay (default lr/10). */
  minLr?: number;
  /** Linear warm-up steps (default 100, at most steps). */
  warmupSteps?: number;
  /** AdamW weight decay (default 0). */
  weightDecay?: number;
  /** Micro-batches per optimizer step (default 1). */
  gradAccumulation?: number;
  /**
   * EMA decay (default 0.999; 0 disables EMA). It is warmed up: optimizer step t (1-based) uses
   * min(emaDecay, (1 + t) / (10 + t)) — 0.18 at step 1, 0.9 at step 80 — so that the EMA forgets the initial
   * weights in a short run too (a fixed 0.995 over 60 steps would keep 74% of them).
   */
  emaDecay?: number;
  /** Seed of noise and timesteps (default 0). */
  seed?: number;
  /** Output folder: checkpoints, loss.csv, loss.png. */
  outDir: string;
  /** Save a checkpoint every N steps (default 250) and at the end. */
  checkpointEvery?: number;
  /** Continue from the checkpoint in `outDir` if there is one (default true). */
  resume?: boolean;
  /**
   * Keep EMA copies of, and checkpoint, only the parameters that require gradients (default false: all of
   * them). For fine-tuning, where copying and saving the frozen base model every time would dominate; a
   * resumed run must then rebuild the same frozen weights before calling `train` (its checkpoint cannot).
   */
  trainableOnly?: boolean;
  /**
   * Settings that define the run beyond those `train` sees (data, model, augmentation…), stored in the
   * checkpoint with train's own (lr, minLr, warmupSteps, weightDecay, gradAccumulation, emaDecay, seed,
   * predictionType, noiseSchedule) and compared on resume: a changed one throws a
   * {@linkcode ResumeMismatchError}. A key named like one of train's replaces it (e.g. a warm-up derived
   * from `steps` can be stored as its rule). `steps` is not a setting: it may grow to continue a run.
   */
  settings?: Record<string, string | number | boolean | null | ReadonlyArray<string | number | boolean>>;
  /**
   * Report progress on stderr (default true): on a terminal one line redrawn every step, otherwise a plain
   * line every `progressEvery` seconds and at the first and the last step. "terminal" or "log" forces one.
   */
  progress?: boolean | "terminal" | "log";
  /** Seconds between progress lines when stderr is not a terminal (default 30). */
  progressEvery?: number;
  /** Called after every step. */
  onStep?: (s: StepReport) => void;
}

/** Per-step report. */
export interface StepReport {
  /** Step just finished (1-based). */
  step: number;
  /** Total steps. */
  steps: number;
  /** Loss of the step (mean over micro-batches). */
  loss: number;
  /** Learning rate used. */
  lr: number;
  /** Seconds since the start of this run. */
  elapsed: number;
}

/** Summary of a training run. */
export interface TrainResult {
  /** Last step reached. */
  step: number;
  /** Mean loss over the last 50 steps. */
  finalLoss: number;
  /** Wall-clock seconds of this run. */
  seconds: number;
  /**
   * Path of the model weights written last (EMA weights when EMA is on); only the trainable parameters with
   * `trainableOnly`.
   */
  weightsPath: string;
}

/** Learning rate at `step` (0-based): linear warm-up, then cosine decay to `minLr`. */
export function learningRate(step: number, steps: number, lr: number, minLr: number, warmup: number): number {
  if (step < warmup) return (lr * (step + 1)) / warmup;
  const progress = Math.min(1, (step - warmup) / Math.max(1, steps - warmup));
  return minLr + 0.5 * (lr - minLr) * (1 + Math.cos(Math.PI * progress));
}

/** The value of one run setting (compared as JSON). */
export type RunSetting = string | number | boolean | null | ReadonlyArray<string | number | boolean>;

/** A setting whose value differs between a checkpoint and the run resuming from it. */
export interface SettingChange {
  /** The setting's name. */
  name: string;
  /** Its value in the checkpoint (undefined: not recorded there). */
  checkpoint: RunSetting | undefined;
  /** Its value now (undefined: not given now). */
  now: RunSetting | undefined;
}

/** Thrown by {@linkcode train} when the checkpoint it would resume from was made with other settings. */
export class ResumeMismatchError extends Error {
  /** The checkpoint folder. */
  readonly checkpointDir: string;
  /** The settings that differ. */
  readonly changes: SettingChange[];

  /** Creates the error for the checkpoint folder `checkpointDir` and what changed. */
  constructor(checkpointDir: string, changes: SettingChange[]) {
    super("");
    this.name = "ResumeMismatchError";
    this.checkpointDir = checkpointDir;
    this.changes = changes;
    this.message = `train: ${this.explain({}, "another outDir")}`;
  }

  /**
   * The refusal in a caller's words: one line per changed setting, renamed by `names` (e.g. to command-line
   * flags), then what to do; `elsewhere` says how to choose another folder (e.g. "another --out").
   */
  explain(names: Record<string, string>, elsewhere: string): string {
    return `the checkpoint in ${this.checkpointDir} was made with other settings:\n` +
      describeChanges(this.changes, names).map((line) => `  ${line}\n`).join("") +
      "Rerun with the checkpoint's settings to continue that run (only the number of steps may change), " +
      `or start a new run in ${elsewhere} (or delete ${this.checkpointDir}).`;
  }
}

/** "name: X in the checkpoint, Y now" for each change; `names` renames settings (e.g. to CLI flags). */
export function describeChanges(changes: SettingChange[], names: Record<string, string> = {}): string[] {
  const show = (v: RunSetting | undefined) => v === undefined ? "unset" : JSON.stringify(v);
  return changes.map((c) =>
    `${names[c.name] ?? c.name}: ${show(c.checkpoint)} in the checkpoint, ${show(c.now)} now`
  );
}

/** What `meta.json` of a checkpoint holds (it is written last: a checkpoint is complete once it exists). */
export interface CheckpointMeta {
  step: number;
  seed: number;
  lossLog: string;
  /** Which parameters the checkpoint holds (absent in checkpoints written before the option: "all"). */
  parameters?: "all" | "trainable";
  /** The run's settings (absent in checkpoints written before they were recorded). */
  settings?: Record<string, RunSetting>;
}

/** EMA decay at optimizer step `t` (1-based): the warm-up min(decay, (1 + t) / (10 + t)). */
export function emaDecayAt(decay: number, t: number): number {
  return Math.min(decay, (1 + t) / (10 + t));
}

/** Settings that differ between `before` (a checkpoint) and `now`, over the keys of both. */
export function changedSettings(
  before: Record<string, RunSetting>,
  now: Record<string, RunSetting>,
): SettingChange[] {
  const names = [...new Set([...Object.keys(before), ...Object.keys(now)])];
  const same = (a: RunSetting, b: RunSetting) =>
    JSON.stringify(portableSetting(a)) === JSON.stringify(portableSetting(b));
  return names
    .filter((name) => !same(before[name], now[name]))
    .map((name) => ({ name, checkpoint: before[name], now: now[name] }));
}

/**
 * `value` with absolute file paths made relative to the working directory: runs record their files relative
 * to the repository they run in (so a checkout elsewhere resumes), and checkpoints written before that
 * recorded absolute paths, which must compare equal to the same files given relatively.
 */
function portableSetting(value: RunSetting): RunSetting {
  const portable = <T>(v: T): T =>
    (typeof v === "string" && isAbsolute(v) ? relative(Deno.cwd(), v) || "." : v) as T;
  return Array.isArray(value) ? value.map(portable) : portable(value);
}

/**
 * The noise schedule in a few words and a fingerprint of all its β (two schedules with the same ends
 * differ in between).
 */
function describeSchedule(scheduler: Scheduler): string {
  const betas = scheduler.schedule.betas;
  let hash = 0x811c9dc5; // FNV-1a over the float64 bytes
  for (const byte of new Uint8Array(betas.buffer, betas.byteOffset, betas.byteLength)) {
    hash = Math.imul(hash ^ byte, 0x01000193);
  }
  const short = (b: number) => Number(b.toPrecision(4));
  const hex = (hash >>> 0).toString(16).padStart(8, "0");
  return `T ${betas.length}, β ${short(betas[0])}…${short(betas[betas.length - 1])} (${hex})`;
}

/** mean(mask·(a − b)²) / mean(mask): the mean squared error over where the (broadcast) mask is set. */
export function maskedMse(a: Tensor, b: Tensor, mask: Tensor): Tensor {
  return div(mean(mul(square(sub(a, b)), mask)), mean(mask));
}

function target(scheduler: Scheduler, x0: Tensor, noise: Tensor, t: number[]): Tensor {
  switch (scheduler.predictionType) {
    case "epsilon":
      return map("copy", "a", [noise]);
    case "v_prediction":
      return scheduler.getVelocity(x0, noise, t);
    case "sample":
      return map("copy", "a", [x0]);
  }
}

/**
 * Trains `model` to denoise batches from `data(step, microStep)` under `scheduler`'s forward process.
 * Resumes from `outDir` when a checkpoint is there, after checking that it was made with the same settings
 * (throws {@linkcode ResumeMismatchError} if not; checkpoints that predate recorded settings resume with a
 * warning).
 */
export async function train(
  model: DiffusionNetwork,
  scheduler: Scheduler,
  data: (step: number, micro: number) => Batch | Promise<Batch>,
  opts: TrainOptions,
): Promise<TrainResult> {
  const steps = opts.steps;
  if (!Number.isInteger(steps) || steps < 1) {
    throw new Error(`train: steps must be a positive integer, got ${steps}.`);
  }
  const lr = opts.lr ?? 1e-4;
  const minLr = opts.minLr ?? lr / 10;
  const warmup = Math.min(opts.warmupSteps ?? 100, steps);
  const accumulation = opts.gradAccumulation ?? 1;
  const emaDecay = opts.emaDecay ?? 0.999;
  const seed = opts.seed ?? 0;
  const every = opts.checkpointEvery ?? 250;
  const dir = opts.outDir.replace(/\/$/, "");
  await Deno.mkdir(dir, { recursive: true });
  // What changes the result (steps may grow: a longer run continues a shorter one); defaults that follow
  // another setting are stored as their rule, so a change is reported once.
  const settings: Record<string, RunSetting> = {
    lr,
    minLr: opts.minLr ?? "lr/10",
    warmupSteps: opts.warmupSteps ?? 100,
    weightDecay: opts.weightDecay ?? 0,
    gradAccumulation: accumulation,
    emaDecay,
    seed,
    predictionType: scheduler.predictionType,
    noiseSchedule: describeSchedule(scheduler),
    ...opts.settings,
  };

  const trainable = model.namedParameters().filter(([, t]) => t.requiresGrad);
  const params = trainable.map(([, t]) => t);
  const trainableNames = trainable.map(([n]) => n);
  if (params.length === 0) throw new Error("train: the model has no trainable parameters.");
  const kept = opts.trainableOnly ? "trainable" : "all";
  // The parameters the EMA follows and checkpoints hold.
  const named = opts.trainableOnly ? trainable : model.namedParameters();
  const optimizer = new AdamW(params, { lr, weightDecay: opts.weightDecay ?? 0 });
  const ema = emaDecay > 0 ? named.map(([, t]) => keep(noGrad(() => map("copy", "a", [t])))) : [];

  try {
    let start = 0;
    let lossLog = "step,loss,lr,seconds\n";
    const ckpt = `${dir}/checkpoint`;
    if ((opts.resume ?? true) && await exists(`${ckpt}/meta.json`)) {
      const meta: CheckpointMeta = JSON.parse(await Deno.readTextFile(`${ckpt}/meta.json`));
      const stored = meta.parameters ?? "all";
      if (stored !== kept) {
        throw new Error(
          `train: the checkpoint in ${ckpt} holds ${stored} parameters but this run keeps ${kept} ` +
            "(trainableOnly); resume with the same setting or use another outDir.",
        );
      }
      if (meta.settings) {
        const changes = changedSettings(meta.settings, settings);
        if (changes.length > 0) throw new ResumeMismatchError(ckpt, changes);
      } else {
        console.error(
          `warning: the checkpoint in ${ckpt} predates recorded settings; resuming without verifying ` +
            "that this run uses the same ones.",
        );
      }
      if (meta.step > steps) {
        throw new Error(
          `train: the checkpoint in ${ckpt} is at step ${meta.step}, past steps ${steps}; ask for at ` +
            `least ${meta.step} steps, or start a new run in another outDir.`,
        );
      }
      await loadInto(`${ckpt}/model.safetensors`, named);
      if (ema.length) await loadInto(`${ckpt}/ema.safetensors`, named.map(([n], i) => [n, ema[i]]));
      const state = await loadSafetensors(`${ckpt}/optimizer.safetensors`);
      optimizer.loadState(state, meta.step);
      for (const t of state.values()) t.dispose();
      start = meta.step;
      lossLog = meta.lossLog;
      if (opts.progress !== false) console.error(`resuming from step ${start} (${ckpt})`);
    }

    // Timesteps and noise are drawn from (seed, step), so a resumed run continues the same sequence.
    const T = scheduler.numTrainTimesteps;
    const began = performance.now();
    const losses: number[] = [];
    const show = opts.progress ?? true;
    const progress = show !== false && start < steps
      ? new Progress("step", steps, {
        start,
        mode: show === true ? undefined : show,
        logEvery: opts.progressEvery ?? 30,
      })
      : null;
    let noiseOffset = 0;
    for (let step = start; step < steps; step++) {
      const stepLr = learningRate(step, steps, lr, minLr, warmup);
      optimizer.lr = stepLr;
      let summed: Tensor[] | null = null;
      let lossSum = 0;
      for (let micro = 0; micro < accumulation; micro++) {
        const batch = await data(step, micro);
        const B = batch.x0.shape[0];
        const stepRandom = seededRandom((seed * 1000003 + step * 131 + micro) >>> 0);
        const t = Array.from({ length: B }, () => Math.min(T - 1, Math.floor(stepRandom() * T)));
        noiseOffset = (step * accumulation + micro) * Math.ceil(batch.x0.size / 4);
        const { loss, grads } = scope(() => {
          const noise = randn(batch.x0.shape, { seed, offset: noiseOffset });
          const xt = scheduler.addNoise(batch.x0, noise, t);
          const l = model.trainingLoss
            ? model.trainingLoss(xt, t, noise, batch)
            : batch.lossMask
            ? maskedMse(model.forward(xt, t, batch), target(scheduler, batch.x0, noise, t), batch.lossMask)
            : mseLoss(model.forward(xt, t, batch), target(scheduler, batch.x0, noise, t));
          const scaled = accumulation > 1 ? map("scale", "a * s0", [l], [1 / accumulation]) : l;
          return { loss: l, grads: grad(scaled, params) };
        });
        lossSum += await loss.item();
        loss.dispose();
        batch.x0.dispose();
        batch.context?.dispose();
        batch.classLabels?.dispose();
        for (const c of batch.control?.conditions ?? []) c?.dispose();
        batch.lossMask?.dispose();
        if (!summed) summed = grads;
        else {
          const next: Tensor[] = summed.map((g, i) => noGrad(() => add(g, grads[i])));
          for (const g of [...summed, ...grads]) g.dispose();
          summed = next;
        }
      }
      optimizer.step(summed!);
      for (const g of summed!) g.dispose();
      if (ema.length) {
        // The decay depends on the step only, so a resumed run continues the same EMA.
        const decay = emaDecayAt(emaDecay, step + 1);
        noGrad(() =>
          scope(() => {
            named.forEach(([, p], i) => {
              const updated = map("ema", "a * s0 + b * s1", [ema[i], p], [decay, 1 - decay]);
              copyInto(ema[i], updated);
            });
          })
        );
      }
      const loss = lossSum / accumulation;
      if (!Number.isFinite(loss)) {
        throw new Error(
          `train: the loss became ${loss} at step ${step + 1}; lower the learning rate (now ${stepLr}).`,
        );
      }
      losses.push(loss);
      const elapsed = (performance.now() - began) / 1000;
      lossLog += `${step + 1},${loss},${stepLr},${elapsed.toFixed(2)}\n`;
      opts.onStep?.({ step: step + 1, steps, loss, lr: stepLr, elapsed });
      if (progress) {
        const recent = losses.slice(-20);
        const average = recent.reduce((a, b) => a + b, 0) / recent.length;
        progress.update(step + 1, `loss ${loss.toFixed(4)} (avg ${average.toFixed(4)})`);
      }
      if ((step + 1) % every === 0 || step + 1 === steps) {
        await saveCheckpoint(ckpt, named, trainableNames, ema, optimizer, {
          step: step + 1,
          seed,
          lossLog,
          parameters: kept,
          settings,
        });
        await writeLogs(dir, lossLog);
      }
    }
    // A resumed run that had nothing left to do reports the tail of the logged losses.
    const logged = lossLog.trim().split("\n").slice(1).map((row) => Number(row.split(",")[1]));
    const tail = (losses.length > 0 ? losses : logged).slice(-50);
    return {
      step: steps,
      finalLoss: tail.reduce((a, b) => a + b, 0) / Math.max(tail.length, 1),
      seconds: (performance.now() - began) / 1000,
      weightsPath: `${ckpt}/${emaDecay > 0 ? "ema" : "model"}.safetensors`,
    };
  } finally {
    // Also on errors and interruptions: the optimizer state and EMA copies are freed.
    optimizer.dispose();
    for (const t of ema) t.dispose();
  }
}
/** Whether a file or folder exists. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Copies the tensors of a safetensors file into `named` by name (shapes must match). */
export async function loadInto(path: string, named: Array<[string, Tensor]>): Promise<void> {
  const state = await loadSafetensors(path);
  try {
    for (const [name, t] of named) {
      const src = state.get(name);
      if (!src || src.shape.join() !== t.shape.join()) {
        throw new Error(
          `checkpoint ${path}: "${name}" is missing or has another shape; it belongs to another model.`,
        );
      }
      noGrad(() => copyInto(t, src));
    }
  } finally {
    for (const t of state.values()) t.dispose();
  }
}

/** Writes model (and EMA) weights, optimizer state and `meta.json` (last) into `dir`. */
export async function saveCheckpoint(
  dir: string,
  named: Array<[string, Tensor]>,
  trainableNames: string[],
  ema: Tensor[],
  optimizer: AdamW,
  meta: CheckpointMeta,
): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const info = { step: String(meta.step), format: "voxgen-checkpoint" };
  await saveSafetensors(`${dir}/model.safetensors`, new Map(named), info);
  if (ema.length) {
    await saveSafetensors(`${dir}/ema.safetensors`, new Map(named.map(([n], i) => [n, ema[i]])), info);
  }
  await saveSafetensors(`${dir}/optimizer.safetensors`, optimizer.state(), {
    ...info,
    params: trainableNames.join(","),
  });
  // meta.json last: a checkpoint is complete only once it names its step.
  await atomicWrite(`${dir}/meta.json`, new TextEncoder().encode(JSON.stringify(meta)));
}

/** Writes loss.csv and its plot loss.png (raw and smoothed loss, log scale) into `dir`. */
export async function writeLogs(dir: string, lossLog: string): Promise<void> {
  await atomicWrite(`${dir}/loss.csv`, new TextEncoder().encode(lossLog));
  const rows = lossLog.trim().split("\n").slice(1).map((r) => r.split(",").map(Number));
  const x = rows.map((r) => r[0]);
  const y = rows.map((r) => r[1]);
  const window = Math.max(1, Math.round(y.length / 50));
  const smooth = movingAverage(y, window);
  await writePlotPng(`${dir}/loss.png`, [
    { x, y, color: [170, 195, 235] },
    { x, y: smooth, color: [20, 60, 160] },
  ], { logY: true });
}
