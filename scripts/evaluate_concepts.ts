/**
 * Per-concept evaluation of a model with a token table (e.g. the conditional demo model): for every concept of
 * its training manifest, N samples prompted with that concept are scored against the augmented real volumes of
 * EVERY concept (Gaussian MMD with one σ for all cells, linear MMD, mean MS-SSIM). The diagonal says how close
 * each concept's samples are to its own data; the confusion check asks, for every ordered pair A ≠ B, whether
 * samples of A are closer to real A than to real B (by Gaussian MMD and by MS-SSIM). A reference row scores a
 * second, independent set of real augmentations the same way: how far apart the concepts are in these metrics
 * at best. Prints markdown tables and writes JSON (atomically).
 *
 *   deno run -A scripts/evaluate_concepts.ts --model runs/cond-demo/run/model.safetensors \
 *     --data runs/cond-demo/manifest.json --count 8 --steps 20 --cfg 1,2 --json docs/models/brain32c-eval.json
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ready } from "../engine/device.ts";
import { fromData, type Tensor } from "../engine/tensor.ts";
import { atomicWrite } from "../io/atomic.ts";
import { writeSlicesPng } from "../io/png.ts";
import { medianDistance } from "../metrics/mmd.ts";
import { generate, type Generator } from "../pipelines/generate.ts";
import { loadGenerator } from "../pipelines/generators.ts";
import { type Manifest, readManifest } from "../pipelines/manifest.ts";
import { evaluationSeeds, realTargetSet, scoreAgainstReal } from "./study_metrics.ts";

/** Scores of one generated set (rows: the prompted concept) against one concept's real set (columns). */
export interface CellScores {
  mmdGaussian: number;
  mmdLinear: number;
  msSsimMean: number;
}

/** One table: `cells[a][b]` scores the set of concept a against the real volumes of concept b. */
export interface ConceptTable {
  concepts: string[];
  cells: CellScores[][];
  /** The Gaussian kernel's σ used for every cell. */
  sigma: number;
  /** Ordered pairs [a, b] (a ≠ b) where set a is NOT closer to real a than to real b, per metric. */
  confusedByMmd: [string, string][];
  confusedByMsSsim: [string, string][];
}

/**
 * Scores `sets[a]` against `reals[b]` for every pair of concepts, with one Gaussian σ for all cells (`sigma`,
 * default: the median distance between all set volumes and all real volumes), and lists the confused pairs.
 */
export async function scoreConcepts(
  concepts: readonly string[],
  sets: readonly (readonly Tensor[])[],
  reals: readonly (readonly Tensor[])[],
  sigma?: number,
): Promise<ConceptTable> {
  if (sets.length !== concepts.length || reals.length !== concepts.length) {
    throw new Error(
      `scoreConcepts: ${concepts.length} concepts but ${sets.length} sets, ${reals.length} reals`,
    );
  }
  const rows = async (ts: readonly Tensor[]) => await Promise.all(ts.map((t) => t.toArray()));
  const s = sigma ?? medianDistance(await rows(sets.flat()), await rows(reals.flat()));
  const cells: CellScores[][] = [];
  for (const set of sets) {
    const row: CellScores[] = [];
    for (const real of reals) {
      const r = await scoreAgainstReal(set, real, { sigma: s });
      row.push({ mmdGaussian: r.mmdGaussian, mmdLinear: r.mmdLinear, msSsimMean: r.msSsimMean });
    }
    cells.push(row);
  }
  const confused = (worse: (own: CellScores, other: CellScores) => boolean) =>
    concepts.flatMap((a, i) =>
      concepts.flatMap((b, j) =>
        i !== j && worse(cells[i][i], cells[i][j]) ? [[a, b] as [string, string]] : []
      )
    );
  return {
    concepts: [...concepts],
    cells,
    sigma: s,
    confusedByMmd: confused((own, other) => own.mmdGaussian >= other.mmdGaussian),
    confusedByMsSsim: confused((own, other) => own.msSsimMean <= other.msSsimMean),
  };
}

/** `count` samples of `model` prompted with `prompt` (DDIM, seeds firstSeed + i), as [1, 1, nz, ny, nx]. */
export async function conceptSamples(
  model: Generator,
  prompt: string,
  opts: {
    count: number;
    steps: number;
    guidanceScale: number;
    firstSeed?: number;
    log?: (s: string) => void;
  },
): Promise<Tensor[]> {
  const [nx, ny, nz] = model.volume.shape;
  const out: Tensor[] = [];
  for (let i = 0; i < opts.count; i++) {
    const { volumes } = await generate(model, {
      sampler: "ddim",
      steps: opts.steps,
      seed: (opts.firstSeed ?? 1000) + i,
      prompt,
      guidanceScale: opts.guidanceScale,
    });
    out.push(fromData(volumes[0], [1, 1, nz, ny, nx]));
    opts.log?.(`${prompt} cfg ${opts.guidanceScale}: sample ${i + 1}/${opts.count}`);
  }
  return out;
}

/** The files of each concept in `manifest` (items with exactly one token). */
export function filesByConcept(manifest: Manifest): Map<string, string[]> {
  const files = new Map<string, string[]>(manifest.concepts.map((c) => [c, []]));
  for (const item of manifest.items) {
    if (item.tokens.length === 1) files.get(item.tokens[0])!.push(item.file);
  }
  for (const [concept, list] of files) {
    if (list.length === 0) throw new Error(`concept ${concept}: no manifest item has it as its only token`);
  }
  return files;
}

/** The table as markdown: one block per metric, rows = prompted concept, columns = real set. */
export function conceptTableMarkdown(title: string, t: ConceptTable): string {
  const metric = (name: string, pick: (c: CellScores) => number) =>
    [
      `| ${title}: ${name} | ${t.concepts.map((c) => `real ${c}`).join(" | ")} |`,
      `| --- |${" ---: |".repeat(t.concepts.length)}`,
      ...t.concepts.map((c, i) =>
        `| ${c} | ${t.cells[i].map((cell) => pick(cell).toPrecision(4)).join(" | ")} |`
      ),
    ].join("\n");
  const pairs = (ps: [string, string][]) =>
    ps.length === 0 ? "none" : ps.map(([a, b]) => `${a}→${b}`).join(", ");
  return [
    metric(`Gaussian MMD² (σ = ${t.sigma.toPrecision(4)}) ↓`, (c) => c.mmdGaussian),
    metric("linear MMD² ↓", (c) => c.mmdLinear),
    metric("MS-SSIM mean ↑", (c) => c.msSsimMean),
    `Confused pairs (samples of A not closer to real A than to real B): by MMD ${pairs(t.confusedByMmd)}; ` +
    `by MS-SSIM ${pairs(t.confusedByMsSsim)}.`,
  ].join("\n\n");
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string" },
      data: { type: "string" },
      count: { type: "string", default: "8" },
      steps: { type: "string", default: "20" },
      cfg: { type: "string", default: "1,2" },
      json: { type: "string" },
      previews: { type: "string" },
    },
  });
  if (!values.model || !values.data) throw new Error("--model MODEL and --data MANIFEST.json are required");
  const count = Number(values.count);
  const steps = Number(values.steps);
  const scales = values.cfg!.split(",").map(Number);
  if (!(count >= 2) || !(steps >= 1) || scales.some((s) => !(s >= 1))) {
    throw new Error("--count must be ≥ 2, --steps ≥ 1, --cfg a list of scales ≥ 1");
  }
  if (values.previews) await Deno.mkdir(values.previews, { recursive: true }); // fail before the long work
  await ready();
  const model = await loadGenerator(values.model);
  const owned: Tensor[] = [];
  try {
    const known = model.conditions?.tokens?.concepts().map((c) => c.name) ?? [];
    const files = filesByConcept(await readManifest(values.data));
    const concepts = [...files.keys()];
    const unknown = concepts.filter((c) => !known.includes(c));
    if (unknown.length > 0) throw new Error(`the model has no token for ${unknown.join(", ")}`);
    // Two disjoint sets of evaluation augmentations: the target sets and the real-vs-real reference.
    const seeds = evaluationSeeds(2 * count);
    const info = { volume: model.volume };
    const reals: Tensor[][] = [];
    const reference: Tensor[][] = [];
    for (const c of concepts) {
      const target = await realTargetSet(files.get(c)!, info, seeds.slice(0, count));
      const other = await realTargetSet(files.get(c)!, info, seeds.slice(count));
      owned.push(...target.sources, ...target.reals, ...other.sources, ...other.reals);
      reals.push(target.reals);
      reference.push(other.reals);
    }
    const referenceTable = await scoreConcepts(concepts, reference, reals);
    const tables: Record<string, ConceptTable> = {};
    const started = performance.now();
    const log = (s: string) => console.error(`${s} (${((performance.now() - started) / 1000).toFixed(0)} s)`);
    console.log(conceptTableMarkdown("real (other augmentations)", referenceTable));
    for (const cfg of scales) {
      const sets: Tensor[][] = [];
      for (const c of concepts) {
        const set = await conceptSamples(model, c, { count, steps, guidanceScale: cfg, log });
        owned.push(...set);
        sets.push(set);
        if (values.previews) {
          const name = c.replace(/[^a-z0-9]+/gi, "");
          await writeSlicesPng(
            `${values.previews}/${name}_cfg${cfg}.png`,
            await set[0].toArray(),
            model.volume.shape,
            {
              window: model.volume.range,
            },
          );
        }
      }
      tables[`cfg ${cfg}`] = await scoreConcepts(concepts, sets, reals, referenceTable.sigma);
      console.log("\n" + conceptTableMarkdown(`samples, cfg ${cfg}`, tables[`cfg ${cfg}`]));
    }
    if (values.json) {
      const json = {
        model: values.model,
        data: values.data,
        count,
        steps,
        reference: referenceTable,
        tables,
      };
      await atomicWrite(values.json, new TextEncoder().encode(JSON.stringify(json, null, 2) + "\n"));
    }
  } finally {
    for (const t of owned) t.dispose();
    model.dispose();
  }
}

if (import.meta.main) await main();
