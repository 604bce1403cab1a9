/**
 * The adapter study (docs/adapters.md): fine-tunes a base model to a shifted domain with each adapter kind (and in
 * full) through the public `finetune` command, then scores fixed-seed DDIM samples of the base model
 * ("before") and of each fine-tuned model ("after") against augmented target volumes by MMD and MS-SSIM.
 * Reports trainable parameters, file size and seconds per training step too; writes JSON, a markdown table
 * and PNG previews.
 *
 *   deno run -A scripts/adapter_study.ts --base models/default/brain32.safetensors \
 *     --data ../shared/data/FLAIR.nii.gz --kinds locon,loha,lokr,tenvoo-l,tenvoo-q,quanta,full --rank 4 \
 *     --steps 60 --count 16 --sample-steps 10 --out runs/study --json docs/adapters-study.json \
 *     --md docs/adapters-table.md
 *
 * Rerunning the same command continues: a kind whose model file and metrics are in `--out` is reused, an
 * interrupted fine-tune resumes from its checkpoint, and the "before" scores are kept. Delete
 * `<out>/<kind>/` to redo one kind.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { relative } from "node:path";
import { parseArgs } from "node:util";
import { readAdapterInfo, trainableCount } from "../adapters/mod.ts";
import { FINETUNE_KINDS } from "../cli/finetune.ts";
import { numberOption } from "../cli/options.ts";
import { applyAdapters } from "../cli/sample.ts";
import { ready } from "../engine/device.ts";
import { memory, releaseCachedMemory } from "../engine/memory.ts";
import type { Tensor } from "../engine/tensor.ts";
import { atomicWrite } from "../io/atomic.ts";
import { movingAverage, writePlotPng } from "../io/plot.ts";
import { writeSlicesPng } from "../io/png.ts";
import { listNiftiFiles } from "../pipelines/dataset.ts";
import { loadModelFile, type ModelInfo } from "../pipelines/modelfile.ts";
import {
  evaluationSeeds,
  generateSamples,
  realTargetSet,
  scoreAgainstReal,
  type SetScores,
  SMALL_GRID_MS_SSIM,
  trainingAugmentSeeds,
} from "./study_metrics.ts";

const HELP = `Usage: deno run -A scripts/adapter_study.ts --base MODEL --data FILES [options]

  --base FILE         the model to fine-tune (e.g. models/default/brain32.safetensors)
  --data SPEC         target-domain NIfTI files, folders or globs (repeat or comma-separate)
  --kinds LIST        comma-separated, from ${FINETUNE_KINDS.join(", ")} (default: all)
  --rank N            adapter rank (default 4)
  --steps N           fine-tuning steps for every kind (default 60)
  --batch N           volumes per step (default 2)
  --lr X              learning rate, constant after warm-up (default 1e-4, finetune's default)
  --ema X             EMA decay of the saved weights (default 0: the last weights, which is what a short
                      fine-tune should save)
  --seed N            fine-tuning seed (default 0)
  --count N           generated and real volumes per set (default 16, at least 2)
  --sample-steps N    DDIM steps per generated volume (default 10)
  --out DIR           fine-tuned files, run folders, per-kind results, previews (default runs/study)
  --json FILE         all results (default <out>/study.json)
  --md FILE           the markdown table (default <out>/table.md)
`;

/** Where the public CLI lives, as the command line shows it. */
const CLI = relative(Deno.cwd(), new URL("../cli/main.ts", import.meta.url).pathname);

/** What a fine-tune depends on: a kind's stored results are reused only when this is unchanged. */
interface TrainingKey {
  baseSha256: string;
  files: string[];
  kind: string;
  rank: number | null;
  steps: number;
  batch: number;
  lr: number;
  ema: number;
  seed: number;
}

/** What the scores depend on besides the model. */
interface EvaluationKey {
  baseSha256: string;
  files: string[];
  count: number;
  sampleSteps: number;
  realSeeds: number[];
  firstSampleSeed: number;
}

/** `<out>/<kind>/training.json`. */
interface TrainingRecord {
  key: TrainingKey;
  command: string;
  completed: boolean;
  finetuneSeconds?: number;
}

/** `<out>/<kind>/metrics.json` and `<out>/before.json`. */
interface MetricsRecord {
  key: EvaluationKey;
  /** σ of the Gaussian MMD shared by every row (null for "before", which defines it). */
  sigma: number | null;
  /** SHA-256 of the scored model or adapter file (null for "before"). */
  fileSha256: string | null;
  metrics: SetScores;
  sampleSeconds: number;
  /** Seconds to compute the scores (readback, MMD, MS-SSIM). */
  scoreSeconds: number;
}

/** One row of the study. */
interface KindResult {
  kind: string;
  status: "ok" | "failed";
  error?: string;
  command: string;
  file: string;
  fileBytes?: number;
  trainable?: number;
  percentOfBase?: number;
  alpha?: number;
  adaptedLayers?: number;
  adapterCores?: number;
  frozenCopies?: number;
  secondsPerStep?: number | null;
  stepsTimed?: number;
  firstStepSeconds?: number | null;
  finalLoss?: number | null;
  finetuneSeconds?: number | null;
  sampleSeconds?: number;
  scoreSeconds?: number;
  metrics?: SetScores;
}

const log = (message: string) => console.error(`[study] ${message}`);

/** Line colours of the combined loss plot, by kind (the docs name them). */
const LOSS_PLOT_COLORS: Record<string, [number, number, number]> = {
  locon: [31, 119, 180], // blue
  loha: [255, 127, 14], // orange
  lokr: [44, 160, 44], // green
  "tenvoo-l": [214, 39, 40], // red
  "tenvoo-q": [148, 103, 189], // purple
  quanta: [140, 86, 75], // brown
  full: [40, 40, 40], // black
};

/** The arguments as one shell command line (quoted where needed). */
export function shellQuote(args: readonly string[]): string {
  return args.map((a) => (/^[\w./:=,+@%-]+$/.test(a) ? a : `'${a.replaceAll("'", `'\\''`)}'`)).join(" ");
}

/** A JSON file's value, or null when it is missing or unreadable. */
export async function readJson<T>(path: string): Promise<T | null> {
  try {
    return JSON.parse(await Deno.readTextFile(path)) as T;
  } catch {
    return null;
  }
}

/** Writes `value` as indented JSON, atomically. */
export async function writeJson(path: string, value: unknown): Promise<void> {
  await atomicWrite(path, new TextEncoder().encode(`${JSON.stringify(value, null, 2)}\n`));
}

/** A file's size in bytes, or null when it is missing. */
export async function fileSize(path: string): Promise<number | null> {
  try {
    return (await Deno.stat(path)).size;
  } catch {
    return null;
  }
}

/** SHA-256 (hex) of a file's bytes. */
export async function sha256File(path: string): Promise<string> {
  return createHash("sha256").update(await Deno.readFile(path)).digest("hex");
}

/** Equal as JSON (for stored keys). */
export const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

/**
 * Runs a command, streaming its stdout and stderr line by line to our stderr behind `prefix`; resolves to
 * the exit code and the last lines (for the error record). Off a terminal the training loop logs a progress
 * line every 30 s.
 */
async function runPrefixed(args: string[], prefix: string): Promise<{ code: number; tail: string[] }> {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const tail: string[] = [];
  const encoder = new TextEncoder();
  const emit = (line: string) => {
    if (line.trim() === "") return;
    Deno.stderr.writeSync(encoder.encode(`${prefix} ${line}\n`));
    tail.push(line);
    if (tail.length > 20) tail.shift();
  };
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    let pending = "";
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      const lines = (pending + text).split(/\r\n|\r|\n/);
      pending = lines.pop()!;
      lines.forEach(emit);
    }
    emit(pending);
  };
  await Promise.all([pump(child.stdout), pump(child.stderr)]);
  return { code: (await child.status).code, tail };
}

/** The rows of a run's loss.csv as numbers (none when the file is missing, e.g. a deleted run folder). */
export async function lossRows(lossCsv: string): Promise<number[][]> {
  let text: string;
  try {
    text = await Deno.readTextFile(lossCsv);
  } catch {
    log(`no ${lossCsv}: seconds per step and final loss are unknown`);
    return [];
  }
  return text.trim().split("\n").slice(1).map((r) => r.split(",").map(Number));
}

/**
 * Mean seconds per step from a run's loss.csv (columns step,loss,lr,seconds; seconds counts from the start
 * of each session and restarts when a run resumes). The first step of every session is left out: it
 * includes compiling the shaders.
 */
export function stepTimes(
  rows: readonly number[][],
): { mean: number | null; timed: number; first: number | null } {
  const deltas: number[] = [];
  for (let i = 1; i < rows.length; i++) {
    const [step, , , seconds] = rows[i];
    const [prevStep, , , prevSeconds] = rows[i - 1];
    if (step === prevStep + 1 && seconds >= prevSeconds) deltas.push(seconds - prevSeconds);
  }
  return {
    mean: deltas.length > 0 ? deltas.reduce((a, b) => a + b, 0) / deltas.length : null,
    timed: deltas.length,
    first: rows.length > 0 ? rows[0][3] : null,
  };
}

/** Mean loss of the last (up to) 10 steps in loss.csv. */
export function finalLoss(rows: readonly number[][]): number | null {
  const tail = rows.map((r) => r[1]).slice(-10);
  return tail.length > 0 ? tail.reduce((a, b) => a + b, 0) / tail.length : null;
}

function grouped(n: number): string {
  return Math.round(n).toLocaleString("en-US");
}

/** A byte count as KiB or MiB. */
export function bytesText(n: number): string {
  return n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(2)} MiB` : `${(n / 1024).toFixed(1)} KiB`;
}

const num = (v: number) => v.toPrecision(4);

/** The markdown table: the base model's scores, then one row per kind. */
function markdownTable(before: SetScores | null, rows: readonly KindResult[], baseBytes: number): string {
  const header = [
    "kind",
    "trainable params",
    "% of base",
    "file size",
    "s/step",
    "final loss",
    "MMD Gaussian before → after ↓",
    "MMD linear ↓",
    "MS-SSIM mean ↑",
    "MS-SSIM nearest ↑",
  ];
  const lines = [header, header.map(() => "---")];
  if (before) {
    lines.push([
      "base model (before)",
      "–",
      "–",
      bytesText(baseBytes),
      "–",
      "–",
      num(before.mmdGaussian),
      num(before.mmdLinear),
      num(before.msSsimMean),
      num(before.msSsimNearest),
    ]);
  }
  for (const r of rows) {
    if (r.status === "failed" || !r.metrics) {
      lines.push([
        r.kind,
        `failed: ${(r.error ?? "").replaceAll("|", "\\|").split("\n")[0]}`,
        ...Array(8).fill(""),
      ]);
      continue;
    }
    const m = r.metrics;
    lines.push([
      r.kind,
      grouped(r.trainable!),
      `${r.percentOfBase!.toFixed(3)}%`,
      bytesText(r.fileBytes!),
      r.secondsPerStep == null ? "–" : r.secondsPerStep.toFixed(2),
      r.finalLoss == null ? "–" : r.finalLoss.toFixed(4),
      `${before ? num(before.mmdGaussian) : "?"} → ${num(m.mmdGaussian)}`,
      num(m.mmdLinear),
      num(m.msSsimMean),
      num(m.msSsimNearest),
    ]);
  }
  return alignedTable(lines);
}

/** Rows (header first, then the "---" row) as a markdown table padded the way `deno fmt` pads it. */
export function alignedTable(lines: readonly string[][]): string {
  const widths = lines[0].map((_, c) => Math.max(3, ...lines.map((cells) => (cells[c] ?? "").length)));
  return lines.map((cells, i) =>
    `| ${widths.map((w, c) => i === 1 ? "-".repeat(w) : (cells[c] ?? "").padEnd(w)).join(" | ")} |`
  ).join("\n");
}

async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      base: { type: "string" },
      data: { type: "string", multiple: true },
      kinds: { type: "string" },
      rank: { type: "string" },
      steps: { type: "string" },
      batch: { type: "string" },
      lr: { type: "string" },
      ema: { type: "string" },
      seed: { type: "string" },
      count: { type: "string" },
      "sample-steps": { type: "string" },
      out: { type: "string" },
      json: { type: "string" },
      md: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (!values.base) throw new Error("--base is required: the model file to fine-tune.");
  if (!values.data?.length) throw new Error("--data is required: the target-domain NIfTI files.");
  const kinds = [
    ...new Set((values.kinds ?? FINETUNE_KINDS.join(",")).split(",").map((k) => k.trim()).filter(Boolean)),
  ];
  const unknown = kinds.filter((k) => !FINETUNE_KINDS.includes(k));
  if (unknown.length > 0 || kinds.length === 0) {
    throw new Error(
      `--kinds: ${unknown.length > 0 ? `unknown ${unknown.join(", ")}` : "none given"}; choose from ` +
        `${FINETUNE_KINDS.join(", ")}.`,
    );
  }
  const rank = numberOption("rank", values.rank, 4, 1, 4096, true);
  const steps = numberOption("steps", values.steps, 60, 1, 1e7, true);
  const batch = numberOption("batch", values.batch, 2, 1, 64, true);
  const lr = numberOption("lr", values.lr, 1e-4, 0, 1);
  const ema = numberOption("ema", values.ema, 0, 0, 1);
  const seed = numberOption("seed", values.seed, 0, 0, 2 ** 31, true);
  const count = numberOption("count", values.count, 16, 2, 4096, true);
  const sampleSteps = numberOption("sample-steps", values["sample-steps"], 10, 1, 1000, true);
  const out = (values.out ?? "runs/study").replace(/\/$/, "");
  const jsonPath = values.json ?? `${out}/study.json`;
  const mdPath = values.md ?? `${out}/table.md`;
  const dataSpecs = values.data.flatMap((d) => d.split(",")).filter(Boolean);
  const files = await listNiftiFiles(dataSpecs);
  const baseBytes = await Deno.readFile(values.base).catch(() => {
    throw new Error(`--base: no such file ${values.base}.`);
  });
  const baseSha256 = createHash("sha256").update(baseBytes).digest("hex");
  await Deno.mkdir(`${out}/previews`, { recursive: true });

  const device = await ready();
  const started = performance.now();
  const studyCommand = shellQuote(["deno", "run", "-A", "scripts/adapter_study.ts", ...args]);
  const plan = `${kinds.length} kind(s): ${kinds.join(", ")}`;
  log(`${plan}; ${steps} steps each; ${count} volumes per set; ${device.adapter}`);

  // Evaluation volumes: augmentations with seeds no fine-tuning step of this configuration draws.
  const realSeeds = evaluationSeeds(count, trainingAugmentSeeds(seed, steps, batch));
  const firstSampleSeed = 1000;
  const evalKey: EvaluationKey = { baseSha256, files, count, sampleSteps, realSeeds, firstSampleSeed };

  const loaded = await loadModelFile(values.base);
  const info: ModelInfo = loaded.info;
  const numBase = loaded.unet.numParameters();
  const [nx, ny, nz] = info.volume.shape;
  const { sources, reals } = await realTargetSet(files, info, realSeeds);
  const preview = async (name: string, volume: Tensor) =>
    await writeSlicesPng(`${out}/previews/${name}.png`, await volume.toArray(), [nx, ny, nz], {
      window: info.volume.range,
    });
  await preview("real", reals[0]);

  const results: KindResult[] = [];
  // Every kind trains on the same batches, timesteps and noise (same seed), so their losses compare step
  // by step; plotted as 10-step moving averages.
  const lossLogs = new Map<string, number[][]>();
  const plotLosses = async () => {
    const series = [...lossLogs].filter(([, rows]) => rows.length > 0).map(([kind, rows]) => ({
      x: rows.map((r) => r[0]),
      y: movingAverage(rows.map((r) => r[1]), 10),
      color: LOSS_PLOT_COLORS[kind] ?? [128, 128, 128],
    }));
    if (series.length > 0) await writePlotPng(`${out}/loss.png`, series);
  };
  let before: MetricsRecord | null = null;
  const report = async () => {
    const doc = {
      study: "voxgen adapter study: fine-tuning a base model to a target domain",
      date: new Date().toISOString(),
      device: { adapter: device.adapter, vendor: device.vendor, fallback: device.isFallbackAdapter },
      command: studyCommand,
      seconds: (performance.now() - started) / 1000,
      config: {
        base: values.base,
        baseSha256,
        baseParameters: numBase,
        data: dataSpecs,
        files,
        kinds,
        rank,
        steps,
        batch,
        lr,
        ema,
        seed,
        count,
        sampleSteps,
        sampler: "DDIM, eta 0",
        sampleSeeds: [firstSampleSeed, firstSampleSeed + count - 1],
        realSeeds,
        clampSamples: info.volume.range,
        msSsim: SMALL_GRID_MS_SSIM,
      },
      notes: [
        "s/step: mean wall-clock seconds per optimizer step from the run's loss.csv, leaving out the first step " +
        "of each session (it includes shader compilation).",
        "MMD Gaussian: exp(-d^2/(2 sigma^2)) on voxels with one sigma for every row, the median distance between " +
        "the base model's samples and the real set; mmdGaussianOwnSigma uses each set's own median distance " +
        "(scripts/evaluate_model.ts's choice).",
        "MS-SSIM mean: over all generated x real pairs; nearest: each sample's best real volume, averaged.",
        "final loss: mean training loss of the last 10 steps (every kind trains on the same batches, timesteps " +
        "and noise).",
        "Adapters are merged into the base weights for sampling (as deno task sample --adapter does).",
      ],
      before: before
        ? { ...before.metrics, sampleSeconds: before.sampleSeconds, scoreSeconds: before.scoreSeconds }
        : null,
      kinds: results,
      failed: results.filter((r) => r.status === "failed").map((r) => r.kind),
    };
    await writeJson(jsonPath, doc);
    const table = markdownTable(before?.metrics ?? null, results, baseBytes.length);
    await atomicWrite(mdPath, new TextEncoder().encode(`${table}\n`));
    await plotLosses();
    return table;
  };

  try {
    // Before: the base model's samples.
    const beforePath = `${out}/before.json`;
    before = await readJson<MetricsRecord>(beforePath);
    if (before && same(before.key, evalKey)) {
      log(`before: reusing ${beforePath}`);
    } else {
      log(`before: sampling ${count} volumes from the base model (${sampleSteps} DDIM steps)`);
      const t0 = performance.now();
      const fakes = await generateSamples((x, t) => loaded.unet.forward(x, t), info, {
        count,
        steps: sampleSteps,
        firstSeed: firstSampleSeed,
        clamp: true,
        onSample: (done) =>
          log(`before: sample ${done}/${count} (${((performance.now() - t0) / 1000).toFixed(0)} s)`),
      });
      const sampleSeconds = (performance.now() - t0) / 1000;
      try {
        await preview("before", fakes[0]);
        const t1 = performance.now();
        const metrics = await scoreAgainstReal(fakes, reals);
        const scoreSeconds = (performance.now() - t1) / 1000;
        before = { key: evalKey, sigma: null, fileSha256: null, metrics, sampleSeconds, scoreSeconds };
        await writeJson(beforePath, before);
      } finally {
        for (const t of fakes) t.dispose();
      }
    }
  } finally {
    loaded.unet.dispose();
  }
  const sigma = before.metrics.ownSigma;
  log(`before: ${JSON.stringify(before.metrics)}`);
  await report();

  for (const [index, kind] of kinds.entries()) {
    const full = kind === "full";
    const dir = `${out}/${kind}`;
    const file = `${dir}/${full ? "model" : "adapter"}.safetensors`;
    const runDir = `${dir}/run`;
    const finetuneArgs = [
      "run",
      "-A",
      CLI,
      "finetune",
      "--base",
      values.base,
      "--adapter",
      kind,
      ...(full ? [] : ["--rank", String(rank)]),
      ...dataSpecs.flatMap((d) => ["--data", d]),
      "--out",
      file,
      "--run-dir",
      runDir,
      "--steps",
      String(steps),
      "--batch",
      String(batch),
      "--lr",
      String(lr),
      "--ema",
      String(ema),
      "--seed",
      String(seed),
    ];
    const command = shellQuote(["deno", ...finetuneArgs]);
    const result: KindResult = { kind, status: "ok", command, file };
    const label = `${kind} (${index + 1}/${kinds.length})`;
    try {
      await Deno.mkdir(dir, { recursive: true });
      // 1. Fine-tune, unless a completed run of this configuration is there.
      const trainingKey: TrainingKey = {
        baseSha256,
        files,
        kind,
        rank: full ? null : rank,
        steps,
        batch,
        lr,
        ema,
        seed,
      };
      const trainingPath = `${dir}/training.json`;
      let training = await readJson<TrainingRecord>(trainingPath);
      if (training && !same(training.key, trainingKey)) {
        throw new Error(
          `${dir} holds a fine-tune with other settings (${trainingPath}); delete ${dir} or choose another --out.`,
        );
      }
      if (training?.completed && await fileSize(file) !== null) {
        log(`${label}: reusing the fine-tuned ${file}`);
      } else {
        training = { key: trainingKey, command, completed: false };
        await writeJson(trainingPath, training);
        log(`${label}: fine-tuning, ${steps} steps: ${command}`);
        // This process's cached GPU buffers are not needed while the fine-tune runs.
        releaseCachedMemory();
        const t0 = performance.now();
        const { code, tail } = await runPrefixed(finetuneArgs, `[${kind}]`);
        if (code !== 0) {
          const reason = tail.filter((l) => l.startsWith("finetune:")).pop() ?? tail.slice(-3).join("\n");
          throw new Error(`the fine-tune exited with code ${code}: ${reason}`);
        }
        training = { ...training, completed: true, finetuneSeconds: (performance.now() - t0) / 1000 };
        await writeJson(trainingPath, training);
      }
      result.finetuneSeconds = training.finetuneSeconds ?? null;
      result.fileBytes = (await fileSize(file))!;
      const lossLog = await lossRows(`${runDir}/loss.csv`);
      lossLogs.set(kind, lossLog);
      const times = stepTimes(lossLog);
      result.secondsPerStep = times.mean;
      result.stepsTimed = times.timed;
      result.firstStepSeconds = times.first;
      result.finalLoss = finalLoss(lossLog);
      if (full) {
        result.trainable = numBase;
      } else {
        const adapter = await readAdapterInfo(file);
        result.trainable = trainableCount(adapter);
        result.alpha = adapter.alpha;
        result.adaptedLayers = adapter.layers.length;
        result.adapterCores = adapter.layers.reduce((n, l) => n + l.numParameters, 0);
        result.frozenCopies = adapter.layers.reduce((n, l) => n + l.numFrozen, 0);
      }
      result.percentOfBase = (100 * result.trainable) / numBase;

      // 2. Sample the fine-tuned model and score it, unless done for this configuration.
      const metricsPath = `${dir}/metrics.json`;
      const fileSha256 = await sha256File(file);
      let scored = await readJson<MetricsRecord>(metricsPath);
      if (scored && same(scored.key, evalKey) && scored.sigma === sigma && scored.fileSha256 === fileSha256) {
        log(`${label}: reusing ${metricsPath}`);
      } else {
        const { unet } = await loadModelFile(full ? file : values.base);
        try {
          if (!full) await applyAdapters(unet, [{ path: file, weight: 1 }]);
          log(`${label}: sampling ${count} volumes (${sampleSteps} DDIM steps)`);
          const t0 = performance.now();
          const fakes = await generateSamples((x, t) => unet.forward(x, t), info, {
            count,
            steps: sampleSteps,
            firstSeed: firstSampleSeed,
            clamp: true,
            onSample: (done) =>
              log(`${label}: sample ${done}/${count} (${((performance.now() - t0) / 1000).toFixed(0)} s)`),
          });
          const sampleSeconds = (performance.now() - t0) / 1000;
          try {
            await preview(kind, fakes[0]);
            const t1 = performance.now();
            const metrics = await scoreAgainstReal(fakes, reals, { sigma });
            const scoreSeconds = (performance.now() - t1) / 1000;
            scored = { key: evalKey, sigma, fileSha256, metrics, sampleSeconds, scoreSeconds };
            await writeJson(metricsPath, scored);
          } finally {
            for (const t of fakes) t.dispose();
          }
        } finally {
          unet.dispose();
          releaseCachedMemory();
        }
      }
      result.metrics = scored.metrics;
      result.sampleSeconds = scored.sampleSeconds;
      result.scoreSeconds = scored.scoreSeconds;
      log(`${label}: ${JSON.stringify(scored.metrics)}; ${memory().liveTensors} live tensors`);
    } catch (error) {
      result.status = "failed";
      result.error = error instanceof Error ? error.message : String(error);
      log(`${label}: FAILED: ${result.error}`);
    }
    results.push(result);
    await report();
  }

  for (const t of [...sources, ...reals]) t.dispose();
  const table = await report();
  console.log(table);
  log(
    `wrote ${jsonPath}, ${mdPath} and previews in ${out}/previews (${
      ((performance.now() - started) / 1000).toFixed(0)
    } s)`,
  );
  const failed = results.filter((r) => r.status === "failed");
  if (failed.length > 0) {
    log(`failed: ${failed.map((r) => r.kind).join(", ")}`);
    return 1;
  }
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (error) {
    console.error(`adapter_study: ${error instanceof Error ? error.message : error}`);
    Deno.exit(2);
  }
}
