/**
 * The sampling loop with and without a GPU round trip per step: `sample()` with
 * `sampleSettings.stepsAhead` = 0 (wait for every step before recording the next, the loop before issue
 * 18's change) against 1 (the default: the next step is recorded while the GPU runs the current one), and
 * optionally more. The default model's architecture (DiffusionModelUNet 16/32/32, attention at the last
 * level), DDIM, alternating round by round in one process so that both see the same load.
 *
 * Run: `XDG_RUNTIME_DIR=/tmp deno run -A bench/sample_sync.ts [--size 32] [--steps 10] [--reps 3]
 *   [--ahead 0,1]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import process from "node:process";
import * as V from "../mod.ts";
import { DiffusionModelUNet } from "../models/unet.ts";
import { median } from "./timing.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    size: { type: "string", default: "32" },
    steps: { type: "string", default: "10" },
    reps: { type: "string", default: "3" },
    ahead: { type: "string", default: "0,1" },
  },
});
const size = Number(values.size);
const steps = Number(values.steps);
const reps = Number(values.reps);
const aheads = values.ahead!.split(",").map(Number);

await V.ready();
const load = () => Deno.loadavg().map((l) => l.toFixed(2)).join(" ");
console.log(`adapter: ${V.deviceInfo().adapter}; load average ${load()}`);
const unet = new DiffusionModelUNet({
  spatialDims: 3,
  inChannels: 1,
  outChannels: 1,
  channels: [16, 32, 32],
  attentionLevels: [false, false, true],
  numHeadChannels: 16,
  numResBlocks: 1,
  normNumGroups: 8,
  seed: 1,
});
unet.eval();
const model: V.Denoiser = (x, t) => unet.forward(x, [t]);

/** One DDIM sample of `steps` steps with `ahead` steps recorded ahead; wall and CPU seconds, and its values. */
async function run(ahead: number): Promise<{ wall: number; cpu: number; values: Float32Array }> {
  V.sampleSettings.stepsAhead = ahead;
  await V.sync();
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const x = await V.sample(model, new V.DDIMScheduler(), { shape: [1, 1, size, size, size], steps, seed: 5 });
  const wall = (performance.now() - t0) / 1000;
  const c = process.cpuUsage(c0);
  const values = await x.toArray();
  x.dispose();
  return { wall, cpu: (c.user + c.system) / 1e6, values };
}

await run(1); // warm-up: compiles the pipelines
const results = new Map<number, { wall: number; cpu: number }[]>(aheads.map((a) => [a, []]));
let reference: Float32Array | null = null;
for (let r = 0; r < reps; r++) {
  for (const a of aheads) {
    const { wall, cpu, values } = await run(a);
    results.get(a)!.push({ wall, cpu });
    reference ??= values;
    if (values.some((v, i) => v !== reference![i])) throw new Error(`stepsAhead ${a} gave another sample`);
  }
}
console.log(`DDIM ${steps} steps at ${size}³, batch 1, ${reps} rounds; load average after: ${load()}`);
const base = results.get(aheads[0])!;
for (const [a, rs] of results) {
  const ratio = rs.map((x, i) => x.wall / base[i].wall);
  console.log(
    `stepsAhead ${a}: wall ${rs.map((x) => x.wall.toFixed(2)).join(", ")} s (median ${
      median(rs.map((x) => x.wall)).toFixed(2)
    }), CPU median ${median(rs.map((x) => x.cpu)).toFixed(2)} s; wall / stepsAhead ${aheads[0]} per round ${
      ratio.map((x) => x.toFixed(2)).join(", ")
    }`,
  );
}
V.sampleSettings.stepsAhead = 1;
unet.dispose();
