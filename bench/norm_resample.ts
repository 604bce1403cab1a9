/**
 * Group norm (+SiLU) forward/backward on the U-Net's largest level, [1, 64, 32, 32, 32] with 32 groups, and
 * nearest ×2 upsampling of [1, 64, 16, 16, 16], against a vec4 copy kernel measured in the same run.
 *
 * Bytes counted are the passes over memory each algorithm makes, in f32:
 * - group norm forward: 3 tensor passes (statistics read x; normalise reads x and writes y; the statistics
 *   kernel's second, centred pass re-reads a 16 KiB chunk from cache and is not counted);
 * - group norm backward: 5 (reduction reads x and g; dx reads x and g and writes dx);
 * - nearest ×2: the input once and the output once (and the reverse for its backward).
 *
 * The machine is shared, so timings are interleaved: every round times a batch of each op, copy included,
 * and each op reports its fastest round (the one least disturbed by other work) and its ratio to the
 * copy's fastest round.
 *
 * Run: `XDG_RUNTIME_DIR=/tmp deno run -A bench/norm_resample.ts [--rounds 9]`
 *
 * @module
 */

import * as V from "../mod.ts";
import { groupNorm, groupNormSilu } from "../engine/ops/norm.ts";
import { avgPool3d, interpolate } from "../engine/ops/resample.ts";
import { copyBandwidth } from "./roofline.ts";
const roundsArg = Deno.args.indexOf("--rounds");
const rounds = roundsArg >= 0 ? Number(Deno.args[roundsArg + 1]) : 9;
/** Repetitions per timed batch: enough to hide the ~1 ms of a submit and readiness wait. */
const REPS = 4;

await V.ready();
const info = V.deviceInfo();
console.log(`adapter: ${info.adapter}`);

const GN_SHAPE = [1, 64, 32, 32, 32];
const UP_SHAPE = [1, 64, 16, 16, 16];
const gnBytes = GN_SHAPE.reduce((a, b) => a * b, 1) * 4;

function random(shape: number[], requiresGrad = false): V.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = Math.sin(i * 12.9898) * 2;
  return V.tensor(data, shape, { requiresGrad });
}

const x = random(GN_SHAPE, true);
const w = random([64], true);
const b = random([64], true);
const g = random(GN_SHAPE);
const small = random(UP_SHAPE, true);
const gUp = random([1, 64, 32, 32, 32]);

/** Runs the backward of the op that produced `y` (its autograd node) once and frees the gradients. */
function backwardOf(y: V.Tensor, grad: V.Tensor): () => void {
  const node = y.node!;
  const needs = node.parents.map(() => true);
  return () => {
    for (const t of node.backward(grad, node.saved, needs)) t?.dispose();
  };
}

const yGn = groupNorm(x, 32, w, b);
const yGnSilu = groupNormSilu(x, 32, w, b);
const yUp = interpolate(small, { mode: "nearest", scaleFactor: 2 });

/** Records one forward `op()` without autograd and frees its result (no submit: runs batch up). */
function forward(op: () => V.Tensor): () => void {
  return () => V.noGrad(op).dispose();
}

interface Row {
  name: string;
  bytes: number;
  run: () => void;
}

const copy = copyBandwidth(gnBytes);
const upBytes = gnBytes * (1 + 1 / 8);
const rows: Row[] = [
  { name: "copy (vec4) 8 MiB", bytes: copy.amount, run: copy.run },
  { name: "groupNorm fwd", bytes: 3 * gnBytes, run: forward(() => groupNorm(x, 32, w, b)) },
  { name: "groupNormSilu fwd", bytes: 3 * gnBytes, run: forward(() => groupNormSilu(x, 32, w, b)) },
  { name: "groupNorm bwd", bytes: 5 * gnBytes, run: backwardOf(yGn, g) },
  { name: "groupNormSilu bwd", bytes: 5 * gnBytes, run: backwardOf(yGnSilu, g) },
  {
    name: "nearest x2 fwd",
    bytes: upBytes,
    run: forward(() => interpolate(small, { mode: "nearest", scaleFactor: 2 })),
  },
  { name: "nearest x2 bwd", bytes: upBytes, run: backwardOf(yUp, gUp) },
  {
    name: "trilinear x2 fwd",
    bytes: upBytes,
    run: forward(() => interpolate(small, { mode: "trilinear", scaleFactor: 2 })),
  },
  { name: "avgPool3d 2 fwd", bytes: upBytes, run: forward(() => avgPool3d(x, 2)) },
];

/** Seconds per repetition of `run`, timed over one batch. */
async function timeBatch(run: () => void): Promise<number> {
  await V.sync();
  const t0 = performance.now();
  for (let i = 0; i < REPS; i++) run();
  await V.sync();
  return (performance.now() - t0) / 1000 / REPS;
}

for (const row of rows) await timeBatch(row.run); // compile and warm up
const best = rows.map(() => Infinity);
for (let r = 0; r < rounds; r++) {
  for (const [i, row] of rows.entries()) best[i] = Math.min(best[i], await timeBatch(row.run));
}
const copyGBs = rows[0].bytes / best[0] / 1e9;
console.log(`\n${"op".padEnd(22)} ${"ms".padStart(8)} ${"GB/s".padStart(7)} ${"% copy".padStart(7)}`);
rows.forEach((row, i) => {
  const gbs = row.bytes / best[i] / 1e9;
  console.log(
    `${row.name.padEnd(22)} ${(best[i] * 1e3).toFixed(2).padStart(8)} ${gbs.toFixed(2).padStart(7)} ${
      ((100 * gbs) / copyGBs).toFixed(0).padStart(6)
    }%`,
  );
});

copy.dispose();
for (const t of [x, w, b, g, small, gUp, yGn, yGnSilu, yUp]) t.dispose();
