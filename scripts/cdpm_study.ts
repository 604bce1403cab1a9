/**
 * The cDPM quality study (docs/cdpm.md, "How to run the study"): for each model, N volumes generated with
 * fixed seeds through the generation pipeline are scored against N real augmentations with seeds no
 * training run draws, per view (axial, coronal, sagittal: MMD² of pooled slices, MS-SSIM to the nearest
 * real volume, diversity against the real set's) and by inter-slice roughness ρ along each axis
 * (scripts/cdpm_metrics.ts). A reference row scores N other real augmentations the same way: what a
 * perfect model would get. Prints markdown tables, writes JSON (atomically) and PNG previews.
 *
 * A model whose volumes are shallower than they are wide (nz < nx, e.g. 48 × 48 × 16 from `train --slab`)
 * is a slab model: its real set is one random slab of nz slices of each real volume (cubic, nx³), and views
 * whose slices are too small for MS-SSIM (a thin slab's coronal and sagittal) are left out.
 *
 *   deno run -A scripts/cdpm_study.ts --data ../shared/data/MNI152_2009_template.nii.gz \
 *     --model cdpm=runs/slices48/model.safetensors --model independent=runs/independent48/model.safetensors \
 *     --model slabs=runs/slabs48/model.safetensors --count 16 --steps 25 --batch 2 \
 *     --json docs/cdpm-study.json --previews docs/cdpm-study
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ready } from "../engine/device.ts";
import { atomicWrite } from "../io/atomic.ts";
import { writeSlicesPng } from "../io/png.ts";
import { seededRandom } from "../nn/init.ts";
import { listNiftiFiles } from "../pipelines/dataset.ts";
import { generate, type Generator } from "../pipelines/generate.ts";
import { loadGenerator } from "../pipelines/generators.ts";
import { slabStarts } from "../pipelines/slabs.ts";
import type { MsSsimOptions } from "../metrics/ssim.ts";
import { type SetStudy, studySet, type View, viewFitsMsSsim, VIEWS, viewSigma } from "./cdpm_metrics.ts";
import { evaluationSeeds, realTargetSet, SMALL_GRID_MS_SSIM, trainingAugmentSeeds } from "./study_metrics.ts";

const HELP =
  `Usage: deno run -A scripts/cdpm_study.ts --data FILES --model NAME=FILE [--model NAME=FILE …] [options]

  --data SPEC        the training volumes (NIfTI files, folders or globs, comma-separated)
  --model NAME=FILE  a model to score (repeat); slice models are built stage by stage, slab models give slabs
  --count N          generated and real volumes per set (default 16)
  --steps N          DDIM steps (per stage for slice models; default 25)
  --batch N          volumes generated together (default 2); batch i uses seed first-seed + i
  --first-seed N     default 1000
  --json FILE        write the results as JSON
  --previews DIR     write a PNG of the first volume of every set
`;

/** The recipe of the study's training runs (deno.json): their augmentation seeds are kept out. */
const TRAINING = { seed: 0, steps: 1500, batch: 2 };

/** One scored set: a model or the real reference. */
export interface StudyRow {
  /** Model name (or "real"). */
  name: string;
  /** Model file (absent for the reference). */
  file?: string;
  /** Volume shape [nx, ny, nz]. */
  shape: number[];
  /** Whether the set holds slabs. */
  slab: boolean;
  /** Number of weights. */
  parameters?: number;
  /** Wall seconds per generated volume. */
  secondsPerVolume?: number;
  /** The scores. */
  scores: SetStudy;
}

/** What {@linkcode runStudy} needs. */
export interface StudyOptions {
  /** The training volumes (NIfTI paths). */
  files: string[];
  /** The models to score, by name. */
  models: ReadonlyArray<{ name: string; file: string }>;
  /** Generated and real volumes per set (≥ 4). */
  count: number;
  /** DDIM steps (per stage for slice models). */
  steps: number;
  /** Volumes generated together; batch i uses seed firstSeed + i. */
  batch: number;
  /** Seed of the first batch. */
  firstSeed: number;
  /** MS-SSIM settings (default {@linkcode SMALL_GRID_MS_SSIM}; its spatialDims is replaced by 2). */
  msSsim?: MsSsimOptions;
  /** Folder for a PNG of the first volume of every set. */
  previews?: string;
  /** Progress lines. */
  log?: (line: string) => void;
}

/** Real volumes on one grid: targets and an independent reference set, as CPU arrays. */
interface RealGrid {
  shape: number[];
  targets: Float32Array[];
  reference: Float32Array[];
  sigmas: Partial<Record<View, number>>;
  realDiversity?: Partial<Record<View, number>>;
}

/** Cuts `volumes` (cubic n³) to slabs of `depth` slices at seeded random heights. */
function slabsOf(volumes: Float32Array[], n: number, depth: number, seed: number): Float32Array[] {
  const starts = slabStarts(volumes.length, n, depth, seededRandom(seed));
  return volumes.map((v, i) => v.slice(starts[i] * n * n, (starts[i] + depth) * n * n));
}

/** The real sets on a model's grid (loaded once per grid). */
async function realGrid(
  cache: Map<string, RealGrid>,
  files: string[],
  model: Generator,
  count: number,
  msSsim: MsSsimOptions,
): Promise<RealGrid> {
  const [nx, ny, nz] = model.volume.shape;
  const key = `${nx}x${ny}x${nz}`;
  const hit = cache.get(key);
  if (hit) return hit;
  if (nx !== ny || nz > nx) {
    throw new Error(
      `a model of ${key} volumes: the study takes cubic volumes or slabs of them (nz < nx = ny).`,
    );
  }
  const seeds = evaluationSeeds(
    2 * count,
    trainingAugmentSeeds(TRAINING.seed, TRAINING.steps, TRAINING.batch),
  );
  const { sources, reals } = await realTargetSet(files, {
    volume: { ...model.volume, shape: [nx, nx, nx] },
  }, seeds);
  const arrays = await Promise.all(reals.map((t) => t.toArray()));
  for (const t of [...sources, ...reals]) t.dispose();
  let targets = arrays.slice(0, count);
  let reference = arrays.slice(count);
  if (nz < nx) {
    targets = slabsOf(targets, nx, nz, 1);
    reference = slabsOf(reference, nx, nz, 2);
  }
  const shape = [nx, ny, nz];
  const sigmas: Partial<Record<View, number>> = {};
  for (const view of VIEWS) {
    if (viewFitsMsSsim(shape, view, msSsim)) sigmas[view] = viewSigma(targets, shape, view);
  }
  const grid = { shape, targets, reference, sigmas };
  cache.set(key, grid);
  return grid;
}

/** `count` volumes of `model` (batches of `batch`, batch i with seed firstSeed + i) and the wall time. */
async function generateSet(
  model: Generator,
  opts: { count: number; steps: number; batch: number; firstSeed: number; log: (s: string) => void },
): Promise<{ volumes: Float32Array[]; seconds: number }> {
  const volumes: Float32Array[] = [];
  const began = performance.now();
  for (let i = 0; volumes.length < opts.count; i++) {
    const batch = Math.min(opts.batch, opts.count - volumes.length);
    const out = await generate(model, {
      sampler: "ddim",
      steps: opts.steps,
      seed: opts.firstSeed + i,
      batch,
    });
    volumes.push(...out.volumes);
    opts.log(`${volumes.length}/${opts.count} volumes`);
  }
  return { volumes, seconds: (performance.now() - began) / 1000 };
}

const fmt = (v: number | undefined, digits = 3) => v === undefined ? "—" : v.toFixed(digits);

/** The study's two markdown tables: per view, and roughness with cost. */
export function studyMarkdown(rows: readonly StudyRow[]): string {
  const grid = (r: StudyRow) => `${r.shape.join("×")}${r.slab ? " slabs" : ""}`;
  const lines = [
    "| set | grid | view | MMD² Gaussian ×10³ ↓ | MMD² linear ↓ | MS-SSIM to nearest real | diversity (real) |",
    "| --- | --- | --- | ---: | ---: | ---: | ---: |",
  ];
  for (const r of rows) {
    for (const view of VIEWS) {
      const s = r.scores.views[view];
      if (!s) continue;
      lines.push(
        `| ${r.name} | ${grid(r)} | ${view} | ${fmt(1000 * s.mmdGaussian, 2)} | ${fmt(s.mmdLinear, 2)} | ${
          fmt(s.msSsimNearest)
        } | ${fmt(s.diversity)} (${fmt(r.scores.realDiversity[view])}) |`,
      );
    }
  }
  if (lines.length === 2) lines.push("(no view's slices are large enough for MS-SSIM on these grids)");
  lines.push(
    "",
    "| set | grid | ρ_z (stacking axis) | ρ_y | ρ_x | s / volume | parameters |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
  );
  for (const r of rows) {
    const [x, y, z] = r.scores.rho;
    lines.push(
      `| ${r.name} | ${grid(r)} | ${fmt(z, 2)} | ${fmt(y, 2)} | ${fmt(x, 2)} | ${
        fmt(r.secondsPerVolume, 1)
      } | ${r.parameters?.toLocaleString("en-US") ?? "—"} |`,
    );
  }
  return lines.join("\n");
}

/**
 * Scores every model of `opts.models` (loaded one at a time through `loadGenerator`) and, once per grid, a
 * reference set of other real augmentations; returns the rows in that order.
 */
export async function runStudy(opts: StudyOptions): Promise<StudyRow[]> {
  const { files, count, steps, batch, firstSeed } = opts;
  const log = opts.log ?? (() => {});
  const msSsim = opts.msSsim ?? SMALL_GRID_MS_SSIM;
  const grids = new Map<string, RealGrid>();
  const rows: StudyRow[] = [];
  for (const { name, file } of opts.models) {
    const model = await loadGenerator(file);
    try {
      const grid = await realGrid(grids, files, model, count, msSsim);
      const slab = grid.shape[2] < grid.shape[0];
      if (!grid.realDiversity) {
        log(`real reference on ${grid.shape.join("×")}`);
        const scores = await studySet(grid.reference, grid.targets, grid.shape, {
          msSsim,
          sigmas: grid.sigmas,
        });
        grid.realDiversity = scores.realDiversity;
        rows.push({ name: "real (other augmentations)", shape: grid.shape, slab, scores });
        if (opts.previews) {
          await writeSlicesPng(
            `${opts.previews}/real_${grid.shape.join("x")}.png`,
            grid.targets[0],
            grid.shape,
            { window: model.volume.range },
          );
        }
      }
      log(`${name}: generating ${count} volumes (${file})`);
      const set = await generateSet(model, {
        count,
        steps,
        batch,
        firstSeed,
        log: (s) => log(`${name}: ${s}`),
      });
      const scores = await studySet(set.volumes, grid.targets, grid.shape, {
        msSsim,
        sigmas: grid.sigmas,
        realDiversity: grid.realDiversity,
      });
      rows.push({
        name,
        file,
        shape: grid.shape,
        slab,
        parameters: model.parameterCount,
        secondsPerVolume: set.seconds / count,
        scores,
      });
      if (opts.previews) {
        await writeSlicesPng(`${opts.previews}/${name}.png`, set.volumes[0], grid.shape, {
          window: model.volume.range,
        });
      }
      log(`${name}: scored`);
    } finally {
      model.dispose();
    }
  }
  return rows;
}

/** Runs the study with `args`. */
export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      data: { type: "string", multiple: true },
      model: { type: "string", multiple: true },
      count: { type: "string", default: "16" },
      steps: { type: "string", default: "25" },
      batch: { type: "string", default: "2" },
      "first-seed": { type: "string", default: "1000" },
      json: { type: "string" },
      previews: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  if (!values.data?.length || !values.model?.length) {
    throw new Error("--data FILES and at least one --model NAME=FILE are required (--help).");
  }
  const models = values.model.map((spec) => {
    const eq = spec.indexOf("=");
    if (eq < 1 || eq === spec.length - 1) throw new Error(`--model ${spec}: expected NAME=FILE.`);
    return { name: spec.slice(0, eq), file: spec.slice(eq + 1) };
  });
  const count = Number(values.count);
  const steps = Number(values.steps);
  const batch = Number(values.batch);
  const firstSeed = Number(values["first-seed"]);
  if (!Number.isInteger(count) || count < 4) throw new Error(`--count ${values.count}: an integer ≥ 4.`);
  for (const [name, v] of [["steps", steps], ["batch", batch]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`--${name} ${v}: a positive integer.`);
  }
  if (!Number.isInteger(firstSeed) || firstSeed < 0) throw new Error(`--first-seed: a non-negative integer.`);
  if (values.previews) await Deno.mkdir(values.previews, { recursive: true }); // fail before the long work
  const files = await listNiftiFiles(values.data.flatMap((d) => d.split(",")));
  await ready();
  const started = performance.now();
  const rows = await runStudy({
    files,
    models,
    count,
    steps,
    batch,
    firstSeed,
    previews: values.previews,
    log: (s) => console.error(`${s} (${((performance.now() - started) / 1000).toFixed(0)} s)`),
  });
  console.log(studyMarkdown(rows));
  if (values.json) {
    const json = {
      data: files,
      count,
      steps,
      batch,
      firstSeed,
      sampler: "ddim",
      msSsim: SMALL_GRID_MS_SSIM,
      rows,
    };
    await atomicWrite(values.json, new TextEncoder().encode(JSON.stringify(json, null, 2) + "\n"));
    console.error(`wrote ${values.json}`);
  }
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    console.error(`cdpm_study: ${(error as Error).message}`);
    Deno.exit(1);
  }
}
