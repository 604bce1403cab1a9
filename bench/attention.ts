/**
 * Fused attention at diffusion U-Net sizes: B = 1, 8 heads, d = 32, self-attention over N tokens (a 16³
 * level has 4096, 32³ has 32768). For each N: forward and forward + backward (gradients of q, k and v)
 * time, GFLOP/s, the share of the adapter's FMA peak measured in the same run (right before each row, since
 * other work on the machine moves it), and the peak GPU memory of the call from `memory().peakBytes`, which
 * grows linearly with N: the N×N scores are never stored.
 *
 * FLOPs follow the FlashAttention papers: forward 4·B·H·N²·d (q·kᵀ and P·v); forward + backward 3.5× that
 * (the backward's five matmuls: recomputed S, dV, dP, dQ, dK). The kernels here execute 4.5× forward for
 * forward + backward, because the dQ and dK/dV kernels each recompute S and dP (no atomics).
 *
 * The largest size (default 32768) runs the forward once (it is ~1.1 TFLOP); `--big-backward` adds its
 * forward + backward. Kernels are compiled before timing (at a small N with the same tiling), and the
 * compile time of each tiling is printed.
 *
 * Run: `XDG_RUNTIME_DIR=/tmp deno run -A bench/attention.ts [--sizes 4096,8192,16384] [--big 32768]
 * [--big-backward] [--heads 8] [--d 32]`
 *
 * @module
 */

import * as V from "../mod.ts";
import { attention, overrideAttentionTiling } from "../engine/ops/attention.ts";
import { resetPeak } from "../engine/pool.ts";
import { attentionTiling } from "../kernels/attention.ts";
import { fmaPeak } from "./roofline.ts";

function arg(name: string, fallback: string): string {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Deno.args[i + 1] : fallback;
}
const sizes = arg("--sizes", "4096,8192,16384").split(",").map(Number);
const big = Number(arg("--big", "32768"));
const bigBackward = Deno.args.includes("--big-backward");
const H = Number(arg("--heads", "8"));
const d = Number(arg("--d", "32"));

const info = await V.ready();
console.log(`adapter: ${info.adapter}; B = 1, H = ${H}, d = dv = ${d}, self-attention`);

interface Run {
  /** Wall-clock seconds, GPU work included (best of the repetitions). */
  seconds: number;
  /** Peak GPU bytes allocated during the call beyond what was live before it. */
  peakBytes: number;
}

/** Runs `fn` (which records GPU work) `reps` times; the best time and the peak memory of a call. */
async function run(fn: () => void, reps = 1): Promise<Run> {
  let seconds = Infinity;
  let peakBytes = 0;
  for (let i = 0; i < reps; i++) {
    await V.sync();
    const before = V.memory().liveBytes;
    resetPeak();
    const t0 = performance.now();
    fn();
    await V.sync();
    seconds = Math.min(seconds, (performance.now() - t0) / 1000);
    peakBytes = Math.max(peakBytes, V.memory().peakBytes - before);
  }
  return { seconds, peakBytes };
}

const fma = fmaPeak(1024, 256);
/** FMA peak in GFLOP/s now (best of 3 short runs). */
async function peakNow(): Promise<number> {
  return fma.amount / (await run(fma.run, 3)).seconds / 1e9;
}

function random(shape: number[], seed: number): V.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = Math.sin((i + 1) * 12.9898 + seed * 78.233) * 1.5;
  return V.tensor(data, shape, { requiresGrad: true });
}

const forward = (q: V.Tensor, k: V.Tensor, v: V.Tensor) => () =>
  V.noGrad(() => V.scope(() => void attention(q, k, v)));
const forwardBackward = (q: V.Tensor, k: V.Tensor, v: V.Tensor) => () =>
  V.scope(() => void V.grad(V.sum(attention(q, k, v)), [q, k, v]));

/** Compiles the kernels the heuristic picks for N tokens by running them at a small N with that tiling. */
async function compileFor(n: number): Promise<string> {
  const cpu = info.isFallbackAdapter;
  const tiling = (pass: "forward" | "dq" | "dkv") => attentionTiling(pass, { d, dv: d }, n, n, H, cpu);
  overrideAttentionTiling((pass) => tiling(pass));
  const [q, k, v] = [0, 1, 2].map((s) => random([1, 1, 64, d], s));
  const t = (await run(forwardBackward(q, k, v))).seconds;
  [q, k, v].forEach((x) => x.dispose());
  overrideAttentionTiling(null);
  const rows = (["forward", "dq", "dkv"] as const).map((p) => `${p} ${tiling(p).rows}`).join(", ");
  return `rows per lane: ${rows}; compile + first run ${t.toFixed(1)} s`;
}

const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);
const compiled = new Set<string>();

async function measureSize(n: number, withBackward: boolean, reps: number): Promise<void> {
  const key = JSON.stringify(
    (["forward", "dq", "dkv"] as const).map((p) =>
      attentionTiling(p, { d, dv: d }, n, n, H, info.isFallbackAdapter)
    ),
  );
  if (!compiled.has(key)) {
    console.log(`  N = ${n}: ${await compileFor(n)}`);
    compiled.add(key);
  }
  const [q, k, v] = [0, 1, 2].map((s) => random([1, H, n, d], s));
  const flops = 4 * H * n * n * d;
  const report = (what: string, r: Run, modelFlops: number, peak: number) => {
    const gflops = modelFlops / r.seconds / 1e9;
    return `${what} ${r.seconds.toFixed(2).padStart(7)} s ${gflops.toFixed(2).padStart(6)} GFLOP/s ` +
      `${(100 * gflops / peak).toFixed(1).padStart(4)}% of FMA peak ${peak.toFixed(1)}, ` +
      `peak memory +${mib(r.peakBytes)} MiB (${(r.peakBytes / n).toFixed(0)} B/token)`;
  };
  const lines = [`N = ${n} (scores would take ${mib(4 * H * n * n)} MiB)`];
  const fmaBefore = await peakNow();
  lines.push(report("  forward        ", await run(forward(q, k, v), reps), flops, fmaBefore));
  if (withBackward) {
    const fmaBetween = await peakNow();
    lines.push(
      report("  forward+backward", await run(forwardBackward(q, k, v), reps), 3.5 * flops, fmaBetween),
    );
  }
  console.log(lines.join("\n"));
  [q, k, v].forEach((x) => x.dispose());
}

for (const n of sizes) await measureSize(n, true, n <= 4096 ? 3 : 1);
if (big > 0) await measureSize(big, bigBackward, 1);
fma.dispose();
