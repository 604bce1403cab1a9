/**
 * Sampling under control through the one generation pipeline: a zero-initialised VCM or ControlNet leaves
 * the generated volumes bit-identical, a trained-looking one changes them, and `sample --control-model
 * --control` writes volumes or refuses a condition on the wrong grid with a clear error.
 */

import { deepStrictEqual, ok, rejects } from "node:assert";
import { noGrad, randn } from "../../mod.ts";
import { copyInto } from "../../engine/ops/map.ts";
import { writeNifti } from "../../io/nifti.ts";
import { main as sample } from "../../cli/sample.ts";
import {
  type ControlKind,
  controlledGenerator,
  createControl,
  saveControlFile,
} from "../../pipelines/control.ts";
import { generate } from "../../pipelines/generate.ts";
import { loadModelFile } from "../../pipelines/modelfile.ts";
import { loadGenerator } from "../../pipelines/generators.ts";
import { capture, makeTinyModel } from "../cli/helpers.ts";
import { gpuTest } from "../helpers/gpu.ts";

const TINY_VCM = {
  encoderChannels: [4],
  encoderGroups: 4,
  unet: { channels: [8, 8], attentionLevels: [false, false], numResBlocks: 1, normNumGroups: 4 },
  hiddenChannels: 8,
  headChannels: 8,
};

/** A 0/1 ball on the tiny model's 8³ grid. */
function ball(n = 8): Float32Array {
  const c = (n - 1) / 2;
  return Float32Array.from({ length: n ** 3 }, (_, i) => {
    const x = i % n, y = Math.floor(i / n) % n, z = Math.floor(i / (n * n));
    return (x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2 < 9 ? 1 : 0;
  });
}

const REQUEST = { sampler: "ddim", steps: 3, seed: 4 };

for (const kind of ["vcm", "controlnet"] as ControlKind[]) {
  gpuTest(
    `generate under ${kind}: identity at initialisation, a change once its output layers are non-zero`,
    async () => {
      const dir = await Deno.makeTempDir({ prefix: "voxgen-control-" });
      const modelPath = `${dir}/base.safetensors`;
      await makeTinyModel(modelPath);
      const model = await loadModelFile(modelPath);
      const control = await createControl(kind, model.unet, {
        conditions: ["mask"],
        conditionChannels: [1],
        vcm: TINY_VCM,
      });
      const zeroFile = `${dir}/zero.safetensors`;
      await saveControlFile(zeroFile, control);
      // The same module with its zero-initialised output layers redrawn (what training would move).
      noGrad(() => {
        for (const [name, t] of control.module.namedParameters()) {
          if (
            !/^(mlp_gamma|mlp_beta|time_unet\.out\.2|controlnet_down_blocks|controlnet_mid_block)\./.test(
              name,
            )
          ) continue;
          const w = randn(t.shape, { seed: t.size });
          copyInto(t, w);
          w.dispose();
        }
      });
      const wokeFile = `${dir}/woke.safetensors`;
      await saveControlFile(wokeFile, control);
      control.module.dispose();
      model.unet.dispose();

      const condition = { data: ball(), shape: [8, 8, 8], source: "ball" };
      const plain = await loadGenerator(modelPath);
      const expected = await generate(plain, REQUEST);
      plain.dispose();
      for (const [file, same] of [[zeroFile, true], [wokeFile, false]] as const) {
        const controlled = await controlledGenerator(await loadModelFile(modelPath), {
          file,
          conditions: [condition],
        });
        const got = await generate(controlled, REQUEST);
        controlled.dispose();
        if (same) deepStrictEqual(got.volumes, expected.volumes);
        else {ok(
            got.volumes[0].some((v, i) => v !== expected.volumes[0][i]),
            `${kind}: the control changed nothing`,
          );}
      }
      await Deno.remove(dir, { recursive: true });
    },
  );
}

gpuTest(
  "sample --control-model --control writes volumes; a condition on the wrong grid is refused",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "voxgen-control-" });
    const modelPath = `${dir}/base.safetensors`;
    await makeTinyModel(modelPath);
    const model = await loadModelFile(modelPath);
    const control = await createControl("vcm", model.unet, {
      conditions: ["mask"],
      conditionChannels: [1],
      vcm: TINY_VCM,
    });
    await saveControlFile(`${dir}/vcm.safetensors`, control);
    control.module.dispose();
    model.unet.dispose();
    await writeNifti(`${dir}/mask.nii.gz`, { data: ball(), shape: [8, 8, 8] });
    await writeNifti(`${dir}/big.nii.gz`, { data: ball(16), shape: [16, 16, 16] });
    const common = ["--model", modelPath, "--steps", "2", "--control-model", `${dir}/vcm.safetensors`];
    const { stdout } = await capture(() =>
      sample([...common, "--control", `${dir}/mask.nii.gz`, "--out", `${dir}/s.nii.gz`])
    );
    ok(stdout.includes(`wrote ${dir}/s.nii.gz`), stdout);
    await Deno.stat(`${dir}/s.nii.gz`);
    await rejects(
      () => capture(() => sample([...common, "--control", `${dir}/big.nii.gz`, "--out", `${dir}/t.nii.gz`])),
      /condition "mask" \(.*big\.nii\.gz\) is 16×16×16; this control module takes it on the grid 8×8×8/,
    );
    await rejects(
      () => sample(["--model", modelPath, "--control", `${dir}/mask.nii.gz`]),
      /--control and --control-scale need --control-model/,
    );
    await Deno.remove(dir, { recursive: true });
  },
);
