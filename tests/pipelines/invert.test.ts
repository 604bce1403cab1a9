/**
 * Textual inversion: only the new vectors train (the base model's weights stay bit-identical), A1111's
 * cyclic initialisation, the embedding file's round trip and refusals (another base, another width), the
 * diffusers import, and `deno task invert` end to end (its file samples with `--embedding`).
 */

import { deepStrictEqual, match, ok, rejects, strictEqual, throws } from "node:assert";
import { describeFile } from "../../cli/info.ts";
import { main as invert } from "../../cli/invert.ts";
import { main as sample } from "../../cli/sample.ts";
import { tensor } from "../../engine/ops/create.ts";
import { saveSafetensors } from "../../io/safetensors.ts";
import {
  attachEmbedding,
  baseModelHash,
  loadEmbeddingFile,
  saveEmbeddingFile,
} from "../../pipelines/embedding.ts";
import { initialVectors, invertConcept } from "../../pipelines/invert.ts";
import { loadModelFile } from "../../pipelines/modelfile.ts";
import { DDPMScheduler } from "../../samplers/scheduler.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";
import { capture, writeTinyVolumes } from "../cli/helpers.ts";
import { makeTinyModel, makeTinyTokenModel, TINY_TOKENS } from "../server/helpers.ts";
import { loadVolume, volumeTensor } from "../../pipelines/dataset.ts";

gpuTest("invertConcept trains only the new vectors: the base model stays bit-identical", async () => {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-invert-" });
  try {
    await makeTinyTokenModel(`${dir}/cond.safetensors`);
    const model = await loadModelFile(`${dir}/cond.safetensors`);
    const volumes = await Promise.all(
      (await writeTinyVolumes(dir, 2)).map(async (f) =>
        volumeTensor(await loadVolume(f, { shape: [8, 8, 8], fov: "foreground", range: [-1, 1] }))
      ),
    );
    try {
      const before = await baseModelHash(model.unet, model.tokens!);
      // A1111's cyclic initialisation: 3 vectors from <t1>'s 2 rows (table rows 2, 3) are rows 2, 2, 3.
      const table = await model.tokens!.weight.toArray();
      const init = await initialVectors(model.tokens!, 3, "<t1>");
      deepStrictEqual([...init], [...table.slice(16, 24), ...table.slice(16, 24), ...table.slice(24, 32)]);
      const { vectors, result } = await invertConcept(
        model,
        new DDPMScheduler(model.info.scheduler),
        volumes,
        {
          name: "<new>",
          vectors: 3,
          init: "<t1>",
          steps: 3,
          lr: 0.05,
          augment: null,
          outDir: `${dir}/run`,
          progress: false,
        },
      );
      strictEqual(result.step, 3);
      deepStrictEqual(vectors.shape, [3, 8]);
      const learned = await vectors.toArray();
      ok(learned.some((v, i) => v !== init[i]), "the vectors moved");
      strictEqual(await baseModelHash(model.unet, model.tokens!), before, "U-Net and token table unchanged");
      deepStrictEqual(
        model.tokens!.concepts().map((c) => c.name),
        ["<t1>", "<flair>"],
        "the concept is removed again",
      );
      // The checkpoint holds the new vectors only.
      const ckpt = JSON.parse(await Deno.readTextFile(`${dir}/run/checkpoint/meta.json`));
      strictEqual(ckpt.parameters, "trainable");
      await rejects(initialVectors(model.tokens!, 2, "<nope>"), /unknown token <nope>/);
      vectors.dispose();
    } finally {
      disposeAll(volumes);
      model.unet.dispose();
      model.tokens!.dispose();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

gpuTest("embedding files: round trip, refusal on another base or width, diffusers import", async () => {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-embedding-" });
  try {
    await makeTinyTokenModel(`${dir}/a.safetensors`);
    await makeTinyModel(`${dir}/b.safetensors`, { withConditioning: true, crossAttentionDim: 8, seed: 4 }, {
      tokens: TINY_TOKENS,
    });
    const a = await loadModelFile(`${dir}/a.safetensors`);
    const b = await loadModelFile(`${dir}/b.safetensors`);
    const values = Float32Array.from({ length: 16 }, (_, i) => i / 10 - 0.5);
    const vectors = tensor(values, [2, 8]);
    const hashA = await baseModelHash(a.unet, a.tokens!);
    const info = {
      name: "<les>",
      numVectors: 2,
      dim: 8,
      contextLength: 4,
      baseModelHash: hashA,
      init: "<t1>",
      steps: 3,
      lr: 0.005,
    };
    await saveEmbeddingFile(`${dir}/les.ti.safetensors`, vectors, info);
    const loaded = await loadEmbeddingFile(`${dir}/les.ti.safetensors`);
    deepStrictEqual([loaded.name, loaded.info, [...(await loaded.vectors.toArray())]], ["<les>", info, [
      ...values,
    ]]);
    attachEmbedding(a.tokens!, hashA, loaded, "les.ti.safetensors");
    deepStrictEqual(a.tokens!.concepts().at(-1), { name: "<les>", vectors: 2, added: true });
    throws(
      () => attachEmbedding(b.tokens!, "f".repeat(64), loaded, "les.ti.safetensors"),
      /les\.ti\.safetensors: the embedding "<les>" was learned on another base model \(base hash [0-9a-f]{16}… in the file, f{16}… for this model\)/,
    );

    // diffusers: { token: [n, D] } with metadata format "pt"; older files store one vector as [D].
    await saveSafetensors(`${dir}/learned_embeds.safetensors`, new Map([["<cat>", vectors]]), {
      format: "pt",
    });
    const cat = await loadEmbeddingFile(`${dir}/learned_embeds.safetensors`);
    deepStrictEqual([cat.name, cat.info, cat.vectors.shape], ["<cat>", null, [2, 8]]);
    attachEmbedding(b.tokens!, "any base", cat, "learned_embeds.safetensors");
    const one = tensor(values.slice(0, 8), [8]);
    await saveSafetensors(`${dir}/old.safetensors`, new Map([["dog", one]]));
    const dog = await loadEmbeddingFile(`${dir}/old.safetensors`);
    deepStrictEqual([dog.name, dog.vectors.shape], ["<dog>", [1, 8]]);
    const wide = tensor(new Float32Array(12), [1, 12]);
    await saveSafetensors(`${dir}/wide.safetensors`, new Map([["<w>", wide]]));
    const w = await loadEmbeddingFile(`${dir}/wide.safetensors`);
    throws(
      () => attachEmbedding(a.tokens!, hashA, w, "wide.safetensors"),
      /has width 12; this model's tokens have width 8/,
    );
    await rejects(
      loadEmbeddingFile(`${dir}/a.safetensors`),
      /an embedding file holds one tensor \(token → \[n, width\]\); this one has \d+ .*Is it an adapter or a model\?/,
    );
    disposeAll(vectors, loaded.vectors, cat.vectors, one, dog.vectors, wide, w.vectors);
    for (const m of [a, b]) {
      m.unet.dispose();
      m.tokens!.dispose();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

gpuTest("deno task invert writes an embedding that sample uses with --embedding", async () => {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-invert-cli-" });
  try {
    await makeTinyTokenModel(`${dir}/cond.safetensors`);
    await Deno.mkdir(`${dir}/data`);
    await writeTinyVolumes(`${dir}/data`, 2);
    const args = [
      "--base",
      `${dir}/cond.safetensors`,
      "--data",
      `${dir}/data`,
      "--name",
      "lesion",
      "--vectors",
      "2",
      "--init",
      "<flair>",
      "--steps",
      "2",
      "--out",
      `${dir}/lesion.ti.safetensors`,
    ];
    const first = await capture(() => invert(args));
    match(first.stdout, /wrote .*lesion\.ti\.safetensors/);
    const file = await loadEmbeddingFile(`${dir}/lesion.ti.safetensors`);
    const base = await loadModelFile(`${dir}/cond.safetensors`);
    deepStrictEqual(
      [
        file.name,
        file.info!.numVectors,
        file.info!.dim,
        file.info!.contextLength,
        file.info!.init,
        file.info!.steps,
      ],
      ["<lesion>", 2, 8, 4, "<flair>", 2],
    );
    strictEqual(file.info!.baseModelHash, await baseModelHash(base.unet, base.tokens!));
    const described = await describeFile(`${dir}/lesion.ti.safetensors`);
    match(
      described,
      /voxgen textual-inversion embedding \(voxgen-ti\)\n {2}token +<lesion>\n {2}vectors +2 × 8 \(contexts of 4 tokens\)/,
    );
    disposeAll(file.vectors);
    base.unet.dispose();
    base.tokens!.dispose();
    // A rerun with more steps continues the run; another --vectors is refused.
    const more = await capture(() =>
      invert([...args.slice(0, -4), "--steps", "3", "--out", `${dir}/lesion.ti.safetensors`])
    );
    match(more.stderr, /resuming from step 2/);
    await rejects(
      capture(() => invert([...args.slice(0, 7), "3", ...args.slice(8)])),
      /--vectors: 2 in the checkpoint, 3 now/,
    );
    await rejects(capture(() => invert([...args, "--init", "<t9>"])), /--init: unknown token <t9>/);

    const r = await capture(() =>
      sample([
        "--model",
        `${dir}/cond.safetensors`,
        "--embedding",
        `${dir}/lesion.ti.safetensors`,
        "--prompt",
        "<lesion>",
        "--cfg",
        "2",
        "--steps",
        "2",
        "--out",
        `${dir}/s.nii`,
      ])
    );
    match(r.stdout, /wrote .*s\.nii/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
