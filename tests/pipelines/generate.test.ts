/**
 * The generation pipeline: the sampler registry; `generate` equals the sampling loop it wraps (same
 * scheduler, same noise, then clamp); batches, class labels, inpainting and its errors; the output writers.
 */

import { deepStrictEqual, ok, rejects, strictEqual, throws } from "node:assert";
import { memory } from "../../engine/memory.ts";
import { readNifti } from "../../io/nifti.ts";
import { generate, type Generator } from "../../pipelines/generate.ts";
import { loadGenerator } from "../../pipelines/generators.ts";
import { loadModelFile } from "../../pipelines/modelfile.ts";
import { writeStackedFiles, writeVolumeFiles } from "../../pipelines/output.ts";
import {
  ACCEPTED_SAMPLER_NAMES,
  findSampler,
  makeScheduler,
  SAMPLER_NAMES,
} from "../../samplers/registry.ts";
import { sample } from "../../samplers/sample.ts";
import { EulerAncestralScheduler } from "../../samplers/scheduler.ts";
import { gpuTest } from "../helpers/gpu.ts";
import { makeTinyModel, TINY_AFFINE } from "../server/helpers.ts";

Deno.test("sampler registry: canonical names, aliases, and one error for unknown names", () => {
  deepStrictEqual(SAMPLER_NAMES, ["ddim", "ddpm", "euler-a"]);
  deepStrictEqual(ACCEPTED_SAMPLER_NAMES, ["ddim", "ddpm", "euler-a", "euler"]);
  strictEqual(findSampler("euler")?.name, "euler-a");
  strictEqual(findSampler("heun"), undefined);
  ok(makeScheduler("euler", {}) instanceof EulerAncestralScheduler);
  throws(() => makeScheduler("heun", {}), /^Error: sampler "heun" is not one of ddim, ddpm, euler-a\.$/);
});

async function withTinyModel(
  fn: (path: string, dir: string) => Promise<void>,
  extra = {},
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-generate-" });
  try {
    await makeTinyModel(`${dir}/tiny.safetensors`, extra);
    await fn(`${dir}/tiny.safetensors`, dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

gpuTest("generate = sample with the model's scheduler, clamped to its range, split per volume", async () => {
  await withTinyModel(async (path) => {
    const model = await loadGenerator(path);
    const before = memory().liveBytes;
    const got = await generate(model, { sampler: "ddpm", steps: 3, seed: 7, batch: 2 });
    strictEqual(memory().liveBytes, before, "generate frees everything it allocated");
    deepStrictEqual(got.shape, [8, 8, 8]);
    deepStrictEqual(got.affine, TINY_AFFINE);
    strictEqual(got.volumes.length, 2);
    // The same chain by hand.
    const { unet, info } = await loadModelFile(path);
    const x = await sample((xt, t) => unet.forward(xt, t), makeScheduler("ddpm", info.scheduler), {
      shape: [2, 1, 8, 8, 8],
      steps: 3,
      seed: 7,
    });
    const ref = await x.toArray();
    x.dispose();
    unet.dispose();
    for (let b = 0; b < 2; b++) {
      const expected = ref.slice(b * 512, (b + 1) * 512).map((v) => Math.min(1, Math.max(-1, v)));
      deepStrictEqual(got.volumes[b], expected, `volume ${b}`);
    }
    model.dispose();
  });
});

gpuTest("generate: inpainting keeps the known voxels; bad requests fail with clear errors", async () => {
  await withTinyModel(async (path) => {
    const model = await loadGenerator(path);
    try {
      const image = Float32Array.from({ length: 512 }, (_, i) => Math.cos(i) * 0.5);
      // The mask marks what to generate: the second half.
      const mask = Float32Array.from({ length: 512 }, (_, i) => (i < 256 ? 0 : 1));
      const got = await generate(model, { sampler: "ddim", steps: 3, seed: 1, inpaint: { image, mask } });
      const v = got.volumes[0];
      for (let i = 0; i < 256; i++) strictEqual(v[i], image[i], `known voxel ${i}`);
      ok(v.slice(256).some((x, i) => x !== image[256 + i]), "the unknown half was generated");

      await rejects(
        generate(model, { sampler: "ddim", steps: 2, seed: 1, inpaint: { image: image.slice(1), mask } }),
        /the inpainting image has 511 voxels; the model generates 8×8×8 = 512\./,
      );
      await rejects(
        generate(model, { sampler: "ddim", steps: 2, seed: 1, guidanceScale: 3 }),
        /guidance scale 3: the model is unconditional/,
      );
      await rejects(
        generate(model, { sampler: "ddim", steps: 2, seed: 1, classLabel: 1 }),
        /a class label was given, but the model has no classes\./,
      );
      await rejects(generate(model, { sampler: "plms", steps: 2, seed: 1 }), /sampler "plms" is not one of/);
    } finally {
      model.dispose();
    }
  });
});

gpuTest(
  "generate: a class-conditional model needs a label in range, and a null class for guidance",
  async () => {
    await withTinyModel(async (path) => {
      const model: Generator = await loadGenerator(path);
      try {
        await rejects(
          generate(model, { sampler: "ddim", steps: 2, seed: 1 }),
          /the model is class-conditional: give a class label, an integer in 0\.\.2\./,
        );
        await rejects(
          generate(model, { sampler: "ddim", steps: 2, seed: 1, classLabel: 3 }),
          /an integer in 0\.\.2 \(got 3\)/,
        );
        await rejects(
          generate(model, { sampler: "ddim", steps: 2, seed: 1, classLabel: 1, guidanceScale: 2 }),
          /learned no null class/,
        );
        const a = await generate(model, { sampler: "ddim", steps: 2, seed: 1, classLabel: 0 });
        const b = await generate(model, { sampler: "ddim", steps: 2, seed: 1, classLabel: 2 });
        ok(a.volumes[0].some((v, i) => v !== b.volumes[0][i]), "the class changes the sample");
      } finally {
        model.dispose();
      }
    }, { numClassEmbeds: 3 });
  },
);

Deno.test("output writers: one file per volume, or one 4-D NIfTI with stacked previews", async () => {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-output-" });
  try {
    const volumes = [new Float32Array(24).fill(0.5), new Float32Array(24).fill(-0.5)];
    const generated = {
      volumes,
      shape: [2, 3, 4] as [number, number, number],
      affine: TINY_AFFINE,
      range: [-1, 1] as [number, number],
    };
    const written = await writeVolumeFiles(generated, `${dir}/s.nii.gz`);
    deepStrictEqual(written, [
      { nifti: `${dir}/s_0.nii.gz`, png: `${dir}/s_0.png` },
      { nifti: `${dir}/s_1.nii.gz`, png: `${dir}/s_1.png` },
    ]);
    deepStrictEqual([...(await readNifti(`${dir}/s_1.nii.gz`)).data], [...volumes[1]]);
    await writeStackedFiles(generated, `${dir}/all.nii.gz`, `${dir}/all.png`);
    const all = await readNifti(`${dir}/all.nii.gz`);
    deepStrictEqual(all.shape, [2, 3, 4, 2]);
    deepStrictEqual(all.affine, TINY_AFFINE);
    await Deno.stat(`${dir}/all.png`);
    await rejects(
      writeVolumeFiles(generated, `${dir}/s.nrrd`),
      /"\S+s\.nrrd" must end in \.nii or \.nii\.gz\./,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
