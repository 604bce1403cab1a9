/**
 * Side-by-side timing of conv3d kernel choices at given shapes: each round runs every variant once
 * (interleaved, so all see the same load) and the medians of process CPU time per call are compared.
 * Variants: `auto` (what the engine picks), `direct` and `chunk` (`convSettings.path`), each optionally with
 * `/wN`: the direct weight-gradient kernel aiming at N workgroups (`convSettings.weightGradWorkgroups`).
 *
 * Run: `XDG_RUNTIME_DIR=/tmp deno run -A bench/conv_paths.ts --shapes 16x1x32k3,48x16x32k1 [--rounds 5]
 *   [--variants auto,chunk] [--pass fwd|train] [--batch 1]`
 * A shape is `CINxCOUTxSIZEkK` (stride 1, padding K/2, batch `--batch`, default 1); `pass train` times forward + both gradients.
 *
 * @module
 */

import { parseArgs } from "node:util";
import * as V from "../mod.ts";
import { conv3d, convSettings } from "../engine/ops/conv.ts";
import { median, timeBatch } from "./timing.ts";

const { values } = parseArgs({
  options: {
    shapes: { type: "string", default: "16x1x32k3,48x16x32k1" },
    rounds: { type: "string", default: "5" },
    variants: { type: "string", default: "auto,chunk" },
    pass: { type: "string", default: "fwd" },
    reps: { type: "string", default: "3" },
    batch: { type: "string", default: "1" },
  },
});
await V.ready();
const variants = values.variants!.split(",");
function use(variant: string): void {
  const [path, w] = variant.split("/w");
  if (path !== "auto" && path !== "direct" && path !== "chunk") throw new Error(`variant ${variant}`);
  convSettings.path = path;
  convSettings.weightGradWorkgroups = w ? Number(w) : 0;
}
const rounds = Number(values.rounds);
const reps = Number(values.reps);
console.log(
  `load average ${
    Deno.loadavg().map((l) => l.toFixed(2)).join(" ")
  }; ${values.pass}, ${reps} calls per batch`,
);
for (const spec of values.shapes!.split(",")) {
  const m = /^(\d+)x(\d+)x(\d+)k(\d+)$/.exec(spec);
  if (!m) throw new Error(`shape ${spec}: expected CINxCOUTxSIZEkK`);
  const [cin, cout, size, k] = m.slice(1).map(Number);
  const x = V.randn([Number(values.batch), cin, size, size, size], { seed: 1 });
  const w = V.randn([cout, cin, k, k, k], { seed: 2 });
  const b = V.randn([cout], { seed: 3 });
  const train = values.pass === "train";
  for (const t of [x, w, b]) t.setRequiresGrad(train);
  const run = () =>
    V.scope(() => {
      const y = conv3d(x, w, { bias: b, padding: Math.floor(k / 2) });
      if (train) V.grad(V.sum(y), [x, w, b]);
    });
  const cpu: Record<string, number[]> = {};
  for (const v of variants) {
    use(v);
    await timeBatch(run, 1); // compile
    cpu[v] = [];
  }
  for (let r = 0; r < rounds; r++) {
    for (const v of variants) {
      use(v);
      cpu[v].push((await timeBatch(run, reps)).cpu / reps);
    }
  }
  use("auto");
  const base = median(cpu[variants[0]]);
  console.log(
    `${spec}: ` + variants.map((v) => {
      const s = median(cpu[v]);
      return `${v} ${(s * 1000).toFixed(1)} ms CPU (${(base / s).toFixed(2)}× ${variants[0]})`;
    }).join(", "),
  );
  for (const t of [x, w, b]) t.dispose();
}
