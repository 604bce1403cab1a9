import assert from "node:assert/strict";
import { runEval } from "../../cli/eval.ts";
import { writeNifti } from "../../io/nifti.ts";
import { mmd } from "../../metrics/mmd.ts";
import { gpuTest } from "../helpers/gpu.ts";
import { FIXTURES, imagePair, makeMask } from "./fixtures.ts";

/** NIfTI shape [nx, ny, nz]; as arrays the volumes are [nz, ny, nx]. */
const NIFTI_SHAPE = [20, 18, 16];
const ARRAY_SHAPE = [16, 18, 20];

async function writeSet(dir: string, seeds: number[], which: 0 | 1): Promise<Float32Array[]> {
  await Deno.mkdir(dir, { recursive: true });
  const out: Float32Array[] = [];
  for (const seed of seeds) {
    const data = imagePair([1, 1, ...ARRAY_SHAPE], seed, "correlated")[which];
    await writeNifti(`${dir}/vol_${seed}.nii.gz`, { data, shape: NIFTI_SHAPE, spacing: [1, 1, 1] });
    out.push(data);
  }
  return out;
}

gpuTest("eval on NIfTI folders prints a table and writes JSON; FID is skipped without features", async () => {
  const dir = await Deno.makeTempDir({ prefix: "voxgen_eval_" });
  try {
    const real = await writeSet(`${dir}/real`, [1, 2, 3], 0);
    const fake = await writeSet(`${dir}/fake`, [4, 5, 6], 1);
    const lines: string[] = [];
    const report = await runEval([
      "--real",
      `${dir}/real`,
      "--fake",
      `${dir}/fake`,
      "--metrics",
      "ms-ssim,ms-ssim-paired,ms-ssim-nearest,ssim,psnr,mae,mse,mmd,fid",
      "--kernel-size",
      "3",
      "--weights",
      "0.5,0.5",
      "--json",
      `${dir}/report.json`,
    ], (l) => lines.push(l));
    const text = lines.join("\n");
    assert.match(text, /real: 3 volumes \[16, 18, 20\]; generated: 3 volumes \[16, 18, 20\]/);
    assert.match(text, /^ms-ssim \(fake\)\s+0\.\d{4}\s+± \S+ over 3 pairs$/m);
    assert.match(text, /^ms-ssim \(real\)\s+0\.\d{4}/m);
    assert.match(text, /^fid\s+skipped\s+features: none supplied \(--features FILE\.safetensors/m);
    for (const m of ["ms-ssim-paired", "ms-ssim-nearest", "ssim", "psnr", "mae", "mse", "mmd"]) {
      assert.match(text, new RegExp(`^${m}\\s+-?\\d`, "m"), m);
      assert.equal(report.metrics[m].status, "ok", m);
    }
    // The numbers are the library's: MMD of the voxels, identical when recomputed directly.
    assert.equal(report.metrics.mmd.value, mmd(real, fake));
    const json = JSON.parse(await Deno.readTextFile(`${dir}/report.json`));
    assert.equal(json.metrics.mmd.value, report.metrics.mmd.value);
    assert.equal(json.metrics.fid.status, "skipped");
    assert.equal(json.real.files.length, 3);
    assert.deepEqual(
      json.metrics["ms-ssim-nearest"].nearest.map((n: { fake: string }) => n.fake.split("/").pop()),
      [
        "vol_4.nii.gz",
        "vol_5.nii.gz",
        "vol_6.nii.gz",
      ],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

gpuTest(
  "eval computes FID and feature MMD with MedicalNet weights, and Dice/HD95/ASSD on label volumes",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "voxgen_eval_" });
    try {
      await writeSet(`${dir}/real`, [7, 8, 9], 0);
      await writeSet(`${dir}/fake`, [10, 11, 12], 1);
      const weights = new URL("medicalnet_resnet10_tiny.safetensors", FIXTURES).pathname;
      const lines: string[] = [];
      const report = await runEval(
        [
          "--real",
          `${dir}/real`,
          "--fake",
          `${dir}/fake`,
          "--metrics",
          "fid,mmd-features",
          "--features",
          weights,
        ],
        (l) => lines.push(l),
      );
      assert.match(
        report.features!,
        /MedicalNet ResNet-10 \(width 4\) \(medicalnet_resnet10_tiny\.safetensors\)/,
      );
      assert.equal(report.metrics.fid.status, "ok");
      assert.ok(typeof report.metrics.fid.value === "number" && report.metrics.fid.value > 0);
      assert.match(lines.join("\n"), /^mmd-features\s+\S+\s+α = /m);

      // Sheets one voxel thick, perpendicular to x and 3 voxels apart along x, with 2 mm voxels along x: every
      // edge distance is 6 mm.
      const sheet = (x0: number) =>
        makeMask(ARRAY_SHAPE, { kind: "box", lo: [2, 2, x0], hi: [14, 16, x0 + 1] });
      await Deno.mkdir(`${dir}/gt`);
      await Deno.mkdir(`${dir}/seg`);
      await writeNifti(`${dir}/gt/a.nii`, { data: sheet(5), shape: NIFTI_SHAPE, spacing: [2, 1, 1] });
      await writeNifti(`${dir}/seg/a.nii`, { data: sheet(8), shape: NIFTI_SHAPE, spacing: [2, 1, 1] });
      const seg = await runEval(
        ["--real", `${dir}/gt`, "--fake", `${dir}/seg`, "--metrics", "dice,hd95,assd"],
        () => {},
      );
      assert.equal(seg.metrics.dice.mean, 0);
      assert.equal(seg.metrics.hd95.mean, 6);
      assert.ok(Math.abs((seg.metrics.assd.mean as number) - 6) < 1e-12);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

gpuTest("eval reports unusable options and inputs clearly", async () => {
  const dir = await Deno.makeTempDir({ prefix: "voxgen_eval_" });
  try {
    await writeSet(`${dir}/real`, [1, 2], 0);
    await writeSet(`${dir}/fake`, [3], 1);
    const args = ["--real", `${dir}/real`, "--fake", `${dir}/fake`];
    await assert.rejects(
      () => runEval([...args, "--metrics", "ms-ssim,bogus"], () => {}),
      /unknown metric\(s\) bogus/,
    );
    await assert.rejects(() => runEval(["--real", `${dir}/real`], () => {}), /give both --real and --fake/);
    await assert.rejects(() => runEval([...args, "--fake", `${dir}/nowhere`], () => {}), /does not exist/);
    // Too small for MONAI's default MS-SSIM, too few volumes to pair: errors per metric, others still run.
    const r = await runEval([...args, "--metrics", "ms-ssim,ssim,mmd", "--kernel-size", "3"], () => {});
    assert.equal(r.metrics["ms-ssim"].status, "error");
    assert.match(r.metrics["ms-ssim"].reason!, /needs at least 48.*weights/);
    assert.match(r.metrics.ssim.reason!, /as many real as generated volumes \(2 vs 1\)/);
    assert.match(r.metrics.mmd.reason!, /at least two samples in each set, got 2 and 1/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli/eval.ts runs as a script: --help lists the metrics", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../../cli/eval.ts", import.meta.url).pathname, "--help"],
    env: { XDG_RUNTIME_DIR: "/tmp" },
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const text = new TextDecoder().decode(out.stdout);
  assert.match(text, /usage: eval --real <file\|dir>\.\.\. --fake <file\|dir>\.\.\./);
  assert.match(text, /hd95 +95th-percentile Hausdorff distance/);
});
