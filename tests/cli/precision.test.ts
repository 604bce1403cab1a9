/**
 * `sample --precision f16`: the same seed gives nearly the same volume as f32 (an 8³ model with 2 DDIM
 * steps: differences of a few f16 roundings, far below the [−1, 1] range), and a bad value is refused
 * naming the accepted ones; the library's loaders convert the U-Net's parameters.
 *
 * @module
 */

import { ok, rejects, strictEqual } from "node:assert";
import { main as sample } from "../../cli/sample.ts";
import { readNifti } from "../../io/nifti.ts";
import { loadModelWithAdapters } from "../../pipelines/generators.ts";
import { disposeModel } from "../../pipelines/modelfile.ts";
import { gpuTest } from "../helpers/gpu.ts";
import { capture, makeTinyModel } from "./helpers.ts";

gpuTest("sample --precision f16 stays close to f32 for the same seed; bad values are refused", async () => {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-precision-" });
  try {
    const model = `${dir}/tiny.safetensors`;
    await makeTinyModel(model);
    await rejects(() => sample(["--model", model, "--precision", "bf16"]), /--precision: .*one of f32, f16/);
    const run = async (precision: string) => {
      const out = `${dir}/${precision}.nii`;
      const args = ["--model", model, "--steps", "2", "--seed", "4", "--out", out];
      const { stderr } = await capture(() => sample([...args, "--precision", precision]));
      ok(stderr.includes(`(${precision})`), stderr);
      return (await readNifti(out)).data;
    };
    const f32 = await run("f32");
    const f16 = await run("f16");
    strictEqual(f16.length, f32.length);
    let max = 0;
    for (let i = 0; i < f32.length; i++) max = Math.max(max, Math.abs(f16[i] - f32[i]));
    // Each of the two forwards rounds its activations to f16 (2^-11 relative) layer after layer.
    ok(max < 0.02, `largest voxel difference f16 vs f32: ${max}`);
    ok(max > 0, "f16 gave the f32 volume bit for bit: the f16 path did not run");

    const loaded = await loadModelWithAdapters(model, { precision: "f16" });
    try {
      strictEqual(loaded.unet.precision, "f16");
      ok(loaded.unet.parameters().every((t) => t.dtype === "float16"));
    } finally {
      disposeModel(loaded);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
