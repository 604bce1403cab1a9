/**
 * f32 against f16 storage (`--precision f16`), side by side in one run, on a voxgen model file (default: the
 * embedded demo model, MONAI's `DiffusionModelUNet` with channels 16/32/32 and attention at the last level):
 *
 * - **Forward** at each `--sizes` (the U-Net is fully convolutional, so the trained weights run at any size
 *   whose levels halve evenly): wall and process CPU seconds of one denoising forward (noGrad, eval), and its
 *   peak GPU memory above what was live before (weights and input), from the engine's buffer pool. The two
 *   precisions alternate round by round, so both see the same machine load. `--reps 0` times only the first
 *   forward of each (for large sizes, where compiling is a small part of it).
 * - **Samples** (`--samples N`, 0 to skip): N volumes at the model's size, DDIM with `--steps`, one batch
 *   from seed 0, once with each precision (the same noise); per seed the MS-SSIM between the f16 and the f32 sample (3 scales, 5-voxel
 *   Gaussian window, data range 2: scripts/study_metrics.ts's settings for 32³ grids) and the largest voxel
 *   difference; for scale, the MS-SSIM between f32 samples of different seeds. Also each run's wall time and
 *   peak memory.
 *
 * Run: `XDG_RUNTIME_DIR=/tmp deno run -A bench/precision.ts [--sizes 32,64] [--reps 3] [--samples 4]
 *       [--steps 50] [--model FILE] [--json results.json]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import process from "node:process";
import * as V from "../mod.ts";
import { poolStats, resetPeak } from "../engine/pool.ts";
import { msSsim } from "../metrics/ssim.ts";
import { generate, type GeneratedVolumes } from "../pipelines/generate.ts";
import { DEFAULT_MODEL, disposeModel, type LoadedModel, loadModelFile } from "../pipelines/modelfile.ts";
import { unetGenerator } from "../pipelines/model.ts";
import { SMALL_GRID_MS_SSIM } from "../scripts/study_metrics.ts";
import { atomicWrite } from "../io/atomic.ts";
import { median } from "./timing.ts";

const { values } = parseArgs({
  options: {
    sizes: { type: "string", default: "32,64" },
    reps: { type: "string", default: "3" },
    samples: { type: "string", default: "4" },
    steps: { type: "string", default: "50" },
    model: { type: "string" },
    json: { type: "string" },
  },
});
const sizes = values.sizes!.split(",").filter(Boolean).map(Number);
const reps = Number(values.reps);
const samples = Number(values.samples);
const steps = Number(values.steps);
const modelPath = values.model ?? DEFAULT_MODEL;
const MiB = 2 ** 20;
const PRECISIONS = ["f32", "f16"] as const;
type P = typeof PRECISIONS[number];

await V.ready();
const problem = V.precisionProblem("f16");
if (problem) throw new Error(problem);
const load = () => Deno.loadavg().map((l) => l.toFixed(2)).join(" ");
console.log(`adapter: ${V.deviceInfo().adapter}; model ${modelPath}; load average ${load()}`);

const models: Record<P, LoadedModel> = {
  f32: await loadModelFile(modelPath),
  f16: await loadModelFile(modelPath),
};
models.f16.unet.toPrecision("f16");
const weightBytes = (p: P) => models[p].unet.parameters().reduce((n, t) => n + t.storage().bytes, 0);
console.log(
  `${models.f32.unet.numParameters().toLocaleString("en")} parameters: ${
    (weightBytes("f32") / MiB).toFixed(2)
  } MiB in f32, ${(weightBytes("f16") / MiB).toFixed(2)} MiB in f16\n`,
);

/** Wall and CPU seconds and peak pool bytes above the live bytes at the start of `fn` and its GPU work. */
async function measured<T>(
  fn: () => Promise<T> | T,
): Promise<{ value: T; wall: number; cpu: number; peak: number }> {
  await V.sync();
  resetPeak();
  const live = poolStats().liveBytes;
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const value = await fn();
  await V.sync();
  const c = process.cpuUsage(c0);
  return {
    value,
    wall: (performance.now() - t0) / 1000,
    cpu: (c.user + c.system) / 1e6,
    peak: poolStats().peakBytes - live,
  };
}

interface ForwardRow {
  size: number;
  precision: P;
  wall: number[];
  cpu: number[];
  peakMiB: number;
}

const fmt = (v: number, d = 2) => v.toFixed(d);
const forwardRows: ForwardRow[] = [];
for (const size of sizes) {
  const x = V.randn([1, models.f32.unet.config.inChannels, size, size, size], { seed: 7 });
  const rows = Object.fromEntries(
    PRECISIONS.map((p) => [p, { size, precision: p, wall: [], cpu: [], peakMiB: 0 } as ForwardRow]),
  ) as Record<P, ForwardRow>;
  // Cached pool buffers are returned to the driver after each forward: big sizes of both precisions in one
  // process would otherwise hold both pools (the peak counts buffers in use only, either way).
  const forward = (p: P) => () => {
    V.scope(() => V.noGrad(() => models[p].unet.forward(x, 500))).dispose();
  };
  const measuredForward = async (p: P) => {
    const m = await measured(forward(p));
    V.releaseCachedMemory();
    return m;
  };
  // Warm-up (compiles each precision's pipelines), then alternating rounds. With --reps 0 the warm-up
  // times are reported (they include compiling, small beside a large volume's forward).
  const report = (p: P, m: { wall: number; cpu: number; peak: number }, what: string) =>
    console.log(
      `  ${size}³ ${p} ${what}: wall ${fmt(m.wall)} s, CPU ${fmt(m.cpu)} s, peak ${fmt(m.peak / MiB, 1)} MiB`,
    );
  for (const p of PRECISIONS) {
    const m = await measuredForward(p);
    rows[p].peakMiB = m.peak / MiB;
    report(p, m, "warm-up");
    if (reps === 0) {
      rows[p].wall.push(m.wall);
      rows[p].cpu.push(m.cpu);
    }
  }
  for (let r = 0; r < reps; r++) {
    for (const p of PRECISIONS) {
      const m = await measuredForward(p);
      rows[p].wall.push(m.wall);
      rows[p].cpu.push(m.cpu);
      report(p, m, `round ${r + 1}`);
    }
  }
  x.dispose();
  forwardRows.push(rows.f32, rows.f16);
  console.log(`forward ${size}³ done; load average ${load()}`);
}

console.log(
  `\n### Forward (batch 1, ${
    reps > 0
      ? `${reps} alternating rounds; median`
      : "the first forward of each precision, compiling included"
  })\n`,
);
console.log(
  "| size | precision | wall s | CPU s | peak memory MiB | f16 / f32 time (CPU) | f16 / f32 memory |",
);
console.log("| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
for (let i = 0; i < forwardRows.length; i += 2) {
  const [a, b] = [forwardRows[i], forwardRows[i + 1]];
  for (const r of [a, b]) {
    const ratio = r === b ? `${fmt(median(b.cpu) / median(a.cpu))} | ${fmt(b.peakMiB / a.peakMiB)}` : " | ";
    console.log(
      `| ${r.size}³ | ${r.precision} | ${fmt(median(r.wall))} | ${fmt(median(r.cpu))} | ${
        fmt(r.peakMiB, 1)
      } | ${ratio} |`,
    );
  }
}

interface SampleRun {
  volumes: GeneratedVolumes;
  wall: number;
  cpu: number;
  peakMiB: number;
}

let quality: Record<string, unknown> | null = null;
if (samples > 0) {
  const run = async (p: P): Promise<SampleRun> => {
    const generator = unetGenerator(models[p]);
    const m = await measured(() => generate(generator, { sampler: "ddim", steps, seed: 0, batch: samples }));
    return { volumes: m.value, wall: m.wall, cpu: m.cpu, peakMiB: m.peak / MiB };
  };
  // One batch from seed 0: the same noise for both runs.
  const runs = { f32: await run("f32"), f16: await run("f16") };
  const [nx, ny, nz] = runs.f32.volumes.shape;
  const asTensor = (v: Float32Array) => V.tensor(v, [1, 1, nz, ny, nx]);
  const pair = async (a: Float32Array, b: Float32Array) => {
    const [ta, tb] = [asTensor(a), asTensor(b)];
    const s = msSsim(ta, tb, SMALL_GRID_MS_SSIM);
    const value = await s.item();
    for (const t of [ta, tb, s]) t.dispose();
    return value;
  };
  const perSample: Array<{ index: number; msSsim: number; maxAbsDiff: number }> = [];
  for (let i = 0; i < samples; i++) {
    const a = runs.f32.volumes.volumes[i];
    const b = runs.f16.volumes.volumes[i];
    let maxAbsDiff = 0;
    for (let k = 0; k < a.length; k++) maxAbsDiff = Math.max(maxAbsDiff, Math.abs(a[k] - b[k]));
    perSample.push({ index: i, msSsim: await pair(a, b), maxAbsDiff });
  }
  const across: number[] = [];
  for (let i = 0; i + 1 < samples; i++) {
    across.push(await pair(runs.f32.volumes.volumes[i], runs.f32.volumes.volumes[i + 1]));
  }
  const mean = (xs: number[]) => xs.reduce((s, v) => s + v, 0) / xs.length;
  console.log(
    `\n### Samples: ${samples} volumes ${nx}×${ny}×${nz}, DDIM ${steps} steps, one batch from seed 0\n`,
  );
  console.log("| precision | wall s | CPU s | peak memory MiB |");
  console.log("| --- | ---: | ---: | ---: |");
  for (const p of PRECISIONS) {
    const r = runs[p];
    console.log(`| ${p} | ${fmt(r.wall, 1)} | ${fmt(r.cpu, 1)} | ${fmt(r.peakMiB, 1)} |`);
  }
  console.log("\n| sample | MS-SSIM f16 vs f32 | max voxel difference (range [−1, 1]) |");
  console.log("| ---: | ---: | ---: |");
  for (const s of perSample) console.log(`| ${s.index} | ${fmt(s.msSsim, 7)} | ${fmt(s.maxAbsDiff, 4)} |`);
  console.log(
    `\nmean MS-SSIM f16 vs f32: ${fmt(mean(perSample.map((s) => s.msSsim)), 7)}; ` +
      (across.length
        ? `between f32 samples of neighbouring batch items (different noise): ${fmt(mean(across), 4)}`
        : ""),
  );
  quality = {
    samples,
    steps,
    shape: [nx, ny, nz],
    perSample,
    acrossSamplesF32: across,
    runs: Object.fromEntries(
      PRECISIONS.map((p) => [p, { wall: runs[p].wall, cpu: runs[p].cpu, peakMiB: runs[p].peakMiB }]),
    ),
  };
}
console.log(`\nload average at end: ${load()}`);

for (const p of PRECISIONS) disposeModel(models[p]);
if (values.json) {
  const report = { adapter: V.deviceInfo().adapter, model: modelPath, forward: forwardRows, quality };
  await atomicWrite(values.json, new TextEncoder().encode(JSON.stringify(report, null, 2) + "\n"));
}
