/**
 * `cli import --monai`: MONAI DiffusionModelUNet checkpoints written by torch 1.13
 * (tests/fixtures/make_torch_checkpoint_fixtures.py) become voxgen model files whose U-Net gives MONAI's
 * output; a checkpoint carrying any other global is refused and writes nothing.
 *
 * @module
 */

import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert";
import { main as importModel } from "../../cli/import.ts";
import { noGrad } from "../../engine/autograd.ts";
import { loadSafetensorsFile } from "../../io/safetensors.ts";
import { loadModelFile } from "../../pipelines/modelfile.ts";
import { maxAbsDiff } from "../helpers/check.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";
import { capture } from "./helpers.ts";

const DIR = new URL("../fixtures/torch_checkpoints/", import.meta.url).pathname;

// Max |voxgen − MONAI| / RMS(MONAI), the U-Net tests' tolerance (tests/models/unet.test.ts explains it):
// MONAI's outputs are float64 answers for the stored weights, so voxgen's float32 forward misses them by a
// few 1e-6, while one wrong weight moves the output by far more — as the float16 weights do (checked below).
const TOLERANCE = 2e-5;

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-import-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Imports `checkpoint` and returns the relative error of its output against each of MONAI's outputs. */
async function importAndRun(checkpoint: string, dir: string): Promise<Record<string, number>> {
  const out = `${dir}/${checkpoint}.safetensors`;
  const printed = await capture(() =>
    importModel([
      "--monai",
      `${DIR}${checkpoint}`,
      "--config",
      `${DIR}config.json`,
      "--out",
      out,
      "--shape",
      "8,8,8",
      "--prediction",
      "v_prediction",
    ])
  );
  ok(printed.stdout.includes(`wrote ${out}: 28,469 parameters from 144 tensors`), printed.stdout);
  const { unet, info } = await loadModelFile(out);
  strictEqual(info.scheduler.predictionType, "v_prediction");
  deepStrictEqual(info.volume.shape, [8, 8, 8]);
  const { tensors } = await loadSafetensorsFile(`${DIR}expected.safetensors`);
  const x = tensors.get("fixture.x")!;
  const timesteps = [...await tensors.get("fixture.timesteps")!.toArray()];
  const y = noGrad(() => unet.forward(x, timesteps));
  const actual = await y.toArray();
  const errors: Record<string, number> = {};
  for (const kind of ["f32", "f16"]) {
    const expected = await tensors.get(`fixture.output_${kind}`)!.toArray();
    const rms = Math.sqrt(expected.reduce((s, v) => s + v * v, 0) / expected.length);
    errors[kind] = maxAbsDiff(actual, expected) / rms;
  }
  disposeAll(y, [...tensors.values()]);
  unet.dispose();
  return errors;
}

gpuTest("cli import: float32 checkpoints (zip and legacy, nested) give MONAI's output", async () => {
  await withTempDir(async (dir) => {
    for (const checkpoint of ["unet_f32.pt", "unet_legacy.pt"]) {
      const errors = await importAndRun(checkpoint, dir);
      ok(errors.f32 <= TOLERANCE, `${checkpoint}: ${errors.f32} vs MONAI`);
      ok(errors.f16 > 10 * TOLERANCE, `${checkpoint}: the float16 weights' output is distinguishable`);
    }
  });
});

gpuTest("cli import: a float16 checkpoint gives MONAI's output for its float16 weights", async () => {
  await withTempDir(async (dir) => {
    const errors = await importAndRun("unet_f16.pt", dir);
    ok(errors.f16 <= TOLERANCE, `${errors.f16} vs MONAI`);
    ok(errors.f32 > 10 * TOLERANCE, "not the float32 output");
  });
});

Deno.test("cli import: a checkpoint with a pickled os.system call is refused and writes nothing", async () => {
  await withTempDir(async (dir) => {
    const out = `${dir}/evil.safetensors`;
    await rejects(
      importModel([
        "--monai",
        `${DIR}evil.pt`,
        "--config",
        `${DIR}config.json`,
        "--out",
        out,
        "--shape",
        "8,8,8",
      ]),
      /refuses the global posix\.system .*Nothing was executed/,
    );
    deepStrictEqual([...Deno.readDirSync(dir)], []);
  });
});

Deno.test("cli import: bad options say what is accepted", async () => {
  const base = [
    "--monai",
    `${DIR}unet_f32.pt`,
    "--config",
    `${DIR}config.json`,
    "--out",
    "/tmp/x.safetensors",
  ];
  await rejects(importModel(base), /--shape is required/);
  await rejects(importModel([...base, "--shape", "8,8"]), /--shape: expected three positive numbers/);
  await rejects(
    importModel([...base, "--shape", "8,8,8", "--prediction", "x0"]),
    /--prediction: "x0" is not one of/,
  );
  await rejects(importModel(["--monai", `${DIR}unet_f32.pt`]), /--config is required/);
});
