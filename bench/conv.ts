/**
 * conv3d at the U-Net's shapes against the adapter's FMA peak, measured in the same run: forward GFLOP/s
 * (2·N·Cout·Do·Ho·Wo·Cin·k³ / time) and % of peak, and the backward passes (input gradient, weight
 * gradient) as multiples of the forward time. Optionally PyTorch's CPU conv3d at the same shapes
 * (`/usr/bin/python3` with torch), run in a subprocess.
 *
 * Timing: warm up, then batches of repetitions between `sync()` calls, each batch ≥ `--seconds` (default
 * 1), median of 3. The FMA peak is re-measured right before each shape, so a busy machine skews both
 * alike. On shared machines wall time is noisy; the `cpu%` column divides by the process's CPU time
 * instead (lavapipe runs a dispatch on its worker threads, which belong to this process), which is steadier
 * when other jobs compete for the cores.
 *
 * `--path auto|direct|chunk` picks the kernel (`convSettings.path`; auto = chunk kernel on software adapters
 * for large convs); `--rows N`/`--threads N` override the chunk kernel's geometry; `--compare` also times the
 * forward on the direct kernel and prints the speed-up of the chosen path over it, side by side.
 *
 * Run: `XDG_RUNTIME_DIR=/tmp deno run -A bench/conv.ts [--seconds 1] [--only 64->64] [--no-backward] [--torch]
 *   [--path auto|direct|chunk] [--compare]`
 *
 * @module
 */

import * as V from "../mod.ts";
import { conv3d, convSettings } from "../engine/ops/conv.ts";
import { fmaPeak } from "./roofline.ts";

const args = Deno.args;
const option = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const minSeconds = Number(option("--seconds") ?? 1);
const only = option("--only");
const backward = !args.includes("--no-backward");
const withTorch = args.includes("--torch");
const compare = args.includes("--compare");
const path = option("--path") ?? "auto";
if (path !== "auto" && path !== "direct" && path !== "chunk") {
  throw new Error(`--path ${path}: auto, direct or chunk`);
}
convSettings.path = path;
if (option("--rows")) convSettings.chunk = { ...convSettings.chunk, rows: Number(option("--rows")) };
if (option("--threads")) convSettings.chunk = { ...convSettings.chunk, threads: Number(option("--threads")) };

interface Shape {
  name: string;
  cin: number;
  cout: number;
  size: number;
  stride: number;
}

const SHAPES: Shape[] = [
  { name: "32->32 32^3", cin: 32, cout: 32, size: 32, stride: 1 },
  { name: "64->64 32^3", cin: 64, cout: 64, size: 32, stride: 1 },
  { name: "128->128 16^3", cin: 128, cout: 128, size: 16, stride: 1 },
  { name: "64->128 16^3", cin: 64, cout: 128, size: 16, stride: 1 },
  { name: "64->64 32^3 s2", cin: 64, cout: 64, size: 32, stride: 2 },
];

/** Process CPU seconds (user + system) on Linux, or NaN elsewhere. */
function cpuSeconds(): number {
  try {
    const stat = Deno.readTextFileSync("/proc/self/stat");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return NaN;
  }
}

interface Timing {
  /** Median wall seconds per repetition. */
  wall: number;
  /** Median process CPU seconds per repetition. */
  cpu: number;
}

async function batch(run: () => void, reps: number): Promise<Timing> {
  await V.sync();
  const t0 = performance.now();
  const c0 = cpuSeconds();
  for (let i = 0; i < reps; i++) run();
  await V.sync();
  return { wall: (performance.now() - t0) / 1000, cpu: cpuSeconds() - c0 };
}

/** Warm-up, then 3 batches of at least `minSeconds` each; medians per repetition. */
async function time(run: () => void): Promise<Timing> {
  await batch(run, 1);
  let reps = 1;
  let t = await batch(run, reps);
  while (t.wall < minSeconds / 4) {
    reps *= 2;
    t = await batch(run, reps);
  }
  reps = Math.max(1, Math.ceil((reps * minSeconds * 1.05) / t.wall));
  const samples: Timing[] = [];
  while (samples.length < 3) {
    const s = await batch(run, reps);
    if (s.wall < minSeconds) {
      reps = Math.ceil((reps * minSeconds * 1.1) / s.wall);
      continue;
    }
    samples.push({ wall: s.wall / reps, cpu: s.cpu / reps });
  }
  const median = (k: keyof Timing) => samples.map((s) => s[k]).sort((a, b) => a - b)[1];
  return { wall: median("wall"), cpu: median("cpu") };
}

function random(shape: number[], seed: number, requiresGrad = false): V.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = Math.sin((i + seed) * 12.9898) * 0.5;
  return V.tensor(data, shape, { requiresGrad });
}

/** Runs the backward of the op that produced `y` for the inputs in `needs` and frees the gradients. */
function backwardOf(y: V.Tensor, grad: V.Tensor, needs: boolean[]): () => void {
  const node = y.node!;
  return () => {
    V.noGrad(() => {
      for (const t of node.backward(grad, node.saved, needs)) t?.dispose();
    });
  };
}

function torchTimes(shapes: Shape[]): Map<string, number> {
  const script = `
import json, sys, time, torch
torch.set_grad_enabled(False)
out = {}
for name, cin, cout, size, stride in json.loads(sys.argv[1]):
    x = torch.randn(1, cin, size, size, size)
    w = torch.randn(cout, cin, 3, 3, 3)
    f = lambda: torch.nn.functional.conv3d(x, w, stride=stride, padding=1)
    f()
    reps, t = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(reps): f()
        t = time.perf_counter() - t0
        if t >= ${minSeconds}: break
        reps *= 2
    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps): f()
        samples.append((time.perf_counter() - t0) / reps)
    out[name] = sorted(samples)[1]
print(json.dumps(out))
`;
  const spec = JSON.stringify(shapes.map((s) => [s.name, s.cin, s.cout, s.size, s.stride]));
  try {
    const result = new Deno.Command("/usr/bin/python3", { args: ["-c", script, spec] }).outputSync();
    if (!result.success) throw new Error(new TextDecoder().decode(result.stderr).trim().split("\n").pop());
    return new Map(Object.entries(JSON.parse(new TextDecoder().decode(result.stdout))));
  } catch (error) {
    console.log(`torch: not measured (${error instanceof Error ? error.message : error})`);
    return new Map();
  }
}

await V.ready();
console.log(`adapter: ${V.deviceInfo().adapter}`);
const shapes = SHAPES.filter((s) => !only || s.name.includes(only));
const torch = withTorch ? torchTimes(shapes) : new Map<string, number>();
const peak = fmaPeak();

const header = [
  "shape".padEnd(16),
  "fwd ms".padStart(8),
  "GFLOP/s".padStart(8),
  "% peak".padStart(7),
  "cpu%".padStart(5),
  "peak".padStart(6),
  ...(backward ? ["dx/fwd".padStart(7), "dw/fwd".padStart(7), "cpu".padStart(9)] : []),
  ...(torch.size ? ["torch ms".padStart(9), "torch/ours".padStart(10)] : []),
  ...(compare ? ["direct ms".padStart(9), "speed-up".padStart(8)] : []),
];
console.log(header.join(" "));
for (const s of shapes) {
  const x = random([1, s.cin, s.size, s.size, s.size], 1, true);
  const w = random([s.cout, s.cin, 3, 3, 3], 2, true);
  const opts = { stride: s.stride, padding: 1 };
  const y = conv3d(x, w, opts);
  const gy = random([...y.shape], 3);
  const flops = 2 * s.cout * (y.size / s.cout) * s.cin * 27;
  const p = await time(peak.run);
  const fwd = await time(() => V.scope(() => void conv3d(x, w, opts)));
  const peakWall = peak.amount / p.wall;
  const peakCpu = peak.amount / p.cpu;
  const gflops = flops / fwd.wall;
  const cells = [
    s.name.padEnd(16),
    (fwd.wall * 1e3).toFixed(1).padStart(8),
    (gflops / 1e9).toFixed(1).padStart(8),
    `${((100 * gflops) / peakWall).toFixed(0)}%`.padStart(7),
    `${((100 * flops) / fwd.cpu / peakCpu).toFixed(0)}%`.padStart(5),
    (peakWall / 1e9).toFixed(1).padStart(6),
  ];
  if (backward) {
    const dx = await time(backwardOf(y, gy, [true, false]));
    const dw = await time(backwardOf(y, gy, [false, true]));
    cells.push(
      (dx.wall / fwd.wall).toFixed(2).padStart(7),
      (dw.wall / fwd.wall).toFixed(2).padStart(7),
      `${(dx.cpu / fwd.cpu).toFixed(2)}/${(dw.cpu / fwd.cpu).toFixed(2)}`.padStart(9),
    );
  }
  const t = torch.get(s.name);
  if (t !== undefined) cells.push((t * 1e3).toFixed(1).padStart(9), (t / fwd.wall).toFixed(2).padStart(10));
  if (compare) {
    convSettings.path = "direct";
    const direct = await time(() => V.scope(() => void conv3d(x, w, opts)));
    convSettings.path = path;
    cells.push(
      (direct.wall * 1e3).toFixed(1).padStart(9),
      `${(direct.cpu / fwd.cpu).toFixed(2)}×`.padStart(8),
    );
  }
  console.log(cells.join(" "));
  for (const u of [x, w, y, gy]) u.dispose();
}
peak.dispose();
