/**
 * The textual-inversion study (docs/textual-inversion.md; de Wilde et al., "Medical diffusion on a budget"):
 * teaches a conditional base model (one with a token table, e.g. brain32c) the FLAIR scan as a new token
 * `<flair>` through the public `invert` command, and scores its prompted samples against augmented FLAIR
 * volumes by MMD and MS-SSIM — the target, metrics and sampling of the adapter study (docs/adapters.md), so
 * that textual inversion stands next to LoCon/TenVOO/full fine-tuning. It sweeps, one factor at a time around
 * a centre, the vectors per token, the training cases, the guidance scale and the steps (checkpoints of one
 * run); measures composability (`<t1>:w AND <flair>:(1−w)`, whether the samples move monotonically from FLAIR
 * to T1 with w) and inpainting (a `<lesion>` concept, inverted on T1 volumes with a synthetic bright sphere,
 * inpainted into a spherical mask of the T1 template, against the control prompt `<t1>`); and lists the
 * embedding files' sizes next to the adapters'. Writes JSON (atomically), a markdown report and PNG previews.
 *
 *   deno run -A scripts/ti_study.ts --base models/default/brain32c.safetensors \
 *     --out runs/ti-study --json docs/textual-inversion-study.json --md docs/textual-inversion-table.md
 *
 * Rerunning the same command continues: an embedding whose checkpoint and record are in `--out` is reused,
 * an interrupted inversion resumes from its run folder's checkpoint (`invert`'s own resumption), and scored
 * sets are reused while their settings and embedding file are unchanged. Delete `<out>/inversions/<id>/`
 * to redo one inversion.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { main as invert } from "../cli/invert.ts";
import { numberList, numberOption } from "../cli/options.ts";
import { ready } from "../engine/device.ts";
import { releaseCachedMemory } from "../engine/memory.ts";
import type { Tensor } from "../engine/tensor.ts";
import { atomicWrite } from "../io/atomic.ts";
import { readNifti, writeNifti } from "../io/nifti.ts";
import { writeSlicesPng } from "../io/png.ts";
import { augment } from "../pipelines/augment.ts";
import { loadVolume } from "../pipelines/dataset.ts";
import { generate, type Generator } from "../pipelines/generate.ts";
import { loadGenerator } from "../pipelines/generators.ts";
import { sphereMask } from "../pipelines/inpaint.ts";
import { loadModelFile } from "../pipelines/modelfile.ts";
import {
  alignedTable,
  bytesText,
  fileSize,
  finalLoss,
  lossRows,
  readJson,
  same,
  sha256File,
  shellQuote,
  stepTimes,
  writeJson,
} from "./adapter_study.ts";
import { conceptSamples } from "./evaluate_concepts.ts";
import {
  evaluationSeeds,
  realTargetSet,
  scoreAgainstReal,
  type SetScores,
  SMALL_GRID_MS_SSIM,
  trainingAugmentSeeds,
} from "./study_metrics.ts";
import {
  type Cases,
  checkMonotone,
  checkpointAction,
  type EvaluationPlan,
  type InversionRecord,
  lesionCenters,
  type MaskMeasure,
  maskMeasure,
  meanVolume,
  mixCoefficient,
  type Monotonicity,
  parseCases,
  peakCentroid,
  planStudy,
  shellMask,
  type StudyPlan,
} from "./ti_study_plan.ts";

const DATA = "../shared/data";

const HELP = `Usage: deno run -A scripts/ti_study.ts --base MODEL [options]

  --base FILE          a conditional model with a token table that has <t1> (e.g. brain32c)
  --flair FILE         the target scan (default ${DATA}/FLAIR.nii.gz, as in docs/adapters.md)
  --t1 FILE            the T1 volume behind <t1> (default ${DATA}/MNI152_2009_template.nii.gz): the second
                       real set of the composability test and the volume the synthetic lesions go into
  --vectors LIST       vectors per token (default 1,4,8,16; those that do not fit the context are reported)
  --cases LIST         training cases: N fixed augmentations of the scan, or "aug" = augmented afresh every
                       step (default 1,4,aug)
  --cfg LIST           guidance scales (default 1,2,3,5)
  --steps LIST         inversion steps; the centre inversion is scored at each (default 100,250,500)
  --center-vectors N   (default 8)   --center-cases C (default aug)   --center-cfg X (default 2)
  --lr X               inversion learning rate (default 5e-3, invert's)
  --init TOKEN         start the vectors from this concept's rows (default: invert's, the mean of all rows)
  --seed N             inversion seed (default 0)
  --count N            generated and real volumes per set (default 16)
  --sample-steps N     DDIM steps per generated volume (default 10)
  --weights LIST       composability weights w of <t1> (default 0,0.25,0.5,0.75,1)
  --lesions N          synthetic lesion volumes to invert <lesion> on (default 4)
  --lesion-radius MM   radius of the synthetic lesions and the inpainting mask (default 15)
  --inpaint-count N    inpainted samples per prompt (default 4)
  --adapters FILE      the adapter study's JSON, for the file-size table (default docs/adapters-study.json)
  --out DIR            cases, lesions, inversions, scores, previews (default runs/ti-study)
  --json FILE          all results (default <out>/study.json)
  --md FILE            the markdown report (default <out>/report.md)
`;

const log = (message: string) => console.error(`[ti-study] ${message}`);

/** What an inversion depends on besides its step count. */
interface InversionKey {
  baseSha256: string;
  data: string[];
  name: string;
  vectors: number;
  cases: Cases;
  lr: number;
  init: string | null;
  seed: number;
}

/** What a scored set depends on besides the model and embedding. */
interface EvaluationKey {
  baseSha256: string;
  prompt: string;
  guidance: number;
  count: number;
  sampleSteps: number;
  realSeeds: number[];
  firstSampleSeed: number;
}

/** `<out>/scores/<id>.json`. */
interface ScoreRecord {
  key: EvaluationKey;
  sigma: number | null;
  fileSha256: string | null;
  metrics: SetScores;
  sampleSeconds: number;
}

/** One row of the sweep table. */
interface SweepRow {
  id: string;
  inversion: string;
  sweeps: string[];
  vectors: number;
  cases: Cases;
  steps: number;
  guidance: number;
  status: "ok" | "failed";
  error?: string;
  file?: string;
  fileBytes?: number;
  inversionSeconds?: number;
  /** Mean seconds per inversion step (first step of each session left out, as in the adapter study). */
  secondsPerStep?: number | null;
  /** Mean training loss of the last 10 steps up to `steps`. */
  finalLoss?: number | null;
  metrics?: SetScores;
}

/** One weight of the composability test. */
interface ComposeRow {
  w: number;
  prompt: string;
  /** Mean over samples of α̂ = the position between the mean FLAIR (0) and mean T1 (1) volumes. */
  mixCoefficient: number;
  msSsimFlair: number;
  msSsimT1: number;
  mmdFlair: number;
  mmdT1: number;
}

/** The inpainting result of one prompt (means over the samples). */
interface InpaintRow {
  prompt: string;
  measure: MaskMeasure;
  perSample: MaskMeasure[];
}

const num = (v: number) => v.toPrecision(4);

/** Average of the fields of several measures. */
function meanMeasure(list: readonly MaskMeasure[]): MaskMeasure {
  const keys = Object.keys(list[0]) as (keyof MaskMeasure)[];
  return Object.fromEntries(
    keys.map((k) => [k, list.reduce((s, m) => s + m[k], 0) / list.length]),
  ) as unknown as MaskMeasure;
}

/** The step a run folder's checkpoint has reached (0 without one). */
async function runStep(runDir: string): Promise<number> {
  const meta = await readJson<{ step?: number }>(`${runDir}/checkpoint/meta.json`);
  return meta?.step ?? 0;
}

/** `w` as a prompt weight without float noise (0.75, not 0.7500000001). */
function weightText(w: number): string {
  return String(Number(w.toFixed(6)));
}

/** The composability prompt for weight `w` of `<t1>`. */
export function composePrompt(w: number, name = "<flair>"): string {
  return `<t1>:${weightText(w)} AND ${name}:${weightText(1 - w)}`;
}

/** The composability verdicts: does each measured quantity move monotonically, the expected way, in w? */
function composeChecks(rows: readonly ComposeRow[]): Record<string, Monotonicity> {
  const sorted = [...rows].sort((a, b) => a.w - b.w);
  return {
    "mixCoefficient increases with w": checkMonotone(sorted.map((r) => r.mixCoefficient), "increasing"),
    "MS-SSIM(FLAIR) − MS-SSIM(T1) decreases with w": checkMonotone(
      sorted.map((r) => r.msSsimFlair - r.msSsimT1),
      "decreasing",
    ),
    "MMD(FLAIR) − MMD(T1) increases with w": checkMonotone(
      sorted.map((r) => r.mmdFlair - r.mmdT1),
      "increasing",
    ),
  };
}

/** Runs the study with `args`; returns the exit code (1 when some part failed). */
export async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      base: { type: "string" },
      flair: { type: "string" },
      t1: { type: "string" },
      vectors: { type: "string" },
      cases: { type: "string" },
      cfg: { type: "string" },
      steps: { type: "string" },
      "center-vectors": { type: "string" },
      "center-cases": { type: "string" },
      "center-cfg": { type: "string" },
      lr: { type: "string" },
      init: { type: "string" },
      seed: { type: "string" },
      count: { type: "string" },
      "sample-steps": { type: "string" },
      weights: { type: "string" },
      lesions: { type: "string" },
      "lesion-radius": { type: "string" },
      "inpaint-count": { type: "string" },
      adapters: { type: "string" },
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
  if (!values.base) throw new Error("--base is required: a conditional model file with a token table.");
  const flairFile = values.flair ?? `${DATA}/FLAIR.nii.gz`;
  const t1File = values.t1 ?? `${DATA}/MNI152_2009_template.nii.gz`;
  const lr = numberOption("lr", values.lr, 5e-3, 0, 10);
  const seed = numberOption("seed", values.seed, 0, 0, 2 ** 31, true);
  const count = numberOption("count", values.count, 16, 2, 4096, true);
  const sampleSteps = numberOption("sample-steps", values["sample-steps"], 10, 1, 1000, true);
  const lesionCount = numberOption("lesions", values.lesions, 4, 1, 64, true);
  const lesionRadius = numberOption("lesion-radius", values["lesion-radius"], 15, 0.1, 1000);
  const inpaintCount = numberOption("inpaint-count", values["inpaint-count"], 4, 1, 4096, true);
  const weights = numberList("weights", values.weights ?? "0,0.25,0.5,0.75,1");
  if (weights.length < 2) throw new Error("--weights: give at least two weights.");
  const out = (values.out ?? "runs/ti-study").replace(/\/$/, "");
  const jsonPath = values.json ?? `${out}/study.json`;
  const mdPath = values.md ?? `${out}/report.md`;
  const adaptersJson = values.adapters ?? "docs/adapters-study.json";
  for (const [flag, file] of [["--base", values.base], ["--flair", flairFile], ["--t1", t1File]]) {
    await Deno.stat(file).catch(() => {
      throw new Error(`${flag}: no such file ${file}.`);
    });
  }
  const baseSha256 = await sha256File(values.base);
  const baseBytes = (await fileSize(values.base))!;

  const device = await ready();
  const started = performance.now();
  const studyCommand = shellQuote(["deno", "run", "-A", "scripts/ti_study.ts", ...args]);

  // The base: its grid, and the tokens the study relies on.
  const probe = await loadModelFile(values.base);
  const info = probe.info;
  const concepts = probe.tokens?.concepts().map((c) => c.name) ?? [];
  const contextLength = probe.tokens?.contextLength ?? 0;
  probe.unet.dispose();
  probe.tokens?.dispose();
  if (!info.tokens) {
    throw new Error(
      `--base ${values.base} has no token table: the study needs a conditional model with <t1>.`,
    );
  }
  for (const needed of ["<t1>"]) {
    if (!concepts.includes(needed)) {
      throw new Error(`--base ${values.base} has no ${needed} (its concepts: ${concepts.join(", ")}).`);
    }
  }
  for (const fresh of ["<flair>", "<lesion>"]) {
    if (concepts.includes(fresh)) {
      throw new Error(`--base ${values.base} already has ${fresh}; the study inverts it as a new concept.`);
    }
  }
  const plan: StudyPlan = planStudy({
    vectors: numberList("vectors", values.vectors ?? "1,4,8,16"),
    cases: (values.cases ?? "1,4,aug").split(",").map((c) => parseCases(c.trim())),
    guidance: numberList("cfg", values.cfg ?? "1,2,3,5"),
    steps: numberList("steps", values.steps ?? "100,250,500"),
    center: {
      vectors: numberOption("center-vectors", values["center-vectors"], 8, 1, 4096, true),
      cases: parseCases(values["center-cases"] ?? "aug"),
      guidance: numberOption("center-cfg", values["center-cfg"], 2, 0, 100),
    },
    contextLength,
  });
  const centerPlan = plan.inversions.find((p) => p.id === plan.center)!;
  if (centerPlan.skip) throw new Error(`the centre inversion cannot run: ${centerPlan.skip}.`);
  const centerCfg = plan.evaluations.find((e) => e.sweeps.includes("steps"))!.guidance;
  const [nx, ny, nz] = info.volume.shape;
  const range = info.volume.range;
  log(
    `${plan.inversions.length} inversions, ${plan.evaluations.length} scored sets of ${count}; ` +
      `${nx}×${ny}×${nz}; ${device.adapter}`,
  );
  await Deno.mkdir(`${out}/previews`, { recursive: true });
  const preview = async (name: string, data: ArrayLike<number>) =>
    await writeSlicesPng(`${out}/previews/${name}.png`, data, [nx, ny, nz], { window: range });

  // Real sets: augmentations of FLAIR (and T1) with seeds no inversion step draws (batch 1).
  const realSeeds = evaluationSeeds(count, trainingAugmentSeeds(seed, plan.finalSteps, 1));
  const firstSampleSeed = 1000;
  const flairSet = await realTargetSet([flairFile], info, realSeeds);
  const t1Set = await realTargetSet([t1File], info, realSeeds);
  const owned: Tensor[] = [...flairSet.sources, ...flairSet.reals, ...t1Set.sources, ...t1Set.reals];
  const flairRows = await Promise.all(flairSet.reals.map((t) => t.toArray()));
  const t1Rows = await Promise.all(t1Set.reals.map((t) => t.toArray()));
  await preview("real-flair", flairRows[0]);
  await preview("real-t1", t1Rows[0]);

  // Training cases: fixed augmentations of FLAIR on the model's grid, written as NIfTI (background at 0).
  const fixedCases = plan.inversions.map((p) => p.cases).filter((c): c is number => c !== "aug");
  const maxCases = Math.max(0, ...fixedCases);
  const caseFiles: string[] = [];
  if (maxCases > 0) {
    await Deno.mkdir(`${out}/cases`, { recursive: true });
    const grid = await loadVolume(flairFile, { shape: [nx, ny, nz], fov: "foreground", range });
    const excluded = new Set(realSeeds);
    for (let i = 0, s = 0x40000000; i < maxCases; s++) {
      if (excluded.has(s)) continue;
      const path = `${out}/cases/case_${i}.nii.gz`;
      if (await fileSize(path) === null) {
        const image = augment(flairSet.sources[0], s, { range }).image;
        const data = await image.toArray();
        image.dispose();
        await writeNifti(path, {
          data: data.map((v) => v - range[0]),
          shape: [nx, ny, nz],
          affine: grid.affine,
        });
      }
      caseFiles.push(path);
      i++;
    }
  }

  const results: SweepRow[] = [];
  const baselines: Record<string, SetScores | { error: string }> = {};
  let composability: Record<string, unknown> | null = null;
  let inpainting: Record<string, unknown> | null = null;
  const inversionFiles = new Map<string, { file: string; bytes: number; seconds: number }>();
  const skipped = plan.inversions.filter((p) => p.skip).map((p) => ({ id: p.id, reason: p.skip! }));
  const failures: string[] = [];
  let sigma: number | null = null;
  const adapterSizes = await readJson<
    { kinds?: Array<{ kind: string; fileBytes?: number; trainable?: number }> }
  >(
    adaptersJson,
  );
  const report = async () => {
    const doc = {
      study: "voxgen textual-inversion study: a new token for the FLAIR scan on a conditional base model",
      date: new Date().toISOString(),
      device: { adapter: device.adapter, vendor: device.vendor, fallback: device.isFallbackAdapter },
      command: studyCommand,
      seconds: (performance.now() - started) / 1000,
      config: {
        base: values.base,
        baseSha256,
        baseBytes,
        flair: flairFile,
        t1: t1File,
        contextLength,
        plan,
        lr,
        init: values.init ?? null,
        seed,
        count,
        sampleSteps,
        sampler: "DDIM, eta 0",
        sampleSeeds: [firstSampleSeed, firstSampleSeed + count - 1],
        realSeeds,
        caseFiles,
        msSsim: SMALL_GRID_MS_SSIM,
        weights,
        lesionCount,
        lesionRadiusMm: lesionRadius,
        inpaintCount,
      },
      notes: [
        "MMD Gaussian: one sigma for every row, the median distance between the base model's <t1> samples (at " +
        "the centre guidance scale) and the FLAIR set, as the adapter study's 'before'.",
        "A case is one fixed augmentation of the single FLAIR scan on the model's grid; 'aug' trains on the " +
        "scan augmented afresh at every step (what the adapter study's fine-tunes saw).",
        "Composability: mixCoefficient is the least-squares position of a sample between the mean FLAIR (0) " +
        "and mean T1 (1) real volumes; it should increase with w; MS-SSIM to FLAIR minus MS-SSIM to T1 " +
        "should decrease.",
      ],
      skipped,
      baselines,
      sweeps: results,
      composability,
      inpainting,
      fileSizes: {
        embeddings: Object.fromEntries(inversionFiles),
        adapters: adapterSizes?.kinds?.map((k) => ({ kind: k.kind, fileBytes: k.fileBytes })) ?? null,
        base: baseBytes,
      },
      failures,
    };
    await writeJson(jsonPath, doc);
    const md = markdownReport(doc.baselines, results, skipped, composability, inpainting, {
      embeddings: [...inversionFiles].map(([id, f]) => [id, f.bytes] as [string, number]),
      adapters: (adapterSizes?.kinds ?? []).filter((k) => k.fileBytes).map((k) =>
        [k.kind, k.fileBytes!] as [string, number]
      ),
      base: baseBytes,
    });
    await atomicWrite(mdPath, new TextEncoder().encode(`${md}\n`));
    return md;
  };

  const scored = async (
    id: string,
    key: EvaluationKey,
    file: string | null,
    make: () => Promise<Generator>,
  ): Promise<SetScores> => {
    const path = `${out}/scores/${id}.json`;
    const fileSha256 = file ? await sha256File(file) : null;
    const stored = await readJson<ScoreRecord>(path);
    if (stored && same(stored.key, key) && stored.sigma === sigma && stored.fileSha256 === fileSha256) {
      log(`${id}: reusing ${path}`);
      return stored.metrics;
    }
    const model = await make();
    try {
      const t0 = performance.now();
      const fakes = await conceptSamples(model, key.prompt, {
        count: key.count,
        steps: key.sampleSteps,
        guidanceScale: key.guidance,
        firstSeed: key.firstSampleSeed,
        log: (s) => log(`${id}: ${s}`),
      });
      try {
        const sampleSeconds = (performance.now() - t0) / 1000;
        await preview(id, await fakes[0].toArray());
        const metrics = await scoreAgainstReal(fakes, flairSet.reals, sigma === null ? {} : { sigma });
        await Deno.mkdir(`${out}/scores`, { recursive: true });
        await writeJson(path, { key, sigma, fileSha256, metrics, sampleSeconds });
        return metrics;
      } finally {
        for (const t of fakes) t.dispose();
      }
    } finally {
      model.dispose();
      releaseCachedMemory();
    }
  };
  const evalKey = (prompt: string, guidance: number): EvaluationKey => ({
    baseSha256,
    prompt,
    guidance,
    count,
    sampleSteps,
    realSeeds,
    firstSampleSeed,
  });

  /** Runs (or reuses) every checkpoint of one inversion; returns the files by step count. */
  const runInversion = async (
    id: string,
    name: string,
    vectors: number,
    cases: Cases,
    data: string[],
    augmentData: boolean,
    checkpoints: number[],
  ): Promise<Map<number, string>> => {
    const dir = `${out}/inversions/${id}`;
    const runDir = `${dir}/run`;
    await Deno.mkdir(dir, { recursive: true });
    const key: InversionKey = {
      baseSha256,
      data: await Promise.all(data.map((f) => Deno.realPath(f))),
      name,
      vectors,
      cases,
      lr,
      init: values.init ?? null,
      seed,
    };
    const recordPath = `${dir}/training.json`;
    const record = await readJson<InversionRecord<InversionKey>>(recordPath) ??
      { key, checkpoints: {} };
    const files = new Map<number, string>();
    for (const steps of checkpoints) {
      const file = `${dir}/s${steps}.ti.safetensors`;
      const action = checkpointAction(
        await readJson<InversionRecord<InversionKey>>(recordPath),
        key,
        steps,
        await fileSize(file) !== null,
        await runStep(runDir),
      );
      const invertArgs = [
        "--base",
        values.base!,
        ...data.flatMap((d) => ["--data", d]),
        "--name",
        name,
        "--vectors",
        String(vectors),
        "--steps",
        String(steps),
        "--lr",
        String(lr),
        "--batch",
        "1",
        "--seed",
        String(seed),
        ...(values.init ? ["--init", values.init] : []),
        ...(augmentData ? [] : ["--no-augment"]),
        "--out",
        file,
        "--run-dir",
        runDir,
        "--checkpoint-every",
        "50",
      ];
      const command = shellQuote(["deno", "task", "invert", ...invertArgs]);
      if (action.action === "refuse") {
        throw new Error(`${dir}: ${action.reason}; delete ${dir} to redo it.`);
      }
      if (action.action === "reuse") {
        log(`${id}: reusing ${file}`);
      } else {
        log(`${id}: inverting to step ${steps}: ${command}`);
        releaseCachedMemory();
        const t0 = performance.now();
        await invert(invertArgs);
        record.checkpoints[String(steps)] = { command, seconds: (performance.now() - t0) / 1000 };
        await writeJson(recordPath, record);
      }
      files.set(steps, file);
    }
    const last = checkpoints.at(-1)!;
    inversionFiles.set(id, {
      file: files.get(last)!,
      bytes: (await fileSize(files.get(last)!))!,
      seconds: Object.values(record.checkpoints).reduce((s, c) => s + c.seconds, 0),
    });
    return files;
  };

  try {
    // Baselines: the base model prompted with <t1> (its σ is every row's) and with the null prompt.
    const baseGenerator = () => loadGenerator(values.base!);
    for (
      const [label, prompt, guidance] of [["base <t1>", "<t1>", centerCfg], ["base null", "", 1]] as const
    ) {
      try {
        const metrics = await scored(
          label === "base <t1>" ? "base-t1" : "base-null",
          evalKey(prompt, guidance),
          null,
          baseGenerator,
        );
        baselines[label] = metrics;
        if (label === "base <t1>") sigma = metrics.ownSigma;
      } catch (error) {
        baselines[label] = { error: (error as Error).message };
        failures.push(`${label}: ${(error as Error).message}`);
      }
    }
    if (sigma === null) throw new Error("the <t1> baseline failed, so there is no common σ; see above.");
    await report();

    // Sweeps.
    const byInversion = new Map<string, EvaluationPlan[]>();
    for (const e of plan.evaluations) {
      byInversion.set(e.inversion, [...(byInversion.get(e.inversion) ?? []), e]);
    }
    for (const inv of plan.inversions.filter((p) => !p.skip)) {
      const evaluations = byInversion.get(inv.id) ?? [];
      let files: Map<number, string> | null = null;
      let error: string | undefined;
      try {
        const data = inv.cases === "aug" ? [flairFile] : caseFiles.slice(0, inv.cases);
        files = await runInversion(
          inv.id,
          "flair",
          inv.vectors,
          inv.cases,
          data,
          inv.cases === "aug",
          inv.checkpoints,
        );
      } catch (e) {
        error = (e as Error).message;
        failures.push(`${inv.id}: ${error}`);
        log(`${inv.id}: FAILED: ${error}`);
      }
      for (const e of evaluations) {
        const row: SweepRow = {
          id: e.id,
          inversion: inv.id,
          sweeps: e.sweeps,
          vectors: inv.vectors,
          cases: inv.cases,
          steps: e.steps,
          guidance: e.guidance,
          status: "ok",
        };
        try {
          if (!files) throw new Error(`the inversion failed: ${error}`);
          const file = files.get(e.steps)!;
          row.file = file;
          row.fileBytes = (await fileSize(file))!;
          row.inversionSeconds = inversionFiles.get(inv.id)?.seconds;
          const losses = (await lossRows(`${out}/inversions/${inv.id}/run/loss.csv`))
            .filter((r) => r[0] <= e.steps);
          row.secondsPerStep = stepTimes(losses).mean;
          row.finalLoss = finalLoss(losses);
          row.metrics = await scored(
            e.id,
            evalKey("<flair>", e.guidance),
            file,
            () => loadGenerator(values.base!, { embeddings: [file] }),
          );
          log(`${e.id}: ${JSON.stringify(row.metrics)}`);
        } catch (err) {
          row.status = "failed";
          row.error = (err as Error).message;
          if (files) failures.push(`${e.id}: ${row.error}`);
        }
        results.push(row);
        await report();
      }
    }

    // Composability: <t1>:w AND <flair>:(1 − w) with the centre embedding, one seed set for every w.
    try {
      const file = inversionFiles.get(plan.center)?.file;
      if (!file) throw new Error("the centre inversion failed");
      const fileSha256 = await sha256File(file);
      const key = { ...evalKey("compose", centerCfg), weights, fileSha256 };
      const path = `${out}/composability.json`;
      const stored = await readJson<{ key: unknown; result: Record<string, unknown> }>(path);
      if (stored && same(stored.key, key)) {
        log(`composability: reusing ${path}`);
        composability = stored.result;
      } else {
        const muFlair = meanVolume(flairRows);
        const muT1 = meanVolume(t1Rows);
        const rows: ComposeRow[] = [];
        const model = await loadGenerator(values.base!, { embeddings: [file] });
        try {
          for (const w of weights) {
            const prompt = composePrompt(w);
            const fakes = await conceptSamples(model, prompt, {
              count,
              steps: sampleSteps,
              guidanceScale: centerCfg,
              firstSeed: firstSampleSeed,
              log: (s) => log(`composability: ${s}`),
            });
            try {
              const arrays = await Promise.all(fakes.map((t) => t.toArray()));
              await preview(`compose-w${weightText(w)}`, arrays[0]);
              const toFlair = await scoreAgainstReal(fakes, flairSet.reals, { sigma });
              const toT1 = await scoreAgainstReal(fakes, t1Set.reals, { sigma });
              rows.push({
                w,
                prompt,
                mixCoefficient: arrays.reduce((s, x) => s + mixCoefficient(x, muT1, muFlair), 0) /
                  arrays.length,
                msSsimFlair: toFlair.msSsimMean,
                msSsimT1: toT1.msSsimMean,
                mmdFlair: toFlair.mmdGaussian,
                mmdT1: toT1.mmdGaussian,
              });
            } finally {
              for (const t of fakes) t.dispose();
            }
          }
        } finally {
          model.dispose();
          releaseCachedMemory();
        }
        const sorted = [...rows].sort((a, b) => a.w - b.w);
        composability = { guidance: centerCfg, embedding: file, rows: sorted };
        await writeJson(path, { key, result: composability });
      }
      // The verdicts are computed from the stored rows, so a rerun applies the current checks.
      composability.checks = composeChecks(composability.rows as ComposeRow[]);
    } catch (error) {
      composability = { error: (error as Error).message };
      failures.push(`composability: ${(error as Error).message}`);
    }
    await report();

    // Inpainting: <lesion> from T1 volumes with a synthetic bright sphere, inpainted into the T1 template.
    try {
      const lesionFiles = await makeLesionVolumes(t1File, `${out}/lesions`, lesionCount, lesionRadius, seed);
      const files = await runInversion(
        "lesion",
        "lesion",
        centerPlan.vectors,
        "aug",
        lesionFiles,
        true,
        [plan.finalSteps],
      );
      const file = files.get(plan.finalSteps)!;
      const fileSha256 = await sha256File(file);
      const key = { ...evalKey("inpaint", centerCfg), inpaintCount, lesionRadius, fileSha256 };
      const path = `${out}/inpainting.json`;
      const stored = await readJson<{ key: unknown; result: Record<string, unknown> }>(path);
      if (stored && same(stored.key, key)) {
        log(`inpainting: reusing ${path}`);
        inpainting = stored.result;
      } else {
        const grid = { shape: [nx, ny, nz] as [number, number, number], fov: "foreground" as const, range };
        const template = await loadVolume(t1File, grid);
        const lesioned = await loadVolume(lesionFiles[0], grid);
        const center = peakCentroid(
          lesioned.data.map((v, i) => v - template.data[i]),
          [nx, ny, nz],
        );
        const spacing = Math.cbrt(
          [0, 1, 2].reduce((p, c) => p * Math.hypot(...[0, 1, 2].map((r) => template.affine[r][c])), 1),
        );
        const radius = Math.max(1, lesionRadius / spacing);
        const mask = sphereMask([nx, ny, nz], center, radius);
        const shell = shellMask([nx, ny, nz], center, radius, 2 * radius);
        await preview("lesion-training-volume", lesioned.data);
        const rows: InpaintRow[] = [];
        const model = await loadGenerator(values.base!, { embeddings: [file] });
        try {
          for (const prompt of ["<lesion>", "<t1>"]) {
            const perSample: MaskMeasure[] = [];
            for (let i = 0; i < inpaintCount; i++) {
              const { volumes } = await generate(model, {
                sampler: "ddim",
                steps: sampleSteps,
                seed: firstSampleSeed + i,
                prompt,
                guidanceScale: centerCfg,
                inpaint: { image: template.data, mask },
              });
              if (i === 0) await preview(`inpaint-${prompt.slice(1, -1)}`, volumes[0]);
              perSample.push(maskMeasure(volumes[0], template.data, mask, shell));
            }
            rows.push({ prompt, measure: meanMeasure(perSample), perSample });
            log(`inpainting ${prompt}: ${JSON.stringify(rows.at(-1)!.measure)}`);
          }
        } finally {
          model.dispose();
          releaseCachedMemory();
        }
        const [lesion, control] = rows;
        inpainting = {
          guidance: centerCfg,
          embedding: file,
          maskCenterVoxel: center,
          maskRadiusVoxels: radius,
          maskVoxels: mask.reduce((s, v) => s + v, 0),
          templateInside: maskMeasure(template.data, template.data, mask, shell).inside,
          rows,
          lesionMinusControl: {
            insideChange: lesion.measure.insideChange - control.measure.insideChange,
            contrast: lesion.measure.contrast - control.measure.contrast,
          },
        };
        await writeJson(path, { key, result: inpainting });
      }
    } catch (error) {
      inpainting = { error: (error as Error).message };
      failures.push(`inpainting: ${(error as Error).message}`);
    }
  } finally {
    for (const t of owned) t.dispose();
  }
  const md = await report();
  console.log(md);
  log(
    `wrote ${jsonPath}, ${mdPath} and previews in ${out}/previews (${
      ((performance.now() - started) / 1000).toFixed(0)
    } s)`,
  );
  if (failures.length > 0) {
    log(`failed: ${failures.join("; ")}`);
    return 1;
  }
  return 0;
}

/**
 * Writes `count` copies of the T1 volume with a bright sphere (`radiusMm`, at the 99.5th percentile × 1.2, so
 * it is as bright as the brightest tissue after normalisation) in deep white matter (see
 * {@linkcode lesionCenters}); reuses files already there. Returns their paths.
 */
async function makeLesionVolumes(
  t1File: string,
  dir: string,
  count: number,
  radiusMm: number,
  seed: number,
): Promise<string[]> {
  const paths = Array.from({ length: count }, (_, i) => `${dir}/lesion_${i}.nii.gz`);
  const missing = [];
  for (const p of paths) if (await fileSize(p) === null) missing.push(p);
  if (missing.length === 0) return paths;
  await Deno.mkdir(dir, { recursive: true });
  const t1 = await readNifti(t1File);
  const shape = t1.shape.slice(0, 3) as [number, number, number];
  const voxels = shape[0] * shape[1] * shape[2];
  const data = Float32Array.from(t1.data.subarray(0, voxels));
  const sorted = Float32Array.from(data).sort();
  const value = 1.2 * sorted[Math.floor(0.995 * (sorted.length - 1))];
  const sizes = [0, 1, 2].map((c) => Math.hypot(...[0, 1, 2].map((r) => t1.affine[r][c])));
  const centers = lesionCenters(data, shape, count, seed + 1);
  for (const [i, c] of centers.entries()) {
    const out = Float32Array.from(data);
    const r = [0, 1, 2].map((a) => Math.ceil(radiusMm / sizes[a]));
    for (let z = Math.max(0, c[2] - r[2]); z <= Math.min(shape[2] - 1, c[2] + r[2]); z++) {
      for (let y = Math.max(0, c[1] - r[1]); y <= Math.min(shape[1] - 1, c[1] + r[1]); y++) {
        for (let x = Math.max(0, c[0] - r[0]); x <= Math.min(shape[0] - 1, c[0] + r[0]); x++) {
          const d = Math.hypot((x - c[0]) * sizes[0], (y - c[1]) * sizes[1], (z - c[2]) * sizes[2]);
          if (d <= radiusMm) out[x + shape[0] * (y + shape[1] * z)] = value;
        }
      }
    }
    await writeNifti(paths[i], { data: out, shape, affine: t1.affine });
  }
  return paths;
}

/** The report's tables: sweeps with baselines, composability, inpainting, file sizes. */
function markdownReport(
  baselines: Record<string, SetScores | { error: string }>,
  rows: readonly SweepRow[],
  skipped: readonly { id: string; reason: string }[],
  composability: Record<string, unknown> | null,
  inpainting: Record<string, unknown> | null,
  sizes: { embeddings: [string, number][]; adapters: [string, number][]; base: number },
): string {
  const parts: string[] = [];
  const header = [
    "set",
    "sweep",
    "vectors",
    "cases",
    "steps",
    "cfg",
    "s/step",
    "final loss",
    "MMD Gaussian ↓",
    "MMD linear ↓",
    "MS-SSIM mean ↑",
    "MS-SSIM nearest ↑",
  ];
  const scores = (m: SetScores | undefined, error?: string) =>
    m
      ? [num(m.mmdGaussian), num(m.mmdLinear), num(m.msSsimMean), num(m.msSsimNearest)]
      : [`failed: ${(error ?? "").replaceAll("|", "\\|").split("\n")[0]}`, "", "", ""];
  const lines = [header, header.map(() => "---")];
  for (const [label, m] of Object.entries(baselines)) {
    const failed = "error" in m;
    lines.push([
      label,
      "baseline",
      ...Array(6).fill("–"),
      ...scores(failed ? undefined : m, failed ? m.error : undefined),
    ]);
  }
  for (const r of rows) {
    lines.push([
      r.id,
      r.sweeps.join(", "),
      String(r.vectors),
      String(r.cases),
      String(r.steps),
      String(r.guidance),
      r.secondsPerStep == null ? "–" : r.secondsPerStep.toFixed(2),
      r.finalLoss == null ? "–" : r.finalLoss.toFixed(4),
      ...scores(r.metrics, r.error),
    ]);
  }
  parts.push(alignedTable(lines));
  for (const s of skipped) parts.push(`Not run: ${s.id}: ${s.reason}.`);
  if (composability && "rows" in composability) {
    const c = composability as { rows: ComposeRow[]; checks: Record<string, Monotonicity>; guidance: number };
    const h = [
      "w (<t1>)",
      "prompt",
      "α̂ (FLAIR 0 → T1 1)",
      "MS-SSIM FLAIR",
      "MS-SSIM T1",
      "MMD FLAIR",
      "MMD T1",
    ];
    parts.push(alignedTable([
      h,
      h.map(() => "---"),
      ...c.rows.map((r) => [
        String(r.w),
        `\`${r.prompt}\``,
        num(r.mixCoefficient),
        num(r.msSsimFlair),
        num(r.msSsimT1),
        num(r.mmdFlair),
        num(r.mmdT1),
      ]),
    ]));
    parts.push(
      Object.entries(c.checks).map(([what, m]) =>
        `- ${what}: ${
          m.monotone
            ? "monotone"
            : `NOT monotone (against at steps ${
              m.violations.map((i) => `${c.rows[i].w}→${c.rows[i + 1].w}`).join(", ")
            })`
        }; change from w = ${c.rows[0].w} to w = ${c.rows.at(-1)!.w}: ${num(m.change)}`
      ).join("\n"),
    );
  } else if (composability) {
    parts.push(`Composability failed: ${(composability as { error: string }).error}`);
  }
  if (inpainting && "rows" in inpainting) {
    const p = inpainting as {
      rows: InpaintRow[];
      lesionMinusControl: { insideChange: number; contrast: number };
    };
    const h = [
      "prompt",
      "inside mean",
      "shell mean",
      "contrast (inside − shell)",
      "change inside",
      "change outside",
      "max |change| outside",
    ];
    parts.push(alignedTable([
      h,
      h.map(() => "---"),
      ...p.rows.map((r) => [
        `\`${r.prompt}\``,
        num(r.measure.inside),
        num(r.measure.shell),
        num(r.measure.contrast),
        num(r.measure.insideChange),
        num(r.measure.outsideChange),
        num(r.measure.outsideMaxChange),
      ]),
    ]));
    parts.push(
      `Lesion − control: change inside ${num(p.lesionMinusControl.insideChange)}, contrast ${
        num(p.lesionMinusControl.contrast)
      }.`,
    );
  } else if (inpainting) {
    parts.push(`Inpainting failed: ${(inpainting as { error: string }).error}`);
  }
  const h = ["file", "size"];
  parts.push(
    alignedTable([
      h,
      h.map(() => "---"),
      ...sizes.embeddings.map(([id, b]) => [`embedding ${id}`, bytesText(b)]),
      ...sizes.adapters.map(([kind, b]) => [`${kind} (adapter study, on brain32)`, bytesText(b)]),
      ["base model", bytesText(sizes.base)],
    ]),
  );
  return parts.join("\n\n");
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (error) {
    console.error(`ti_study: ${error instanceof Error ? error.message : error}`);
    Deno.exit(2);
  }
}
