/**
 * Engine benchmark: the adapter's roofline (FMA peak, copy bandwidth) and, in the same run, matmul,
 * element-wise ops and reductions through the public API, as a markdown table.
 *
 * ```sh
 * deno task bench                 # = deno run -A bench/run.ts
 * deno task bench --json out.json # also write the results as JSON
 * ```
 *
 * Each row: warm-up (compile + first run), then batches of N repetitions between two `sync()`s with N
 * chosen so a batch takes ≥ 1 s; the median over 3 batches. Rates are reported against wall-clock time
 * (what a user waits) and against the CPU time of the process: on a software adapter the "GPU" is this
 * process's own threads, so per-CPU-second rates do not change when other programs compete for the cores.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  add,
  exp,
  keep,
  matmul,
  ready,
  runtimeStats,
  scope,
  sum,
  sync,
  type Tensor,
  tensor,
} from "../mod.ts";
import { copyBandwidth, fmaPeak } from "./roofline.ts";
import { measure, type Measurement } from "./timing.ts";

const args = parseArgs({
  args: Deno.args,
  options: {
    json: { type: "string" },
    "min-seconds": { type: "string", default: "1" },
    samples: { type: "string", default: "3" },
    sizes: { type: "string", default: "256,512,1024,2048" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (args.values.help) {
  console.log(
    "usage: deno run -A bench/run.ts [--json FILE] [--min-seconds S] [--samples N] [--sizes 256,512,...]",
  );
  Deno.exit(0);
}
const minSeconds = Number(args.values["min-seconds"]);
const samples = Number(args.values.samples);
const sizes = args.values.sizes!.split(",").map(Number);

/** One row of the results table. */
interface Row {
  group: "roofline" | "matmul" | "elementwise" | "reduce";
  name: string;
  shape: string;
  unit: "GFLOP/s" | "GB/s";
  /** FLOPs or bytes per repetition. */
  amount: number;
  /** Median wall seconds per repetition. */
  seconds: number;
  /** Median process CPU seconds per repetition. */
  cpuSeconds: number;
  reps: number;
  /** Kernel dispatches one repetition records. */
  dispatches: number;
  /** amount / seconds in the unit. */
  rate: number;
  /** amount / cpuSeconds in the unit (per CPU-second). */
  cpuRate: number;
  /** rate / roofline rate (wall), and cpuRate / roofline cpuRate. */
  pct?: number;
  cpuPct?: number;
}

const rows: Row[] = [];

/** Measures `run` and records a row; also counts the dispatches of one repetition. */
async function bench(
  group: Row["group"],
  name: string,
  shape: string,
  unit: Row["unit"],
  amount: number,
  run: () => void,
): Promise<Row> {
  const m = await measure(run, opts);
  const before = runtimeStats().dispatches;
  run();
  const dispatches = runtimeStats().dispatches - before;
  await sync();
  return row(group, name, shape, unit, amount, m, dispatches);
}

function row(
  group: Row["group"],
  name: string,
  shape: string,
  unit: Row["unit"],
  amount: number,
  m: Measurement,
  dispatches: number,
): Row {
  const r: Row = {
    group,
    name,
    shape,
    unit,
    amount,
    seconds: m.seconds,
    cpuSeconds: m.cpuSeconds,
    reps: m.reps,
    dispatches,
    rate: amount / m.seconds / 1e9,
    cpuRate: amount / m.cpuSeconds / 1e9,
  };
  rows.push(r);
  console.error(
    `  ${name} ${shape}: ${r.rate.toFixed(2)} ${unit} (${(m.seconds * 1e3).toFixed(2)} ms × ${m.reps}), ` +
      `${r.cpuRate.toFixed(2)} ${unit} per CPU-s`,
  );
  return r;
}

function random(n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (Math.random() * 2 - 1) * scale;
  return out;
}

const info = await ready();
const started = performance.now();
const load0 = Deno.loadavg();
console.error(`adapter: ${info.adapter}; load average ${load0.map((x) => x.toFixed(2)).join(" ")}`);
const opts = { minSeconds, samples };

// --- Roofline -------------------------------------------------------------------------------------------
console.error("roofline");
const peakWork = fmaPeak();
const peak = await bench(
  "roofline",
  "FMA peak",
  "1024 wg × 64 thr",
  "GFLOP/s",
  peakWork.amount,
  peakWork.run,
);
peakWork.dispose();
const copyWork = copyBandwidth(64 << 20);
const copy = await bench(
  "roofline",
  "vec4 copy",
  "64 MiB",
  "GB/s",
  copyWork.amount,
  copyWork.run,
);
copyWork.dispose();

// --- Matmul ---------------------------------------------------------------------------------------------
console.error("matmul");
for (const n of sizes) {
  const a = keep(tensor(random(n * n), [n, n]));
  const b = keep(tensor(random(n * n), [n, n]));
  const r = await bench(
    "matmul",
    "matmul",
    `${n}×${n}×${n}`,
    "GFLOP/s",
    2 * n * n * n,
    () => scope(() => void matmul(a, b)),
  );
  r.pct = r.rate / peak.rate;
  r.cpuPct = r.cpuRate / peak.cpuRate;
  await spotCheck(a, b, n);
  a.dispose();
  b.dispose();
}

/** Compares a few entries of the product against float64 dot products on the CPU. */
async function spotCheck(a: Tensor, b: Tensor, n: number): Promise<void> {
  const c = scope(() => matmul(a, b));
  const [av, bv, cv] = [await a.toArray(), await b.toArray(), await c.toArray()];
  c.dispose();
  let worst = 0;
  for (let t = 0; t < 16; t++) {
    const i = Math.floor(Math.random() * n);
    const j = Math.floor(Math.random() * n);
    let s = 0;
    let mag = 0;
    for (let k = 0; k < n; k++) {
      s += av[i * n + k] * bv[k * n + j];
      mag += Math.abs(av[i * n + k] * bv[k * n + j]);
    }
    worst = Math.max(worst, Math.abs(cv[i * n + j] - s) / mag);
  }
  if (!(worst < 1e-5)) throw new Error(`matmul ${n}: wrong result (relative error ${worst})`);
}

// --- Element-wise and reductions ------------------------------------------------------------------------
const N16 = 16 << 20;
const MiB64 = N16 * 4;
console.error("element-wise and reductions");
{
  const x = keep(tensor(random(N16), [N16]));
  const y = keep(tensor(random(N16), [N16]));
  for (
    const r of [
      await bench(
        "elementwise",
        "add",
        "16M + 16M",
        "GB/s",
        3 * MiB64,
        () => scope(() => void add(x, y)),
      ),
      await bench(
        "elementwise",
        "exp",
        "16M",
        "GB/s",
        2 * MiB64,
        () => scope(() => void exp(x)),
      ),
      await bench(
        "reduce",
        "sum (all)",
        "16M → 1",
        "GB/s",
        MiB64,
        () => scope(() => void sum(x)),
      ),
    ]
  ) {
    r.pct = r.rate / copy.rate;
    r.cpuPct = r.cpuRate / copy.cpuRate;
  }
  x.dispose();
  y.dispose();
  const z = keep(tensor(random(N16), [4096, 4096]));
  const r = await bench(
    "reduce",
    "sum (last axis)",
    "[4096, 4096] → [4096]",
    "GB/s",
    MiB64 + 4096 * 4,
    () => scope(() => void sum(z, -1)),
  );
  r.pct = r.rate / copy.rate;
  r.cpuPct = r.cpuRate / copy.cpuRate;
  z.dispose();
}
await sync();

// --- Report ---------------------------------------------------------------------------------------------
const load1 = Deno.loadavg();
const totalSeconds = (performance.now() - started) / 1000;
const fmt = (x: number, d = 2) => x.toFixed(d);
const pct = (x?: number) => (x === undefined ? "" : `${(100 * x).toFixed(1)}%`);
const lines = [
  `Adapter: ${info.adapter} (${
    info.vendor || "unknown vendor"
  }). ${navigator.hardwareConcurrency} CPU threads, ` +
  `load average ${load0.map((x) => fmt(x)).join(" ")} at start, ${
    load1.map((x) => fmt(x)).join(" ")
  } at end; ` +
  `${fmt(totalSeconds, 0)} s total.`,
  "",
  "| op | shape | dispatches | ms / op | rate | % of roofline | rate per CPU-s | % of roofline (CPU time) |",
  "|---|---|---:|---:|---:|---:|---:|---:|",
  ...rows.map((r) =>
    `| ${r.name} | ${r.shape} | ${r.dispatches} | ${fmt(r.seconds * 1e3)} | ${fmt(r.rate)} ${r.unit} | ` +
    `${pct(r.pct)} | ${fmt(r.cpuRate)} ${r.unit} | ${pct(r.cpuPct)} |`
  ),
  "",
  "Roofline: matmul against the FMA peak, element-wise ops and reductions against the copy bandwidth " +
  "(bytes read + written).",
];
console.log(lines.join("\n"));

if (args.values.json) {
  const result = {
    date: new Date().toISOString(),
    adapter: info.adapter,
    vendor: info.vendor,
    cpuThreads: navigator.hardwareConcurrency,
    loadAverage: { start: load0, end: load1 },
    minSeconds,
    samples,
    totalSeconds,
    rows,
  };
  await Deno.writeTextFile(args.values.json, JSON.stringify(result, null, 2) + "\n");
  console.error(`wrote ${args.values.json}`);
}
