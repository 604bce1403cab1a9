/**
 * `deno task sample` with conditions: --prompt with --cfg, --embedding, inpainting from NIfTI files, and
 * the errors for unknown tokens, bad prompts and half-given inpainting inputs.
 */

import { match, ok, rejects, strictEqual } from "node:assert";
import { main as sample } from "../../cli/sample.ts";
import { readNifti, writeNifti } from "../../io/nifti.ts";
import { gpuTest } from "../helpers/gpu.ts";
import { makeTinyEmbedding, makeTinyTokenModel, TINY_AFFINE } from "../server/helpers.ts";
import { capture } from "./helpers.ts";

gpuTest(
  "sample --prompt/--cfg/--embedding/--inpaint-*: conditional sampling from the command line",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "voxgen-cli-cond-" });
    try {
      const model = `${dir}/cond.safetensors`;
      await makeTinyTokenModel(model);
      await makeTinyEmbedding(model, `${dir}/lesion.ti.safetensors`, "<lesion>", 1);
      const base = ["--model", model, "--steps", "2"];

      const guided = await capture(() =>
        sample([
          ...base,
          "--prompt",
          "<t1>:0.7 AND <lesion>:0.3",
          "--cfg",
          "2",
          "--embedding",
          `${dir}/lesion.ti.safetensors`,
          "--out",
          `${dir}/g.nii`,
        ])
      );
      match(guided.stdout, /wrote .*g\.nii/);
      const g = await readNifti(`${dir}/g.nii`);
      ok(g.data.every((v) => v >= -1 && v <= 1));

      await rejects(
        capture(() => sample([...base, "--prompt", "<lesion>", "--out", `${dir}/x.nii`])),
        /unknown token <lesion>; the model knows <t1>, <flair> \(and "" for the null prompt\)/,
      );
      await rejects(
        capture(() => sample([...base, "--prompt", "t1"])),
        /^Error: --prompt: prompt "t1": "t1" is not a token/,
      );
      await rejects(
        capture(() => sample([...base, "--inpaint-image", `${dir}/g.nii`])),
        /--inpaint-image and --inpaint-mask go together/,
      );

      // Inpainting: keep the earlier sample outside the first z slice, regenerate that slice.
      const mask = Float32Array.from({ length: 512 }, (_, i) => (i < 64 ? 1 : 0));
      await writeNifti(`${dir}/mask.nii.gz`, { data: mask, shape: [8, 8, 8], affine: TINY_AFFINE });
      await capture(() =>
        sample([
          ...base,
          "--prompt",
          "<flair>",
          "--inpaint-image",
          `${dir}/g.nii`,
          "--inpaint-mask",
          `${dir}/mask.nii.gz`,
          "--out",
          `${dir}/i.nii`,
        ])
      );
      const inpainted = await readNifti(`${dir}/i.nii`);
      for (let i = 64; i < 512; i++) strictEqual(inpainted.data[i], g.data[i], `kept voxel ${i}`);
      ok(inpainted.data.slice(0, 64).some((v, i) => v !== g.data[i]), "the masked slice was generated");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
