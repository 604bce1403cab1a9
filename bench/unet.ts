/**
 * Whole-network benchmark of MONAI's 3-D `DiffusionModelUNet` architecture in voxgen: one denoising forward
 * (noGrad, eval) and one training step (forward, MSE, backward, AdamW) on a [N, 1, S, S, S] volume, with the
 * GPU memory they need and, with `--profile`, a per-layer breakdown of one forward and one training step
 * (GPU time of every dispatch from `timestamp-query`, grouped into convolutions by shape, norms, attention,
 * element-wise, copies and packing; see engine/profile.ts).
 *
 * Architectures (`--arch`): `default` (the default model's: channels 16/32/32, attention at the last level with
 * 16 head channels, one res block, 8 groups), `cond` (the same with cross-attention on a 16 × 64 context, as the
 * conditional demo model) and `seed004` (Basile et al.: channels 128/128/256, attention at
 * the deepest level with 256 head channels, 2 res blocks; 47.5 M parameters).
 *
 * With `--torch`, the same work of MONAI's own DiffusionModelUNet on PyTorch CPU is timed in the same run
 * (needs Debian's /usr/bin/python3 with torch and a MONAI tree at $MONAI_SRC, default /tmp/monai; see
 * tests/fixtures/make_monai_unet_fixtures.py), alternating with voxgen's round by round so that both see the
 * same load; the ratio is reported per round.
 *
 * With `--against DIR`, the same bench/unet.ts of another checkout (e.g. the code before a change; copy this
 * file and engine/profile.ts into it) runs as a server child (`--serve`) and is timed round by round in the
 * same way: side-by-side before/after ratios under the same load.
 *
 * `--conv-path auto|direct|chunk` sets `convSettings.path` (the --against child keeps its default), so
 * `--conv-path chunk --against .` compares kernel choices within one checkout.
 *
 * Work `train-ckpt` is the training step with gradient checkpointing of the res blocks
 * (`gradientCheckpointing()`), timed by voxgen only.
 *
 * Run: `XDG_RUNTIME_DIR=/tmp deno run -A bench/unet.ts [--arch default] [--size 32] [--batch 1]
 *       [--work forward,train] [--reps 3] [--torch] [--against DIR] [--profile] [--threads 2]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import process from "node:process";
import * as V from "../mod.ts";
import { DiffusionModelUNet, type DiffusionModelUNetOptions } from "../models/unet.ts";
import { canProfile, type ProfileEntry, startProfile, stopProfile } from "../engine/profile.ts";
import { poolStats, resetPeak } from "../engine/pool.ts";
import { convSettings } from "../engine/ops/conv.ts";
import { median } from "./timing.ts";
import { hostMemory, resetPeakRss } from "./host_memory.ts";

const { values } = parseArgs({
  options: {
    arch: { type: "string", default: "default" },
    size: { type: "string", default: "32" },
    batch: { type: "string", default: "1" },
    work: { type: "string", default: "forward,train" },
    reps: { type: "string", default: "3" },
    threads: { type: "string", default: "2" },
    torch: { type: "boolean", default: false },
    profile: { type: "boolean", default: false },
    against: { type: "string" },
    "conv-path": { type: "string", default: "auto" },
    serve: { type: "boolean", default: false },
  },
});
const size = Number(values.size);
const batch = Number(values.batch);
const reps = Number(values.reps);
type Work = "forward" | "train" | "train-ckpt";
const works = values.work!.split(",") as Work[];

/** Architectures; `context` [tokens, width] adds a cross-attention context (random, seeded) to every call. */
const ARCHS: Record<
  string,
  { voxgen: DiffusionModelUNetOptions; monai: string; context?: [number, number] }
> = {
  default: {
    voxgen: {
      spatialDims: 3,
      inChannels: 1,
      outChannels: 1,
      channels: [16, 32, 32],
      attentionLevels: [false, false, true],
      numHeadChannels: 16,
      numResBlocks: 1,
      normNumGroups: 8,
      seed: 1,
    },
    monai: "channels=(16, 32, 32), attention_levels=(False, False, True), num_head_channels=16, " +
      "num_res_blocks=1, norm_num_groups=8",
  },
  // The conditional demo model's (brain32c): the default plus cross-attention on a 16 × 64 token context.
  cond: {
    voxgen: {
      spatialDims: 3,
      inChannels: 1,
      outChannels: 1,
      channels: [16, 32, 32],
      attentionLevels: [false, false, true],
      numHeadChannels: 16,
      numResBlocks: 1,
      normNumGroups: 8,
      withConditioning: true,
      crossAttentionDim: 64,
      seed: 1,
    },
    monai: "channels=(16, 32, 32), attention_levels=(False, False, True), num_head_channels=16, " +
      "num_res_blocks=1, norm_num_groups=8, with_conditioning=True, cross_attention_dim=64",
    context: [16, 64],
  },
  seed004: {
    voxgen: {
      spatialDims: 3,
      inChannels: 1,
      outChannels: 1,
      channels: [128, 128, 256],
      attentionLevels: [false, false, true],
      numHeadChannels: [0, 0, 256],
      numResBlocks: 2,
      seed: 1,
    },
    monai:
      "channels=(128, 128, 256), attention_levels=(False, False, True), num_head_channels=(0, 0, 256), " +
      "num_res_blocks=2",
  },
};
const arch = ARCHS[values.arch!];
if (!arch) throw new Error(`--arch must be one of ${Object.keys(ARCHS).join(", ")}, got ${values.arch}`);

await V.ready();
convSettings.path = values["conv-path"] as typeof convSettings.path;
const load = () => Deno.loadavg().map((l) => l.toFixed(2)).join(" ");
console.log(`adapter: ${V.deviceInfo().adapter}; load average ${load()}`);
const unet = new DiffusionModelUNet(arch.voxgen);
console.log(
  `${values.arch}: ${unet.numParameters().toLocaleString("en")} parameters, [${batch}, 1, ${size}³]`,
);

const x = V.randn([batch, 1, size, size, size], { seed: 7 });
const target = V.randn([batch, 1, size, size, size], { seed: 8 });
const timesteps = Array.from({ length: batch }, (_, i) => 500 + i);
const context = arch.context ? V.randn([batch, ...arch.context], { seed: 9 }) : undefined;
const optimizer = new V.AdamW(unet.parameters(), { lr: 1e-5 });

function voxgenForward(): void {
  unet.eval();
  V.scope(() => V.noGrad(() => unet.forward(x, timesteps, { context })));
}

function voxgenTrain(): void {
  unet.train();
  const grads = V.scope(() => {
    const loss = V.mseLoss(unet.forward(x, timesteps, { context }), target);
    return V.grad(loss, unet.parameters());
  });
  optimizer.step(grads);
  for (const g of grads) g.dispose();
}

/** The training step with gradient checkpointing of the res blocks (voxgen only; contenders skip it). */
function voxgenTrainCheckpointed(): void {
  unet.gradientCheckpointing(true);
  try {
    voxgenTrain();
  } finally {
    unet.gradientCheckpointing(false);
  }
}

const run: Record<Work, () => void> = {
  forward: voxgenForward,
  train: voxgenTrain,
  "train-ckpt": voxgenTrainCheckpointed,
};

/** Wall and process CPU seconds of `fn` and the work it queued. */
async function timed(fn: () => void): Promise<{ wall: number; cpu: number }> {
  await V.sync();
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  fn();
  await V.sync();
  const c = process.cpuUsage(c0);
  return { wall: (performance.now() - t0) / 1000, cpu: (c.user + c.system) / 1e6 };
}

// The fixture script installs an einops stand-in when einops is missing (MONAI's attention needs it).
const FIXTURES_DIR = new URL("../tests/fixtures/", import.meta.url).pathname;
const TORCH_SCRIPT = `
import sys, time, torch
torch.set_num_threads(${Number(values.threads)})
sys.path.insert(0, ${JSON.stringify(FIXTURES_DIR)})
import make_monai_unet_fixtures  # noqa: F401 (einops stand-in)
from monai.networks.nets import DiffusionModelUNet
net = DiffusionModelUNet(spatial_dims=3, in_channels=1, out_channels=1, ${arch.monai})
x = torch.randn(${batch}, 1, ${size}, ${size}, ${size})
y = torch.randn(${batch}, 1, ${size}, ${size}, ${size})
t = torch.tensor([500 + i for i in range(${batch})])
ctx = ${arch.context ? `torch.randn(${batch}, ${arch.context.join(", ")})` : "None"}
opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
def forward():
    net.eval()
    with torch.no_grad():
        net(x, t, context=ctx)
def train():
    net.train()
    opt.zero_grad()
    torch.nn.functional.mse_loss(net(x, t, context=ctx), y).backward()
    opt.step()
work = {"forward": forward, "train": train}
for w in ${JSON.stringify(works.filter((w) => w !== "train-ckpt"))}:
    work[w]()  # warm-up
print("ready", flush=True)
for line in sys.stdin:
    w = line.strip()
    t0 = time.time(); c0 = time.process_time(); work[w]()
    print(time.time() - t0, time.process_time() - c0, flush=True)
`;

function lineSplitter(): TransformStream<string, string> {
  let rest = "";
  return new TransformStream({
    transform(chunk, ctl) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop() ?? "";
      for (const p of parts) if (p.trim()) ctl.enqueue(p.trim());
    },
  });
}

/** Another process doing the same work on request: one line in (the work), "wall cpu" out. */
interface Contender {
  name: string;
  proc: Deno.ChildProcess;
  lines: AsyncIterator<string>;
  input: WritableStreamDefaultWriter;
}

function spawn(name: string, command: string, args: string[], env: Record<string, string>): Contender {
  const proc = new Deno.Command(command, { args, env, stdin: "piped", stdout: "piped" }).spawn();
  const lines = proc.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(lineSplitter())
    [Symbol.asyncIterator]();
  return { name, proc, lines, input: proc.stdin.getWriter() };
}

const contenders: Contender[] = [];
if (values.torch && !values.serve) {
  const monai = Deno.env.get("MONAI_SRC") ?? "/tmp/monai";
  contenders.push(spawn("torch", "/usr/bin/python3", ["-c", TORCH_SCRIPT], { PYTHONPATH: monai }));
}
if (values.against && !values.serve) {
  const args = ["run", "-A", `${values.against}/bench/unet.ts`, "--serve"];
  for (const k of ["arch", "size", "batch", "work"] as const) args.push(`--${k}`, String(values[k]));
  contenders.push(spawn("before", Deno.execPath(), args, {}));
}

async function contenderRun(c: Contender, work: string): Promise<{ wall: number; cpu: number }> {
  await c.input.write(new TextEncoder().encode(`${work}\n`));
  const [wall, cpu] = ((await c.lines.next()).value as string).split(" ").map(Number);
  return { wall, cpu };
}

// Warm-up (compiles the pipelines), which also gives the peak memory of each kind of work: the high-water
// mark of the bytes held by tensors (the pool's free buffers are not counted).
const peaks: Record<string, number> = {};
const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;
for (const w of works) {
  resetPeak();
  resetPeakRss();
  const before = V.memory();
  const t = await timed(run[w]);
  peaks[w] = V.memory().peakBytes - before.liveBytes;
  const pool = poolStats();
  const host = hostMemory();
  console.log(
    `warm-up ${w}: ${t.wall.toFixed(2)} s (includes compiling), CPU ${
      t.cpu.toFixed(1)
    } s; peak memory above ` +
      `live ${mib(peaks[w])} (live ${mib(pool.liveBytes)}); pool: held ${mib(pool.heldBytes)}, peak held ` +
      `${mib(pool.peakHeldBytes)}, cached ${mib(pool.pooledBytes)}; process RSS ${mib(host.rss)}, peak ` +
      `${mib(host.peakRss)}`,
  );
}
if (values.serve) {
  // Server mode (the child of --against): time one piece of work per request line.
  console.log("ready");
  const lines = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).pipeThrough(lineSplitter());
  for await (const line of lines) {
    const t = await timed(run[line as Work]);
    console.log(`${t.wall} ${t.cpu}`);
  }
  Deno.exit(0);
}
for (const c of contenders) {
  // The --against child prints its own log first; skip to its "ready".
  let line: string | undefined;
  do line = (await c.lines.next()).value; while (line !== undefined && line !== "ready");
  if (line !== "ready") throw new Error(`the ${c.name} process did not start`);
}

const MiB = 2 ** 20;
const fmt = (s: number) => s.toFixed(3);
console.log(`\nload average before timing: ${load()}`);
// Rounds: every work of voxgen and of each contender once per round, so that all see the same load.
type Timing = { wall: number; cpu: number };
const oursAll: Record<string, Timing[]> = Object.fromEntries(works.map((w) => [w, []]));
const theirsAll: Record<string, Timing[][]> = Object.fromEntries(
  works.map((w) => [w, contenders.map(() => [])]),
);
for (let i = 0; i < reps; i++) {
  for (const w of works) {
    oursAll[w].push(await timed(run[w]));
    if (w === "train-ckpt") continue;
    for (const [k, c] of contenders.entries()) theirsAll[w][k].push(await contenderRun(c, w));
  }
}
for (const w of works) {
  const ours = oursAll[w];
  const theirs = theirsAll[w];
  const live = V.memory().liveBytes;
  console.log(
    `${w}: voxgen wall ${ours.map((o) => fmt(o.wall)).join(", ")} s (median ${
      fmt(median(ours.map((o) => o.wall)))
    }` +
      `), CPU ${fmt(median(ours.map((o) => o.cpu)))} s; peak memory above live ${
        (peaks[w] / MiB).toFixed(0)
      } MiB ` +
      `(live ${(live / MiB).toFixed(0)} MiB)`,
  );
  for (const [k, c] of contenders.entries()) {
    if (theirs[k].length === 0) continue;
    const wall = ours.map((o, i) => o.wall / theirs[k][i].wall);
    const cpu = ours.map((o, i) => o.cpu / theirs[k][i].cpu);
    console.log(
      `${w}: ${c.name} wall ${theirs[k].map((o) => fmt(o.wall)).join(", ")} s (median ${
        fmt(median(theirs[k].map((o) => o.wall)))
      }), CPU ${fmt(median(theirs[k].map((o) => o.cpu)))} s; voxgen/${c.name} per round: wall ${
        wall.map((r) => r.toFixed(2)).join(", ")
      } (median ${median(wall).toFixed(2)}), CPU ${cpu.map((r) => r.toFixed(2)).join(", ")} (median ${
        median(cpu).toFixed(2)
      })`,
    );
  }
}
console.log(`load average after timing: ${load()}`);

/** Coarse category of a profile entry. */
function category(e: ProfileEntry): string {
  const k = e.kernel;
  if (e.label.startsWith("conv")) {
    if (/^conv3d:(pad|pack|planes)$/.test(k) || k.startsWith("map:")) return "conv packing and copies";
    if (k.startsWith("reduce:")) return "conv bias/partial sums";
    return "conv kernels";
  }
  if (k.startsWith("norm:")) return "norms";
  if (k.startsWith("attention:") || k.startsWith("matmul:")) return "attention and matmul";
  if (k === "map:copy") return "copies";
  if (k.startsWith("map:")) return "element-wise";
  if (k.startsWith("reduce:")) return "reductions";
  if (k.startsWith("optim:")) return "optimizer";
  return k;
}

function printProfile(title: string, entries: ProfileEntry[], wall: number): void {
  const total = entries.reduce((s, e) => s + e.seconds, 0);
  const dispatches = entries.reduce((s, e) => s + e.count, 0);
  console.log(
    `\n### ${title}: GPU ${(total * 1000).toFixed(0)} ms in ${dispatches} dispatches (wall ${
      (wall * 1000).toFixed(0)
    } ms with per-dispatch timing)\n`,
  );
  const cats = new Map<string, { seconds: number; count: number }>();
  for (const e of entries) {
    const c = cats.get(category(e)) ?? { seconds: 0, count: 0 };
    c.seconds += e.seconds;
    c.count += e.count;
    cats.set(category(e), c);
  }
  console.log("| category | GPU ms | share | dispatches |\n| --- | ---: | ---: | ---: |");
  for (const [name, c] of [...cats].sort((a, b) => b[1].seconds - a[1].seconds)) {
    console.log(
      `| ${name} | ${(c.seconds * 1000).toFixed(1)} | ${
        (100 * c.seconds / total).toFixed(1)
      }% | ${c.count} |`,
    );
  }
  // Convolutions by shape and pass.
  const convs = new Map<string, { seconds: number; count: number; packing: number }>();
  for (const e of entries) {
    if (!e.label.startsWith("conv")) continue;
    const c = convs.get(e.label) ?? { seconds: 0, count: 0, packing: 0 };
    c.seconds += e.seconds;
    c.count += e.count;
    if (category(e) === "conv packing and copies") c.packing += e.seconds;
    convs.set(e.label, c);
  }
  console.log("\n| convolution (summed over calls) | GPU ms | share | of which packing | dispatches |");
  console.log("| --- | ---: | ---: | ---: | ---: |");
  for (const [name, c] of [...convs].sort((a, b) => b[1].seconds - a[1].seconds)) {
    console.log(
      `| ${name} | ${(c.seconds * 1000).toFixed(1)} | ${(100 * c.seconds / total).toFixed(1)}% | ${
        (c.packing * 1000).toFixed(1)
      } | ${c.count} |`,
    );
  }
  console.log(
    "\n| kernel family (where: inside convolutions or not) | GPU ms | share | dispatches |\n| --- | ---: | ---: | ---: |",
  );
  const other = new Map<string, { seconds: number; count: number }>();
  for (const e of entries) {
    const key = `${e.kernel} (${e.label.startsWith("conv") ? "conv" : "other"})`;
    const c = other.get(key) ?? { seconds: 0, count: 0 };
    c.seconds += e.seconds;
    c.count += e.count;
    other.set(key, c);
  }
  for (const [name, c] of [...other].sort((a, b) => b[1].seconds - a[1].seconds).slice(0, 20)) {
    console.log(
      `| ${name} | ${(c.seconds * 1000).toFixed(1)} | ${
        (100 * c.seconds / total).toFixed(1)
      }% | ${c.count} |`,
    );
  }
}

if (values.profile) {
  if (!canProfile()) {
    console.log("\nno timestamp-query on this adapter: no profile");
  } else {
    for (const w of works) {
      await V.sync();
      startProfile();
      const t = await timed(run[w]);
      printProfile(`${w} profile, ${values.arch} at ${size}³ batch ${batch}`, await stopProfile(), t.wall);
    }
  }
}

for (const c of contenders) {
  await c.input.close();
  await c.proc.status;
}
optimizer.dispose();
x.dispose();
target.dispose();
unet.dispose();
