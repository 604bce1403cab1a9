/**
 * `deno task info`: the WebGPU adapter and device voxgen uses (limits, features) and a tiny compute
 * self-check through the engine; or, with `--adapter FILE`, an adapter file's per-layer table and totals
 * (read from its metadata, no GPU needed).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { adapterSummary, readAdapterInfo } from "../adapters/mod.ts";
import { deviceInfo, ready } from "../engine/device.ts";
import { tensor } from "../engine/ops/create.ts";
import { mul } from "../engine/ops/elementwise.ts";

const HELP = `Usage: deno task info [--adapter FILE]

  (no options)     the WebGPU adapter, its limits and features, and a compute self-check
  --adapter FILE   an adapter file's method, base model hash, adapted layers and trainable parameters
                   (repeat for several files)
`;

/** The limits that decide which volume sizes and kernels fit. */
const KEY_LIMITS = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupsPerDimension",
];

/** Runs the command with `args`. */
export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      adapter: { type: "string", multiple: true },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  if (values.adapter?.length) {
    for (const [i, path] of values.adapter.entries()) {
      try {
        await Deno.stat(path);
      } catch {
        throw new Error(`--adapter: no such file ${path}.`);
      }
      if (i > 0) console.log("");
      console.log(`${path}\n${adapterSummary(await readAdapterInfo(path))}`);
    }
    return;
  }

  await ready();
  const info = deviceInfo();
  console.log(`adapter:   ${info.adapter}${info.vendor ? ` (vendor ${info.vendor})` : ""}`);
  console.log(`fallback:  ${info.isFallbackAdapter}${info.isFallbackAdapter ? " (software)" : ""}`);
  console.log("limits:");
  for (const name of KEY_LIMITS) {
    if (name in info.limits) console.log(`  ${name.padEnd(34)} ${info.limits[name]}`);
  }
  console.log(`features:  ${info.features.join(", ") || "(none)"}`);
  const out = await selfCheck();
  if (out.join() !== "2,4,6,8") throw new Error(`self-check: FAILED: expected [2,4,6,8], got [${out}].`);
  console.log("self-check: ok (the engine doubled [1,2,3,4] -> [2,4,6,8] on the GPU)");
}

/** Doubles [1, 2, 3, 4] with an engine op and reads it back. */
async function selfCheck(): Promise<number[]> {
  const x = tensor([1, 2, 3, 4], [4]);
  const y = mul(x, 2);
  try {
    return [...await y.toArray()];
  } finally {
    x.dispose();
    y.dispose();
  }
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    console.error(`info: ${(error as Error).message}`);
    Deno.exit(1);
  }
}
