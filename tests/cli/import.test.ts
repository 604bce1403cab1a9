/**
 * `cli import --monai`: MONAI DiffusionModelUNet checkpoints written by torch 1.13
 * (tests/fixtures/make_torch_checkpoint_fixtures.py) become voxgen model files whose U-Net gives MONAI's
 * output; a ControlNet checkpoint becomes a control file whose residuals steer the U-Net as MONAI's do, an
 * AutoencoderKL checkpoint an autoencoder file that encodes and decodes as MONAI's does; a
 * checkpoint carrying any other global is refused and writes nothing.
 *
 * @module
 */

import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert";
import { main as importModel } from "../../cli/import.ts";
import { noGrad } from "../../engine/autograd.ts";
import { loadSafetensorsFile } from "../../io/safetensors.ts";
import type { ControlNet } from "../../models/controlnet.ts";
import { loadControlFile } from "../../pipelines/control.ts";
import { loadAutoencoderFile } from "../../pipelines/latent_modelfile.ts";
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

gpuTest(
  "cli import: a MONAI ControlNet checkpoint becomes a control file that steers its U-Net as MONAI's does",
  async () => {
    await withTempDir(async (dir) => {
      // The U-Net first: the ControlNet's config without the condition embedding, one output channel.
      const config = JSON.parse(await Deno.readTextFile(`${DIR}controlnet_config.json`));
      const {
        conditioning_embedding_in_channels: _channels,
        conditioning_embedding_num_channels: _stages,
        ...unetConfig
      } = config;
      await Deno.writeTextFile(`${dir}/unet.json`, JSON.stringify({ ...unetConfig, out_channels: 1 }));
      const model = `${dir}/model.safetensors`;
      const control = `${dir}/control.safetensors`;
      await capture(() =>
        importModel([
          "--monai",
          `${DIR}controlnet_unet.pt`,
          "--config",
          `${dir}/unet.json`,
          "--out",
          model,
          "--shape",
          "4,4,4",
        ])
      );
      await rejects(
        importModel([
          "--monai",
          `${DIR}controlnet.pt`,
          "--config",
          `${DIR}controlnet_config.json`,
          "--out",
          control,
        ]),
        /--base is required for a ControlNet/,
      );
      await rejects(
        importModel([
          "--monai",
          `${DIR}controlnet.pt`,
          "--config",
          `${DIR}controlnet_config.json`,
          "--out",
          control,
          "--base",
          model,
          "--conditions",
          "mask:1",
        ]),
        /--conditions: 1 channels in all, but the ControlNet's condition embedding takes 2/,
      );
      const printed = await capture(() =>
        importModel([
          "--monai",
          `${DIR}controlnet.pt`,
          "--config",
          `${DIR}controlnet_config.json`,
          "--out",
          control,
          "--base",
          model,
          "--conditions",
          "ventricles:1,tissue:1",
        ])
      );
      ok(printed.stdout.includes(`wrote ${control}: ControlNet`), printed.stdout);

      const { unet } = await loadModelFile(model);
      const { module, info } = await loadControlFile(control, unet); // refuses a module for other base weights
      deepStrictEqual(info.conditions, ["ventricles", "tissue"]);
      const { tensors, metadata } = await loadSafetensorsFile(`${DIR}controlnet_expected.safetensors`);
      const x = tensors.get("fixture.x")!;
      const t = tensors.get("fixture.timesteps")!;
      const residuals = noGrad(() =>
        (module as ControlNet).forward(x, t, tensors.get("fixture.cond")!, {
          conditioningScale: Number(metadata.conditioning_scale),
        })
      );
      const y = noGrad(() => unet.forward(x, t, residuals));
      const expected = await tensors.get("fixture.output")!.toArray();
      const rms = Math.sqrt(expected.reduce((s, v) => s + v * v, 0) / expected.length);
      const error = maxAbsDiff(await y.toArray(), expected) / rms;
      ok(error <= TOLERANCE, `U-Net + ControlNet vs MONAI: ${error}`);
      disposeAll(y, residuals.downBlockAdditionalResiduals, residuals.midBlockAdditionalResidual, [
        ...tensors.values(),
      ]);
      module.dispose();
      unet.dispose();
    });
  },
);

gpuTest(
  "cli import: a MONAI AutoencoderKL checkpoint becomes an autoencoder file that encodes and decodes as MONAI's",
  async () => {
    await withTempDir(async (dir) => {
      const out = `${dir}/autoencoder.safetensors`;
      const printed = await capture(() =>
        importModel([
          "--monai",
          `${DIR}autoencoder.pt`,
          "--config",
          `${DIR}autoencoder_config.json`,
          "--out",
          out,
          "--shape",
          "8,8,8",
          "--range",
          "0,1",
        ])
      );
      ok(printed.stdout.includes(`wrote ${out}: AutoencoderKL`), printed.stdout);
      const { autoencoder, info } = await loadAutoencoderFile(out);
      deepStrictEqual(info.volume.range, [0, 1]);
      const { tensors } = await loadSafetensorsFile(`${DIR}autoencoder_expected.safetensors`);
      const { mu, sigma } = noGrad(() => autoencoder.encode(tensors.get("fixture.x")!));
      const decoded = noGrad(() => autoencoder.decode(tensors.get("fixture.z")!));
      for (const [name, actual] of [["mu", mu], ["decoded", decoded]] as const) {
        const expected = await tensors.get(`fixture.${name}`)!.toArray();
        const rms = Math.sqrt(expected.reduce((s, v) => s + v * v, 0) / expected.length);
        const error = maxAbsDiff(await actual.toArray(), expected) / rms;
        ok(error <= TOLERANCE, `${name} vs MONAI: ${error}`);
      }
      disposeAll(mu, sigma, decoded, [...tensors.values()]);
      autoencoder.dispose();
    });
  },
);
