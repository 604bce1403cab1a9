/**
 * The element-wise map kernels with and without the vec4 path (`mapSettings.vec4`), interleaved round by
 * round, on contiguous 16M-element tensors: `add`, `exp` and a copy into a channel slice (as `concat` does).
 * Reports process CPU seconds per call and GB/s of bytes read + written per CPU-second.
 *
 * Run: `XDG_RUNTIME_DIR=/tmp deno run -A bench/map_vec4.ts [--rounds 5] [--size 16777216]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import * as V from "../mod.ts";
import { mapSettings } from "../engine/ops/map.ts";
import { median, timeBatch } from "./timing.ts";

const { values } = parseArgs({
  options: { rounds: { type: "string", default: "5" }, size: { type: "string", default: String(2 ** 24) } },
});
await V.ready();
const n = Number(values.size);
const a = V.randn([n], { seed: 1 });
const b = V.randn([n], { seed: 2 });
const ops: Record<string, { run: () => void; bytes: number }> = {
  add: { run: () => V.scope(() => V.add(a, b)), bytes: 12 * n },
  exp: { run: () => V.scope(() => V.exp(a)), bytes: 8 * n },
  concat: { run: () => V.scope(() => V.concat([a, b], 0)), bytes: 16 * n },
};
console.log(`load average ${Deno.loadavg().map((l) => l.toFixed(2)).join(" ")}; ${n} elements`);
for (const [name, op] of Object.entries(ops)) {
  const cpu: Record<string, number[]> = { vec4: [], scalar: [] };
  for (const v of ["vec4", "scalar"]) {
    mapSettings.vec4 = v === "vec4";
    await timeBatch(op.run, 1);
  }
  for (let r = 0; r < Number(values.rounds); r++) {
    for (const v of ["vec4", "scalar"]) {
      mapSettings.vec4 = v === "vec4";
      cpu[v].push((await timeBatch(op.run, 2)).cpu / 2);
    }
  }
  mapSettings.vec4 = true;
  const [v4, s] = [median(cpu.vec4), median(cpu.scalar)];
  console.log(
    `${name}: vec4 ${(v4 * 1000).toFixed(1)} ms CPU (${(op.bytes / v4 / 1e9).toFixed(2)} GB/s), scalar ${
      (s * 1000).toFixed(1)
    } ms CPU (${(op.bytes / s / 1e9).toFixed(2)} GB/s): ${(s / v4).toFixed(2)}×`,
  );
}
for (const t of [a, b]) t.dispose();
