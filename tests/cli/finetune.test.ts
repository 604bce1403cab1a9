/**
 * `finetune`, `sample --adapter` and `info --adapter`, run in-process on a tiny random U-Net (8³ volumes);
 * `info` on the device.
 *
 * @module
 */

import { deepStrictEqual, ok } from "node:assert";
import { modelHash, readAdapterInfo } from "../../adapters/mod.ts";
import { main as finetune } from "../../cli/finetune.ts";
import { main as info } from "../../cli/info.ts";
import { main as sample } from "../../cli/sample.ts";
import { readNifti } from "../../io/nifti.ts";
import { loadModelFile } from "../../pipelines/modelfile.ts";
import { assertClose } from "../helpers/check.ts";
import { gpuTest } from "../helpers/gpu.ts";
import { capture, QUICK, setup } from "./helpers.ts";

/** Samples with 3 DDIM steps and returns the volume. */
async function sampled(dir: string, name: string, args: string[]): Promise<Float32Array> {
  const out = `${dir}/${name}.nii`;
  await capture(() => sample(["--steps", "3", "--seed", "5", "--out", out, ...args]));
  return (await readNifti(out)).data;
}

gpuTest("finetune writes an adapter that sample blends and info describes", async () => {
  const { dir, base, data } = await setup();
  const adapter = `${dir}/tenvoo.safetensors`;
  const { stdout } = await capture(() =>
    finetune([
      ...["--base", base, "--adapter", "tenvoo-l", "--rank", "2", "--data", data, "--out", adapter],
      ...["--steps", "3", "--ema", "0", ...QUICK],
    ])
  );
  ok(stdout.includes(`wrote ${adapter}`), stdout);

  // The file describes the adapter and the base model it belongs to.
  const meta = await readAdapterInfo(adapter);
  const { unet } = await loadModelFile(base);
  const hash = await modelHash(unet);
  unet.dispose();
  deepStrictEqual(
    [meta.kind, meta.rank, meta.alpha, meta.seed, meta.baseHash, meta.jointModules],
    ["tenvoo-l", 2, 2, 0, hash, false],
  );
  // The default targets in the tiny U-Net: 6 ResnetBlocks outside the middle block × (conv1, conv2,
  // time_emb_proj), and time_embed.2.
  deepStrictEqual(meta.layers.length, 19);
  deepStrictEqual(meta.layers.filter((l) => l.layer === "linear").length, 7);

  // The run folder: checkpoint, loss log (header + 3 steps) and plot.
  const run = `${dir}/tenvoo.run`;
  deepStrictEqual((await Deno.readTextFile(`${run}/loss.csv`)).trim().split("\n").length, 4);
  for (const f of ["loss.png", "checkpoint/meta.json"]) await Deno.stat(`${run}/${f}`);

  // Weight 0 leaves the base model exactly (W + 0·ΔW = W); weight 1 changes the samples; two halves of the
  // same adapter make a whole one (the second is loaded with the hash of the unmodified base).
  const plain = await sampled(dir, "base", ["--model", base]);
  const zero = await sampled(dir, "zero", ["--model", base, "--adapter", `${adapter}:0`]);
  const one = await sampled(dir, "one", ["--model", base, "--adapter", adapter]);
  const halves = await sampled(dir, "halves", [
    ...["--model", base, "--adapter", `${adapter}:0.5`, "--adapter", `${adapter}:0.5`],
  ]);
  deepStrictEqual(zero, plain);
  const change = one.reduce((m, v, i) => Math.max(m, Math.abs(v - plain[i])), 0);
  ok(change > 1e-3, `the adapter changed the sample by at most ${change}`);
  // W + ½Δ + ½Δ vs W + Δ: f32 rounding of the weights, carried through 3 DDIM steps of a tiny U-Net.
  assertClose(halves, one, { atol: 1e-4, rtol: 1e-4, name: "two halves vs one" });

  // info --adapter: the per-layer table and the totals.
  const printed = (await capture(() => info(["--adapter", adapter]))).stdout;
  ok(printed.includes("TenVOO-L adapter: rank 2"), printed);
  for (const l of meta.layers) ok(printed.includes(l.name), `${l.name} missing from\n${printed}`);
  const total = meta.layers.reduce((n, l) => n + l.numParameters, 0);
  ok(printed.includes(`trainable total: ${total.toLocaleString("en-US")} =`), printed);
  await Deno.remove(dir, { recursive: true });
});

gpuTest("info prints the device and passes its self-check", async () => {
  const { stdout } = await capture(() => info([]));
  ok(/^adapter: {3}\S/m.test(stdout), stdout);
  ok(stdout.includes("maxStorageBufferBindingSize"), stdout);
  ok(stdout.includes("self-check: ok"), stdout);
});
