/**
 * The pure parts of the textual-inversion study (scripts/ti_study.ts): which inversions and evaluations a
 * sweep needs, whether a stored result can be reused, whether a series moves monotonically, the position of
 * a volume between two concepts' mean volumes, the intensity change inside a mask against its surroundings,
 * and where to put synthetic lesions. No GPU, no files: everything here is tested on values with a known
 * answer (tests/scripts/ti_study.test.ts).
 *
 * @module
 */

import { seededRandom } from "../nn/init.ts";

/**
 * Training cases of an inversion: N fixed, pre-drawn augmentations of the scan (trained on as they are), or
 * `"aug"`: the scan itself, augmented afresh at every step (as the adapter study fine-tunes).
 */
export type Cases = number | "aug";

/** What the study sweeps: one factor at a time around the centre. */
export interface SweepConfig {
  /** Vectors per token. */
  vectors: readonly number[];
  /** Training cases. */
  cases: readonly Cases[];
  /** Guidance scales. */
  guidance: readonly number[];
  /** Step checkpoints of the centre inversion (the last is every inversion's length). */
  steps: readonly number[];
  /** The centre: vectors, cases and guidance scale every other factor is varied around. */
  center: { vectors: number; cases: Cases; guidance: number };
  /** Context length of the base model's token table: at most `contextLength − 1` vectors fit. */
  contextLength: number;
}

/** One inversion: a run of `invert`, saved at each of `checkpoints` (ascending). */
export interface InversionPlan {
  /** Folder name, e.g. `v8-caug`. */
  id: string;
  vectors: number;
  cases: Cases;
  /** Steps at which an embedding file is written (the run continues from one to the next). */
  checkpoints: number[];
  /** Why the inversion cannot run (e.g. too many vectors for the context), if it cannot. */
  skip?: string;
}

/** One scored set: samples prompted with the inverted concept, one embedding file, one guidance scale. */
export interface EvaluationPlan {
  /** e.g. `v8-caug-s500-cfg2`. */
  id: string;
  /** The inversion's id. */
  inversion: string;
  steps: number;
  guidance: number;
  /** The sweeps this set belongs to ("vectors", "cases", "steps", "guidance"). */
  sweeps: string[];
}

/** The study's work list. */
export interface StudyPlan {
  inversions: InversionPlan[];
  evaluations: EvaluationPlan[];
  /** The centre inversion's id (its final embedding is used for composability). */
  center: string;
  /** Every inversion's length. */
  finalSteps: number;
}

/** `"aug"` or a positive integer, from the command line. */
export function parseCases(text: string): Cases {
  if (text === "aug") return "aug";
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) {
    throw new Error(`cases "${text}": give a positive integer (fixed augmentations) or "aug".`);
  }
  return n;
}

/** The folder name of an inversion. */
export function inversionId(vectors: number, cases: Cases): string {
  return `v${vectors}-c${cases}`;
}

/**
 * The inversions and evaluations of a one-factor-at-a-time sweep: every vectors value at the centre's cases,
 * every cases value at the centre's vectors (each trained to the last step count and scored there at the
 * centre's guidance), the centre inversion scored at every step checkpoint and at every guidance scale.
 * An inversion with more vectors than fit the context is kept with `skip` set, so the report can say so.
 */
export function planStudy(config: SweepConfig): StudyPlan {
  const { vectors, cases, guidance, steps, center, contextLength } = config;
  const positive = (name: string, list: readonly number[], integer: boolean) => {
    for (const v of list) {
      if (!(v > 0) || !Number.isFinite(v) || (integer && !Number.isInteger(v))) {
        throw new Error(`planStudy: ${name} ${v} is not a positive ${integer ? "integer" : "number"}.`);
      }
    }
  };
  for (const [name, list] of [["vectors", vectors], ["guidance", guidance], ["steps", steps]] as const) {
    if (list.length === 0) throw new Error(`planStudy: the ${name} list is empty.`);
  }
  positive("vectors", [...vectors, center.vectors], true);
  positive("guidance", [...guidance, center.guidance], false);
  positive("steps", steps, true);
  if (cases.length === 0) throw new Error("planStudy: the cases list is empty.");
  for (const c of [...cases, center.cases]) parseCases(String(c));
  const sortedSteps = [...new Set(steps)].sort((a, b) => a - b);
  const finalSteps = sortedSteps.at(-1)!;
  const centerId = inversionId(center.vectors, center.cases);
  const inversions = new Map<string, InversionPlan>();
  const addInversion = (v: number, c: Cases) => {
    const id = inversionId(v, c);
    if (inversions.has(id)) return;
    const plan: InversionPlan = { id, vectors: v, cases: c, checkpoints: [finalSteps] };
    if (v > contextLength - 1) {
      plan.skip = `${v} vectors do not fit a context of ${contextLength} (the first slot is <bos>: at most ` +
        `${contextLength - 1})`;
    }
    inversions.set(id, plan);
  };
  addInversion(center.vectors, center.cases);
  inversions.get(centerId)!.checkpoints = sortedSteps;
  for (const v of vectors) addInversion(v, center.cases);
  for (const c of cases) addInversion(center.vectors, c);

  const evaluations = new Map<string, EvaluationPlan>();
  const addEvaluation = (inversion: string, s: number, g: number, sweep: string) => {
    const id = `${inversion}-s${s}-cfg${g}`;
    const existing = evaluations.get(id);
    if (existing) {
      if (!existing.sweeps.includes(sweep)) existing.sweeps.push(sweep);
      return;
    }
    evaluations.set(id, { id, inversion, steps: s, guidance: g, sweeps: [sweep] });
  };
  for (const v of vectors) {
    addEvaluation(inversionId(v, center.cases), finalSteps, center.guidance, "vectors");
  }
  for (const c of cases) addEvaluation(inversionId(center.vectors, c), finalSteps, center.guidance, "cases");
  for (const s of sortedSteps) addEvaluation(centerId, s, center.guidance, "steps");
  for (const g of guidance) addEvaluation(centerId, finalSteps, g, "guidance");
  const skipped = new Set([...inversions.values()].filter((p) => p.skip).map((p) => p.id));
  return {
    inversions: [...inversions.values()],
    evaluations: [...evaluations.values()].filter((e) => !skipped.has(e.inversion)),
    center: centerId,
    finalSteps,
  };
}

/** What to do about one checkpoint of an inversion. */
export type CheckpointAction =
  | { action: "reuse" }
  | { action: "run" }
  | { action: "refuse"; reason: string };

/** What the study stored about an inversion (`<out>/inversions/<id>/training.json`). */
export interface InversionRecord<K> {
  /** The settings (all but the step count) the run was made with. */
  key: K;
  /** Checkpoints written: steps → command and wall-clock seconds of the invocation that wrote it. */
  checkpoints: Record<string, { command: string; seconds: number }>;
}

/**
 * Whether checkpoint `steps` of an inversion can be reused, must be (re)run, or cannot be made:
 * reused when the record has the same settings and lists it and its file exists; refused when the
 * settings differ (the run folder belongs to another configuration), or when the run folder's checkpoint is
 * already past `steps` and this file is missing (the run cannot go back); otherwise run (`invert` resumes
 * from the run folder's checkpoint, `runStep` steps in, 0 when there is none).
 */
export function checkpointAction<K>(
  record: InversionRecord<K> | null,
  key: K,
  steps: number,
  fileExists: boolean,
  runStep: number,
): CheckpointAction {
  if (record && JSON.stringify(record.key) !== JSON.stringify(key)) {
    return { action: "refuse", reason: "it holds an inversion with other settings" };
  }
  if (record?.checkpoints[String(steps)] && fileExists) return { action: "reuse" };
  if (runStep > steps) {
    return {
      action: "refuse",
      reason: `its run is at step ${runStep}, past the missing checkpoint at ${steps}`,
    };
  }
  return { action: "run" };
}

/** Whether a series moves the expected way at every step (ties count as moves the expected way). */
export interface Monotonicity {
  monotone: boolean;
  /** Indices i where values[i] → values[i + 1] goes the other way. */
  violations: number[];
  /** Last value − first value: how far the series moves overall (a monotone series may barely move). */
  change: number;
}

/** Checks that `values` never decrease ("increasing") or never increase ("decreasing"). */
export function checkMonotone(
  values: readonly number[],
  expected: "increasing" | "decreasing",
): Monotonicity {
  if (values.some((v) => !Number.isFinite(v))) {
    throw new Error(`checkMonotone: the values must be finite numbers (got ${values}).`);
  }
  const sign = expected === "increasing" ? 1 : -1;
  const violations: number[] = [];
  for (let i = 0; i + 1 < values.length; i++) {
    if (sign * (values[i + 1] - values[i]) < 0) violations.push(i);
  }
  const change = values.length > 0 ? values[values.length - 1] - values[0] : 0;
  return { monotone: violations.length === 0, violations, change };
}

/**
 * Where `x` lies between two mean volumes: the α that minimises ‖x − (α·a + (1 − α)·b)‖², i.e.
 * ⟨x − b, a − b⟩/‖a − b‖² — 1 at `a`, 0 at `b`, and the projection in between (or beyond).
 */
export function mixCoefficient(x: ArrayLike<number>, a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (x.length !== a.length || a.length !== b.length) {
    throw new Error(`mixCoefficient: ${x.length}, ${a.length} and ${b.length} values; they must match.`);
  }
  let dot = 0;
  let norm = 0;
  for (let i = 0; i < x.length; i++) {
    const d = a[i] - b[i];
    dot += (x[i] - b[i]) * d;
    norm += d * d;
  }
  if (norm === 0) throw new Error("mixCoefficient: the two mean volumes are identical.");
  return dot / norm;
}

/** The mean of volumes given as equal-length arrays. */
export function meanVolume(volumes: readonly ArrayLike<number>[]): Float32Array {
  if (volumes.length === 0) throw new Error("meanVolume: no volumes.");
  const out = new Float64Array(volumes[0].length);
  for (const v of volumes) {
    if (v.length !== out.length) throw new Error("meanVolume: the volumes differ in size.");
    for (let i = 0; i < out.length; i++) out[i] += v[i] / volumes.length;
  }
  return Float32Array.from(out);
}

/** Intensities of an inpainted volume in its mask and around it, against the volume it was made from. */
export interface MaskMeasure {
  /** Mean intensity inside the mask after inpainting. */
  inside: number;
  /** Mean intensity of the shell around the mask after inpainting. */
  shell: number;
  /** inside − shell: how much the masked region stands out from its surroundings. */
  contrast: number;
  /** Mean change (after − before) inside the mask. */
  insideChange: number;
  /** Mean change (after − before) outside the mask: 0 when the known region is kept. */
  outsideChange: number;
  /** Largest |after − before| outside the mask. */
  outsideMaxChange: number;
}

/**
 * Measures an inpainting: `mask` (non-zero = regenerated) and `shell` (non-zero = the surroundings to compare
 * with, outside the mask) select voxels of `after` and `before` (all the same length).
 */
export function maskMeasure(
  after: ArrayLike<number>,
  before: ArrayLike<number>,
  mask: ArrayLike<number>,
  shell: ArrayLike<number>,
): MaskMeasure {
  const n = after.length;
  if (before.length !== n || mask.length !== n || shell.length !== n) {
    throw new Error(
      `maskMeasure: after ${n}, before ${before.length}, mask ${mask.length}, shell ${shell.length} voxels; ` +
        "they must match.",
    );
  }
  let inside = 0, shellSum = 0, change = 0, outChange = 0, outMax = 0;
  let nIn = 0, nShell = 0, nOut = 0;
  for (let i = 0; i < n; i++) {
    const d = after[i] - before[i];
    if (mask[i] !== 0) {
      inside += after[i];
      change += d;
      nIn++;
      continue;
    }
    outChange += d;
    outMax = Math.max(outMax, Math.abs(d));
    nOut++;
    if (shell[i] !== 0) {
      shellSum += after[i];
      nShell++;
    }
  }
  if (nIn === 0 || nShell === 0) {
    throw new Error(`maskMeasure: ${nIn} voxels in the mask and ${nShell} in the shell; both must be > 0.`);
  }
  return {
    inside: inside / nIn,
    shell: shellSum / nShell,
    contrast: inside / nIn - shellSum / nShell,
    insideChange: change / nIn,
    outsideChange: nOut > 0 ? outChange / nOut : 0,
    outsideMaxChange: outMax,
  };
}

/** Voxels (x fastest) within `radius` of `center` on a grid of `shape`, minus those within `inner`: a shell. */
export function shellMask(
  shape: readonly [number, number, number],
  center: readonly number[],
  inner: number,
  radius: number,
): Float32Array {
  const [nx, ny, nz] = shape;
  const out = new Float32Array(nx * ny * nz);
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++) {
        const d2 = (x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2;
        if (d2 > inner * inner && d2 <= radius * radius) out[x + nx * (y + ny * z)] = 1;
      }
    }
  }
  return out;
}

/**
 * The centroid [x, y, z] of the voxels of `values` (on a grid of `shape`) at or above half the maximum: where
 * a bright blob added to a volume is, from the difference of the two (small differences elsewhere, e.g.
 * from renormalisation, do not pull it).
 */
export function peakCentroid(values: ArrayLike<number>, shape: readonly [number, number, number]): number[] {
  const [nx, ny] = shape;
  let max = -Infinity;
  for (let i = 0; i < values.length; i++) max = Math.max(max, values[i]);
  if (!(max > 0)) throw new Error("peakCentroid: no positive voxel.");
  const sum = [0, 0, 0];
  let n = 0;
  for (let i = 0; i < values.length; i++) {
    if (!(values[i] >= max / 2)) continue;
    sum[0] += i % nx;
    sum[1] += Math.floor(i / nx) % ny;
    sum[2] += Math.floor(i / (nx * ny));
    n++;
  }
  return sum.map((s) => s / n);
}

/**
 * `count` voxel positions [x, y, z] for synthetic lesions in a volume: drawn (seeded) among the voxels of the
 * central half of the foreground's bounding box (the foreground: values above 10 % of the 99th percentile)
 * whose value is at least the 90th percentile of the foreground — in a T1 image, deep white matter.
 */
export function lesionCenters(
  data: ArrayLike<number>,
  shape: readonly [number, number, number],
  count: number,
  seed: number,
): number[][] {
  const [nx, ny, nz] = shape;
  const sorted = Float32Array.from(data).sort();
  const threshold = 0.1 * sorted[Math.floor(0.99 * (sorted.length - 1))];
  const lo = [Infinity, Infinity, Infinity];
  const hi = [-Infinity, -Infinity, -Infinity];
  const foreground: number[] = [];
  for (let i = 0; i < data.length; i++) {
    if (!(data[i] > threshold)) continue;
    foreground.push(data[i]);
    const p = [i % nx, Math.floor(i / nx) % ny, Math.floor(i / (nx * ny))];
    for (let a = 0; a < 3; a++) {
      lo[a] = Math.min(lo[a], p[a]);
      hi[a] = Math.max(hi[a], p[a]);
    }
  }
  if (foreground.length === 0) throw new Error("lesionCenters: the volume has no foreground.");
  foreground.sort((a, b) => a - b);
  const bright = foreground[Math.floor(0.9 * (foreground.length - 1))];
  const candidates: number[][] = [];
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++) {
        const p = [x, y, z];
        const central = p.every((v, a) => Math.abs(v - (lo[a] + hi[a]) / 2) <= (hi[a] - lo[a]) / 4);
        if (central && data[x + nx * (y + ny * z)] >= bright) candidates.push(p);
      }
    }
  }
  if (candidates.length === 0) throw new Error("lesionCenters: no bright voxel in the central region.");
  const random = seededRandom(seed);
  return Array.from({ length: count }, () => candidates[Math.floor(random() * candidates.length)]);
}
