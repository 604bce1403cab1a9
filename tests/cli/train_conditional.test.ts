/**
 * `deno task train` on a manifest: concepts become a learned token table (trained with the U-Net), classes
 * class embeddings plus a null class, condition dropout is recorded; the model file samples with prompts
 * and guidance. Also the manifest's errors.
 */

import { deepStrictEqual, ok, rejects, throws } from "node:assert";
import { main as train } from "../../cli/train.ts";
import { loadSafetensors } from "../../io/safetensors.ts";
import { writeNifti } from "../../io/nifti.ts";
import { TokenTable } from "../../models/tokens.ts";
import { generate } from "../../pipelines/generate.ts";
import { loadGenerator } from "../../pipelines/generators.ts";
import { parseManifest } from "../../pipelines/manifest.ts";
import { loadModelFile } from "../../pipelines/modelfile.ts";
import { gpuTest } from "../helpers/gpu.ts";
import { capture, writeTinyVolumes } from "./helpers.ts";

Deno.test("manifests: items, concepts in order of use, classes, and clear errors", () => {
  const m = parseManifest(
    JSON.stringify({
      items: [{ file: "a.nii", concept: "<a>", class: 1 }, { file: "/x/b.nii", prompt: "<b> <a>", class: 0 }],
    }),
    "/data",
  );
  deepStrictEqual(m.items, [
    { file: "/data/a.nii", tokens: ["<a>"], classLabel: 1 },
    { file: "/x/b.nii", tokens: ["<b>", "<a>"], classLabel: 0 },
  ]);
  deepStrictEqual([m.concepts, m.classes, m.hasConditions], [["<a>", "<b>"], 2, false]);
  deepStrictEqual(parseManifest('[{"file": "a.nii"}]', ".").items[0].tokens, []);
  throws(() => parseManifest("[]", ".", "m.json"), /^Error: m\.json: expected a non-empty list of items/);
  throws(() => parseManifest('[{"file": "a", "label": 1}]', "."), /item 0 has unknown field\(s\) label/);
  throws(() => parseManifest('[{"concept": "<a>"}]', "."), /item 0 needs "file"/);
  throws(() => parseManifest('[{"file": "a", "prompt": "<a>:0.5"}]', "."), /without AND or weights/);
  throws(
    () => parseManifest('[{"file": "a", "concept": "a"}]', "."),
    /item 0: prompt "a": "a" is not a token/,
  );
  throws(() => parseManifest('[{"file": "a", "class": 0}, {"file": "b"}]', "."), /1 of 2 items have a class/);
  throws(() => parseManifest('[{"file": "a", "class": -1}]', "."), /"class" must be an integer ≥ 0/);
});

async function checkModel(dir: string): Promise<void> {
  const { unet, info, tokens } = await loadModelFile(`${dir}/run/model.safetensors`);
  const fresh = new TokenTable(info.tokens!, { seed: 1 });
  const checkpoint = await loadSafetensors(`${dir}/run/checkpoint/model.safetensors`);
  try {
    deepStrictEqual(info.tokens, {
      contextLength: 4,
      dim: 8,
      concepts: [{ name: "<a>", vectors: 2 }, { name: "<b>", vectors: 2 }],
    });
    deepStrictEqual(info.conditioning, { uncondProb: 0.5, nullClass: 2 });
    deepStrictEqual([unet.config.numClassEmbeds, unet.config.crossAttentionDim], [3, 8]);
    // The table was trained: the last optimizer weights differ from the table the run started with.
    const before = await fresh.weight.toArray();
    const after = await checkpoint.get("token_embedding.weight")!.toArray();
    ok(after.some((v, i) => v !== before[i]), "the token table moved");
  } finally {
    fresh.dispose();
    for (const t of checkpoint.values()) t.dispose();
    unet.dispose();
    tokens!.dispose();
  }
}

gpuTest(
  "train on a manifest: a token table and classes trained with dropout; the model samples with prompts",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "voxgen-train-cond-" });
    try {
      const [a, b] = await writeTinyVolumes(dir, 2);
      await Deno.writeTextFile(
        `${dir}/manifest.json`,
        JSON.stringify({
          items: [{ file: a.split("/").pop(), concept: "<a>", class: 0 }, {
            file: b,
            concept: "<b>",
            class: 1,
          }],
        }),
      );
      const args = [
        "--data",
        `${dir}/manifest.json`,
        "--out",
        `${dir}/run`,
        "--size",
        "8",
        "--channels",
        "8,8",
        "--attention",
        "0,1",
        "--groups",
        "4",
        "--head-channels",
        "8",
        "--steps",
        "2",
        "--batch",
        "2",
        "--lr",
        "0.01",
        "--previews",
        "1",
        "--token-dim",
        "8",
        "--context-length",
        "4",
        "--vectors",
        "2",
        "--uncond-prob",
        "0.5",
      ];
      await capture(() => train(args));
      await checkModel(dir);
      const model = await loadGenerator(`${dir}/run/model.safetensors`);
      try {
        const out = await generate(model, {
          sampler: "ddim",
          steps: 2,
          seed: 0,
          prompt: "<b>",
          classLabel: 1,
          guidanceScale: 2,
        });
        ok(out.volumes[0].every(Number.isFinite));
      } finally {
        model.dispose();
      }
      await Deno.stat(`${dir}/run/sample_0.png`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

gpuTest("train on a manifest with condition volumes: an extra input channel, dropped to zeros", async () => {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-train-condvol-" });
  try {
    const files = await writeTinyVolumes(dir, 2);
    // Masks on the volumes' grid (12³, 1.5 mm): one half of the volume, and the other half.
    for (const [i, f] of files.entries()) {
      const mask = Float32Array.from({ length: 12 ** 3 }, (_, v) => ((v % 12 < 6) === (i === 0) ? 1 : 0));
      await writeNifti(f.replace(".nii.gz", "_mask.nii.gz"), {
        data: mask,
        shape: [12, 12, 12],
        spacing: [1.5, 1.5, 1.5],
      });
    }
    await Deno.writeTextFile(
      `${dir}/m.json`,
      JSON.stringify(files.map((f) => ({ file: f, condition: f.replace(".nii.gz", "_mask.nii.gz") }))),
    );
    await capture(() =>
      train([
        "--data",
        `${dir}/m.json`,
        "--out",
        `${dir}/run`,
        "--size",
        "8",
        "--channels",
        "8,8",
        "--attention",
        "0,1",
        "--groups",
        "4",
        "--head-channels",
        "8",
        "--steps",
        "2",
        "--batch",
        "2",
        "--lr",
        "0.01",
        "--previews",
        "1",
      ])
    );
    const model = await loadGenerator(`${dir}/run/model.safetensors`);
    try {
      deepStrictEqual([model.sampleShape, model.conditions?.channels], [[1, 8, 8, 8], 1]);
      await rejects(
        generate(model, { sampler: "ddim", steps: 1, seed: 0 }),
        /the model takes 1 condition volume\(s\) of 8×8×8; give them/,
      );
      const half = (side: number) =>
        Float32Array.from({ length: 512 }, (_, v) => ((v % 8 < 4) === (side === 0) ? 1 : 0));
      const a = await generate(model, { sampler: "ddim", steps: 2, seed: 0, condition: half(0) });
      const b = await generate(model, { sampler: "ddim", steps: 2, seed: 0, condition: half(1) });
      ok(a.volumes[0].some((v, i) => v !== b.volumes[0][i]), "the condition volume changes the sample");
      const guided = await generate(model, {
        sampler: "ddim",
        steps: 2,
        seed: 0,
        condition: half(0),
        guidanceScale: 2,
      });
      ok(guided.volumes[0].some((v, i) => v !== a.volumes[0][i]), "guidance against the zero condition");
    } finally {
      model.dispose();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
