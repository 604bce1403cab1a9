/**
 * cDPM's cost claim, measured: peak GPU memory and time of one training step and of generating one volume,
 * as the depth of the volume grows, for a slice model (cDPM: a fixed number of slots per step and per
 * stage) and for a 3-D U-Net on the whole volume. Writes a JSON file and prints a Markdown table.
 *
 *   nice -n 10 deno run -A scripts/cdpm_cost.ts --depths 32,64,128 --size 32 --out docs/cdpm-cost.json
 *
 * Peak memory is `memory().peakBytes` above what was live before the call (weights, optimizer-free; the
 * input batch counts as live before). Times are wall-clock on this machine (shared CPU cores), one warm-up
 * run and the median of `--repeats` runs.
 *
 * @module
 */

import process from "node:process";
import { parseArgs } from "node:util";
import { grad } from "../engine/autograd.ts";
import { ready } from "../engine/device.ts";
import { memory, scope } from "../engine/memory.ts";
import { mseLoss } from "../engine/ops/elementwise.ts";
import { randn } from "../engine/ops/random.ts";
import { resetPeak } from "../engine/pool.ts";
import { sync } from "../engine/runtime.ts";
import type { Tensor } from "../engine/tensor.ts";
import { atomicWrite } from "../io/atomic.ts";
import { SliceDiffusionUNet } from "../models/slice_unet.ts";
import { DiffusionModelUNet } from "../models/unet.ts";
import { seededRandom } from "../nn/init.ts";
import { packSlices } from "../pipelines/slice_data.ts";
import { maskedMse } from "../pipelines/train.ts";
import { sample } from "../samplers/sample.ts";
import { DDIMScheduler } from "../samplers/scheduler.ts";
import { planStages, stagedSample } from "../samplers/staged.ts";
import { median } from "../bench/timing.ts";
import { numberList } from "../cli/options.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    depths: { type: "string", default: "32,64,128" },
    size: { type: "string", default: "64" },
    slots: { type: "string", default: "8" },
    batch: { type: "string", default: "2" },
    "sample-steps": { type: "string", default: "3" },
    repeats: { type: "string", default: "2" },
    kinds: { type: "string", default: "slice,3d" },
    out: { type: "string", default: "docs/cdpm-cost.json" },
  },
});
const depths = numberList("depths", values.depths!);
const size = Number(values.size);
const slots = Number(values.slots);
const batch = Number(values.batch);
const sampleSteps = Number(values["sample-steps"]);
const repeats = Number(values.repeats);
const kinds = values.kinds!.split(",");

/** One measurement: peak MiB above the live bytes before, wall and process-CPU seconds (medians). */
interface Cost {
  peakMiB: number;
  seconds: number;
  cpuSeconds: number;
}

/**
 * Measures `fn`: `warmUp` untimed runs, then `runs` timed ones (medians). CPU seconds count the process's
 * own work (on lavapipe the "GPU" is its worker threads), which other programs on the machine do not
 * inflate as they do wall time.
 */
async function cost(fn: () => Promise<void> | void, runs: number, warmUp = 1): Promise<Cost> {
  const seconds: number[] = [];
  const cpu: number[] = [];
  let peak = 0;
  for (let i = 0; i < warmUp + runs; i++) {
    await sync();
    const before = memory().liveBytes;
    resetPeak();
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await fn();
    await sync();
    const c = process.cpuUsage(c0);
    if (i >= warmUp) {
      seconds.push((performance.now() - t0) / 1000);
      cpu.push((c.user + c.system) / 1e6);
    }
    peak = Math.max(peak, memory().peakBytes - before);
  }
  return { peakMiB: peak / 2 ** 20, seconds: median(seconds), cpuSeconds: median(cpu) };
}

const device = await ready();
const scheduler = new DDIMScheduler({
  predictionType: "v_prediction",
  schedule: "scaled_linear_beta",
  betaStart: 0.0005,
  betaEnd: 0.0195,
});
const slice = new SliceDiffusionUNet({
  channels: [32, 64, 64],
  attentionLevels: [false, false, true],
  numHeadChannels: 16,
  normNumGroups: 8,
});
const volume3d = new DiffusionModelUNet({
  spatialDims: 3,
  inChannels: 1,
  outChannels: 1,
  channels: [16, 32, 32],
  attentionLevels: [false, false, true],
  numResBlocks: 1,
  normNumGroups: 8,
  numHeadChannels: 16,
});
// The slice model's U-Net without its slice attention (the 2-D model on [slice, indicator]): what the
// slice attention adds to a training step.
const flat = new DiffusionModelUNet({
  spatialDims: 2,
  inChannels: 2,
  outChannels: 1,
  channels: [32, 64, 64],
  attentionLevels: [false, false, true],
  numResBlocks: 1,
  normNumGroups: 8,
  numHeadChannels: 16,
});
const rows: Row[] = [];
console.error(
  `${device.adapter}; slice model ${slice.numParameters()} parameters, 3-D ${volume3d.numParameters()}`,
);

/** One model at one depth: a cost, or why it could not run (e.g. a buffer over the adapter's binding limit). */
interface Row {
  kind: string;
  depth: number;
  step: Cost | { error: string };
  volume: Cost | { error: string };
  forwards: number;
}

async function attempt(
  fn: () => Promise<void> | void,
  runs: number,
  warmUp: number,
): Promise<Cost | { error: string }> {
  try {
    return await cost(fn, runs, warmUp);
  } catch (error) {
    return { error: (error as Error).message.split("\n")[0] };
  }
}

const report = () => ({
  command: `deno run -A scripts/cdpm_cost.ts ${Deno.args.join(" ")}`,
  device: device.adapter,
  date: new Date().toISOString(),
  setup: {
    size,
    slots,
    batch,
    sampleSteps,
    repeats,
    sliceParameters: slice.numParameters(),
    volumeParameters: volume3d.numParameters(),
  },
  rows,
});

for (const depth of depths) {
  const volumes = randn([batch, 1, depth, size, size], { seed: depth });
  const t = Array.from({ length: batch }, (_, i) => 100 + 400 * i);
  if (kinds.includes("slice")) {
    const params = slice.parameters();
    const step = await attempt(
      () => {
        const b = packSlices(volumes, slots, seededRandom(depth));
        try {
          const grads = scope(() => {
            const noise = randn(b.x0.shape, { seed: 1 });
            const xt = scheduler.addNoise(b.x0, noise, t);
            const pred = slice.forward(xt, t, { slices: b.slices });
            return grad(maskedMse(pred, noise, b.lossMask), params);
          });
          for (const g of grads) g.dispose();
        } finally {
          b.x0.dispose();
          b.lossMask.dispose();
        }
      },
      repeats,
      1,
    );
    slice.eval();
    const plan = planStages(depth, { slots });
    // The training step compiled the kernels: one untimed warm-up is not needed here.
    const volume = await attempt(
      async () => {
        const x = await stagedSample((x, ts, s) => slice.forward(x, ts, { slices: s }), scheduler, {
          volumes: 1,
          sliceShape: [1, size, size],
          plan,
          steps: sampleSteps,
        });
        x.dispose();
      },
      1,
      0,
    );
    slice.train();
    rows.push({ kind: "cDPM slice model", depth, step, volume, forwards: plan.length * sampleSteps });
    console.error(JSON.stringify(rows.at(-1)));
  }
  if (kinds.includes("3d")) {
    const params = volume3d.parameters();
    const step = await attempt(
      () => {
        const grads = scope(() => {
          const noise = randn(volumes.shape, { seed: 1 });
          const xt = scheduler.addNoise(volumes, noise, t);
          return grad(mseLoss(volume3d.forward(xt, t), noise), params);
        });
        for (const g of grads) g.dispose();
      },
      repeats,
      1,
    );
    volume3d.eval();
    const volume = await attempt(
      async () => {
        const x = await sample((x: Tensor, ts: number) => volume3d.forward(x, ts), scheduler, {
          shape: [1, 1, depth, size, size],
          steps: sampleSteps,
        });
        x.dispose();
      },
      1,
      0,
    );
    volume3d.train();
    rows.push({ kind: "3-D U-Net", depth, step, volume, forwards: sampleSteps });
    console.error(JSON.stringify(rows.at(-1)));
  }
  if (kinds.includes("2d")) {
    const params = flat.parameters();
    const step = await attempt(
      () => {
        const grads = scope(() => {
          const noise = randn([batch * slots, 1, size, size], { seed: 1 });
          const input = randn([batch * slots, 2, size, size], { seed: 2 });
          const ts = Array.from({ length: batch * slots }, (_, i) => t[Math.floor(i / slots)]);
          return grad(mseLoss(flat.forward(input, ts), noise), params);
        });
        for (const g of grads) g.dispose();
      },
      repeats,
      1,
    );
    rows.push({
      kind: "2-D U-Net, no slice attention",
      depth,
      step,
      volume: { error: "not measured" },
      forwards: 0,
    });
    console.error(JSON.stringify(rows.at(-1)));
  }
  volumes.dispose();
  // Partial results survive a later failure.
  await atomicWrite(values.out!, new TextEncoder().encode(JSON.stringify(report(), null, 2) + "\n"));
}

const cell = (c: Cost | { error: string }, what: "peakMiB" | "time") =>
  "error" in c
    ? (what === "peakMiB" && c.error !== "not measured" ? `failed: ${c.error.slice(0, 60)}` : "—")
    : what === "peakMiB"
    ? c.peakMiB.toFixed(1)
    : `${c.seconds.toFixed(1)} (${c.cpuSeconds.toFixed(1)})`;
console.log(
  "| model | depth | train step peak MiB | train step s (CPU s) | volume peak MiB | volume s (CPU s) | forwards |",
);
console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
for (const r of rows) {
  const cells = [
    r.kind,
    r.depth,
    cell(r.step, "peakMiB"),
    cell(r.step, "time"),
    cell(r.volume, "peakMiB"),
    cell(r.volume, "time"),
    r.forwards,
  ];
  console.log(`| ${cells.join(" | ")} |`);
}
slice.dispose();
volume3d.dispose();
flat.dispose();
