/**
 * scripts/cdpm_study.ts end to end on tiny random models (8³ volumes, 2 DDIM steps): a 3-D model, a slice
 * model without slice attention and a slab model are generated through the pipeline and scored against
 * real augmentations, with one real reference row per grid; the command writes its table, JSON and previews.
 */

import { deepStrictEqual, ok, rejects } from "node:assert";
import { SliceDiffusionUNet } from "../../models/slice_unet.ts";
import { saveModelFile } from "../../pipelines/modelfile.ts";
import { saveSliceModelFile } from "../../pipelines/slice_model.ts";
import { main, runStudy } from "../../scripts/cdpm_study.ts";
import { DiffusionModelUNet } from "../../models/unet.ts";
import { capture, makeTinyModel, writeTinyVolumes } from "../cli/helpers.ts";
import { gpuTest } from "../helpers/gpu.ts";
import { loadRandom } from "../models/slice_helpers.ts";

const AFFINE = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]];

gpuTest(
  "cdpm_study scores 3-D, independent-slice and slab models per view, with a reference per grid",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "voxgen-cdpm-study-" });
    await Deno.mkdir(`${dir}/data`);
    const files = await writeTinyVolumes(`${dir}/data`);
    await makeTinyModel(`${dir}/volume.safetensors`);
    const slices = new SliceDiffusionUNet({
      channels: [8, 16],
      attentionLevels: [false, true],
      numHeadChannels: 8,
      normNumGroups: 4,
      sliceAttention: false,
    });
    loadRandom(slices, 3, 0.3);
    await saveSliceModelFile(`${dir}/independent.safetensors`, new Map(slices.stateDict()), {
      network: slices.config,
      slots: 1,
      scheduler: {},
      volume: { shape: [8, 8, 8], affine: AFFINE, range: [-1, 1] },
    });
    slices.dispose();
    const unetOptions = {
      spatialDims: 3 as const,
      inChannels: 1,
      outChannels: 1,
      channels: [8, 8],
      attentionLevels: [false, false],
      numResBlocks: 1,
      normNumGroups: 4,
    };
    const unet = new DiffusionModelUNet(unetOptions);
    await saveModelFile(`${dir}/slab.safetensors`, new Map(unet.stateDict()), {
      unet: unetOptions,
      scheduler: {},
      volume: { shape: [8, 8, 4], affine: AFFINE, range: [-1, 1] },
    });
    unet.dispose();
    const models = ["volume", "independent", "slab"].map((name) => ({
      name,
      file: `${dir}/${name}.safetensors`,
    }));
    // MS-SSIM that fits 8² slices (2 scales of a 3-tap window need 6 voxels per axis; a 4-slice slab's side
    // views do not fit).
    const msSsim = { dataRange: 2, kernelSize: 3, kernelSigma: 1, weights: [0.5, 0.5] };
    const rows = await runStudy({ files, models, count: 4, steps: 2, batch: 3, firstSeed: 5, msSsim });
    deepStrictEqual(
      rows.map((r) => [r.name, r.shape.join("x"), r.slab, Object.keys(r.scores.views).join()]),
      [
        ["real (other augmentations)", "8x8x8", false, "axial,coronal,sagittal"],
        ["volume", "8x8x8", false, "axial,coronal,sagittal"],
        ["independent", "8x8x8", false, "axial,coronal,sagittal"],
        ["real (other augmentations)", "8x8x4", true, "axial"],
        ["slab", "8x8x4", true, "axial"],
      ],
    );
    for (const r of rows) {
      ok(r.scores.rho.every((v) => Number.isFinite(v) && v > 0), `${r.name}: ρ ${r.scores.rho}`);
      for (const s of Object.values(r.scores.views)) {
        ok([s.mmdGaussian, s.mmdLinear, s.msSsimNearest, s.diversity].every(Number.isFinite), r.name);
      }
    }
    // Random weights make noise, not brains: far rougher along z than real volumes, unlike the reference.
    ok(Math.abs(rows[0].scores.rho[2] - 1) < 0.5, `reference ρ_z ${rows[0].scores.rho[2]}`);
    ok(rows[2].scores.rho[2] > 2, `independent ρ_z ${rows[2].scores.rho[2]}`);
    // The models' rows share the real set's diversity with the reference row.
    deepStrictEqual(rows[1].scores.realDiversity, rows[0].scores.realDiversity);

    const printed = await capture(() =>
      main([
        "--data",
        `${dir}/data`,
        "--model",
        `independent=${dir}/independent.safetensors`,
        "--count",
        "4",
        "--steps",
        "1",
        "--json",
        `${dir}/study.json`,
        "--previews",
        `${dir}/previews`,
      ])
    );
    ok(printed.stdout.includes("| independent | 8×8×8 |"), printed.stdout);
    const json = JSON.parse(await Deno.readTextFile(`${dir}/study.json`));
    deepStrictEqual(json.rows.map((r: { name: string }) => r.name), [
      "real (other augmentations)",
      "independent",
    ]);
    for (const png of ["independent.png", "real_8x8x8.png"]) await Deno.stat(`${dir}/previews/${png}`);
    await rejects(
      capture(() => main(["--data", `${dir}/data`, "--model", "x"])),
      /--model x: expected NAME=FILE/,
    );
    await Deno.remove(dir, { recursive: true });
  },
);
