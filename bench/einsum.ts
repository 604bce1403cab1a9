/**
 * The TenVOO-L and TenVOO-Q contractions (10 cores → the [i0, i1, i2, kD, kH, kW, o0, o1, o2] weight of a
 * 256→256 conv, channels factorised (8, 8, 4), k = 3) at ranks 4 and 8: plan search time (uncached),
 * forward, and forward + backward to all 10 cores, with the number of dispatches of each. Each
 * contraction is also timed with every step forced onto the matmul kernel, to show what the broadcast
 * product path saves on small steps.
 *
 * The backward is driven by L = Σ y ⊙ g with a fixed random g; the row "loss only" times that weighted
 * sum and its backward on a tensor of the output's size, the overhead included in "fwd+bwd".
 * With `--steps`, each pairwise step is also timed alone (as a two-operand einsum), forward and
 * forward + backward, on the matmul path and on the broadcast-product path, to show where time goes.
 *
 * Run: `XDG_RUNTIME_DIR=/tmp deno run -A bench/einsum.ts [--seconds 1] [--steps]`
 *
 * @module
 */

import * as V from "../mod.ts";
import { einsum, einsumStrategy } from "../engine/ops/einsum.ts";
import { clearPlanCache, einsumPath, planEinsum } from "../engine/ops/einsum_path.ts";
import { measure } from "./timing.ts";

const secondsArg = Deno.args.indexOf("--seconds");
const minSeconds = secondsArg >= 0 ? Number(Deno.args[secondsArg + 1]) : 1;

await V.ready();
console.log(`adapter: ${V.deviceInfo().adapter}`);

const SPECS = {
  L: "bade,cefg,xghi,yijk,zklm,Cmno,BopA,fdqh,lrpn,jqr->abcxyzABC",
  Q: "bade,cefg,xghi,yijk,zjlm,Cmop,BpqA,oqrs,dftr,hlst->abcxyzABC",
};

/** Core shapes for a 256→256 conv, k = 3, channels (8, 8, 4) in and out. */
function coreShapes(kind: "L" | "Q", r: number): number[][] {
  const [i0, i1, i2, o0, o1, o2, k] = [8, 8, 4, 8, 8, 4, 3];
  return [
    [i1, i0, r, r],
    [i2, r, r, r],
    [k, r, r, r],
    kind === "L" ? [k, r, r, r] : [k, 1, r, r],
    [k, r, r, r],
    [o2, r, r, r],
    [o1, r, r, o0],
    [r, r, r, r],
    [r, r, r, r],
    kind === "L" ? [r, r, r] : [r, r, r, r],
  ];
}

function random(shape: number[], seed: number, requiresGrad = false): V.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = Math.sin((i + 1) * 12.9898 + seed * 78.233) * 0.5;
  return V.tensor(data, shape, { requiresGrad });
}

const ms = (s: number) => (s * 1000).toFixed(2);

/** Dispatches recorded by one call of `fn` (inside a scope, so its tensors are freed). */
function dispatchesOf(fn: () => void): number {
  const before = V.runtimeStats().dispatches;
  V.scope(fn);
  return V.runtimeStats().dispatches - before;
}

/** Times every pairwise step of the plan alone, on both paths (ms forward / ms forward + backward). */
async function profileSteps(spec: string, shapes: number[][]): Promise<void> {
  const plan = planEinsum(spec, shapes);
  const size = (letters: string) => [...letters].reduce((n, c) => n * plan.sizes.get(c)!, 1);
  for (const step of plan.steps) {
    const a = random([...step.a].map((c) => plan.sizes.get(c)!), 1, true);
    const b = random([...step.b].map((c) => plan.sizes.get(c)!), 2, true);
    const g = random([...step.result].map((c) => plan.sizes.get(c)!), 3);
    const cells: string[] = [];
    for (const force of ["matmul", "product"] as const) {
      einsumStrategy.force = force;
      const f = await measure(() => V.scope(() => void einsum(step.spec, a, b)), {
        minSeconds: minSeconds / 4,
      });
      const fb = await measure(
        () =>
          V.scope(() => V.grad(V.sum(V.mul(einsum(step.spec, a, b), g)), [a, b]).forEach((t) => t.dispose())),
        {
          minSeconds: minSeconds / 4,
        },
      );
      cells.push(`${force} ${ms(f.seconds)} / ${ms(fb.seconds)}`);
    }
    einsumStrategy.force = null;
    const dims = `B${size(step.batch)} M${size(step.left)} K${size(step.contract)} N${size(step.right)}`;
    console.log(`    ${step.spec.padEnd(30)} ${dims.padEnd(26)} ${cells.join("   ")}`);
    [a, b, g].forEach((t) => t.dispose());
  }
}

const rows: string[][] = [];

for (const r of [4, 8]) {
  for (const kind of ["L", "Q"] as const) {
    const spec = SPECS[kind];
    const shapes = coreShapes(kind, r);
    // Plan search, uncached: the median of 20 searches.
    const searches: number[] = [];
    for (let i = 0; i < 20; i++) {
      clearPlanCache();
      const t0 = performance.now();
      einsumPath(spec, ...shapes);
      searches.push(performance.now() - t0);
    }
    searches.sort((a, b) => a - b);
    const plan = einsumPath(spec, ...shapes);
    const cores = shapes.map((s, k) => random(s, k, true));
    const outShape = [8, 8, 4, 3, 3, 3, 8, 8, 4];
    const g = random(outShape, 99);
    const forward = () => void einsum(spec, ...cores);
    const both = () => {
      const y = einsum(spec, ...cores);
      const grads = V.grad(V.sum(V.mul(y, g)), cores);
      grads.forEach((t) => t.dispose());
    };
    for (const force of [null, "matmul"] as const) {
      einsumStrategy.force = force;
      const fwd = await measure(() => V.scope(forward), { minSeconds });
      const fb = await measure(() => V.scope(both), { minSeconds });
      rows.push([
        `TenVOO-${kind} r=${r}${force ? " (all matmul)" : ""}`,
        searches[10].toFixed(2),
        ms(fwd.seconds),
        String(dispatchesOf(forward)),
        (plan.totalFlops / fwd.seconds / 1e9).toFixed(2),
        ms(fb.seconds),
        String(dispatchesOf(both)),
      ]);
    }
    einsumStrategy.force = null;
    V.scope(() => cores.concat(g)).forEach((t) => t.dispose());
    console.log(
      `TenVOO-${kind} r=${r}: ${plan.steps.length} steps, ${plan.totalFlops.toExponential(3)} FLOPs ` +
        `(naive ${plan.naiveFlops.toExponential(3)})`,
    );
    for (const s of plan.steps) console.log(`  ${JSON.stringify(s.operands)} ${s.spec}  ${s.flops}`);
    if (Deno.args.includes("--steps")) await profileSteps(spec, shapes);
  }
}

// The loss used to drive backward, alone, on a tensor the size of the output.
{
  const y = random([8, 8, 4, 3, 3, 3, 8, 8, 4], 1, true);
  const g = random([8, 8, 4, 3, 3, 3, 8, 8, 4], 2);
  const loss = () => void V.grad(V.sum(V.mul(y, g)), [y])[0].dispose();
  const m = await measure(() => V.scope(loss), { minSeconds });
  rows.push(["loss only (Σ y⊙g, fwd+bwd)", "", "", "", "", ms(m.seconds), String(dispatchesOf(loss))]);
  y.dispose();
  g.dispose();
}

const header = [
  "contraction",
  "plan ms",
  "fwd ms",
  "fwd disp.",
  "fwd GFLOP/s",
  "fwd+bwd ms",
  "fwd+bwd disp.",
];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (cells: string[]) =>
  cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
console.log(line(header));
for (const r of rows) console.log(line(r));
