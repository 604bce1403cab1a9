/**
 * The super-resolution row of the control study (docs/control.md; seed 001's Table 4): held-out deformed
 * template volumes keep every k-th axial slice (the `slices` condition of pipelines/control_data.ts), and the
 * missing slices are filled by linear interpolation along z (what trilinear resampling of the kept slices
 * reduces to: they are whole in-plane), by cubic convolution along z (Keys, a = −0.5), and by the frozen model
 * sampling under each given control module trained with `--conditions slices`. Scores against the real volume:
 * MAE, PSNR and SSIM over the whole volume, and MAE over the missing slices only.
 *
 *   deno run -A scripts/sr_study.ts [--every 4] [--pairs 4] [--control NAME=FILE …] [--steps 20] \
 *     [--model FILE] [--json OUT]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ready } from "../engine/device.ts";
import { fromData, type Tensor } from "../engine/tensor.ts";
import { atomicWrite } from "../io/atomic.ts";
import { mae, psnr } from "../metrics/regression.ts";
import { ssim } from "../metrics/ssim.ts";
import { augment } from "../pipelines/augment.ts";
import { controlledGenerator } from "../pipelines/control.ts";
import { conditionsOf, loadTemplatePair, pairSeed } from "../pipelines/control_data.ts";
import { generate } from "../pipelines/generate.ts";
import { loadModelFile } from "../pipelines/modelfile.ts";

/** How the missing axial slices are filled. */
export type AxialInterpolation = "linear" | "cubic";

/** Keys' cubic convolution kernel with a = −0.5 (Catmull-Rom): reproduces quadratics between the samples. */
function keys(t: number): number {
  const x = Math.abs(t);
  if (x <= 1) return 1.5 * x ** 3 - 2.5 * x ** 2 + 1;
  if (x < 2) return -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2;
  return 0;
}

/**
 * Cubic convolution's taps for sample `k` with weight `w`: a sample one step outside the kept ones is Keys'
 * boundary value (f(−1) = 3f(0) − 3f(1) + f(2), mirrored at the far end), which keeps quadratics exact up to
 * the ends; with fewer than three kept slices the end slice repeats.
 */
function outerNeighbour(k: number, kept: number, w: number): [number, number][] {
  if (k >= 0 && k < kept) return [[k, w]];
  if (kept < 3) return [[Math.min(Math.max(k, 0), kept - 1), w]];
  const [a, b, c] = k < 0 ? [0, 1, 2] : [kept - 1, kept - 2, kept - 3];
  return [[a, 3 * w], [b, -3 * w], [c, w]];
}

/**
 * Rebuilds every axial slice of `volume` (x fastest, `shape` [nx, ny, nz]) from the kept slices z ≡ 0 (mod
 * `every`) by interpolation along z. Kept slices are returned as they are; slices past the last kept one take
 * its values (no extrapolation); cubic interpolation takes Keys' boundary values as its outer neighbours.
 */
export function interpolateAxial(
  volume: Float32Array,
  shape: readonly [number, number, number],
  every: number,
  method: AxialInterpolation,
): Float32Array {
  const [nx, ny, nz] = shape;
  const plane = nx * ny;
  if (volume.length !== plane * nz) {
    throw new Error(`interpolateAxial: ${volume.length} values for a ${nx}×${ny}×${nz} volume`);
  }
  if (!Number.isInteger(every) || every < 1) {
    throw new Error(`interpolateAxial: every must be ≥ 1, got ${every}`);
  }
  const kept = Math.floor((nz - 1) / every) + 1;
  const at = (k: number) => Math.min(Math.max(k, 0), kept - 1) * every * plane;
  const out = new Float32Array(volume.length);
  for (let z = 0; z < nz; z++) {
    const u = Math.min(z / every, kept - 1);
    const k = Math.floor(u);
    const t = u - k;
    const row = z * plane;
    if (t === 0) {
      out.set(volume.subarray(at(k), at(k) + plane), row);
      continue;
    }
    const taps = method === "linear"
      ? [[k, 1 - t], [k + 1, t]]
      : [-1, 0, 1, 2].flatMap((d) => outerNeighbour(k + d, kept, keys(t - d)));
    for (const [kk, w] of taps) {
      const src = at(kk);
      for (let i = 0; i < plane; i++) out[row + i] += w * volume[src + i];
    }
  }
  return out;
}

/** Scores of one reconstruction against the real volume. */
export interface SrScores {
  mae: number;
  /** MAE over the slices that were not kept. */
  maeMissing: number;
  psnr: number;
  ssim: number;
}

/** MAE, PSNR and SSIM (3-D, 5-voxel Gaussian window, data range of `range`) of `volume` against `real`. */
export async function srScores(
  volume: Float32Array,
  real: Float32Array,
  shape: readonly [number, number, number],
  every: number,
  range: readonly [number, number],
): Promise<SrScores> {
  const [nx, ny, nz] = shape;
  const plane = nx * ny;
  let missing = 0;
  let count = 0;
  for (let z = 0; z < nz; z++) {
    if (z % every === 0) continue;
    for (let i = z * plane; i < (z + 1) * plane; i++) missing += Math.abs(volume[i] - real[i]);
    count += plane;
  }
  const dims = [1, 1, nz, ny, nx];
  const [a, b] = [fromData(volume, dims), fromData(real, dims)];
  const span = range[1] - range[0];
  const results: Tensor[] = [mae(a, b), psnr(a, b, span), ssim(a, b, { dataRange: span, kernelSize: 5 })];
  try {
    const [m, p, s] = await Promise.all(results.map(async (t) => (await t.toArray())[0]));
    return { mae: m, maeMissing: count > 0 ? missing / count : 0, psnr: p, ssim: s };
  } finally {
    for (const t of [a, b, ...results]) t.dispose();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string", default: "models/default/brain32.safetensors" },
      control: { type: "string", multiple: true },
      every: { type: "string", default: "4" },
      pairs: { type: "string", default: "4" },
      steps: { type: "string", default: "20" },
      json: { type: "string" },
    },
  });
  const every = Number(values.every);
  const pairs = Number(values.pairs);
  const steps = Number(values.steps);
  if (!Number.isInteger(every) || every < 2 || !(pairs >= 1) || !(steps >= 1)) {
    throw new Error("--every must be an integer ≥ 2, --pairs ≥ 1, --steps ≥ 1");
  }
  const controls = (values.control ?? []).map((spec) => {
    const [name, file] = spec.split("=");
    if (!name || !file) throw new Error(`--control ${spec}: write NAME=FILE.`);
    return { name, file };
  });
  await ready();
  const probe = await loadModelFile(values.model!);
  const { shape, range } = probe.info.volume;
  probe.unet.dispose();
  const pair = await loadTemplatePair(
    "../shared/data/MNI152_2009_template.nii.gz",
    "../shared/data/mni152_pveseg.nii.gz",
    shape,
    range,
  );
  const rows = new Map<string, SrScores[]>();
  const add = (name: string, s: SrScores) => rows.set(name, [...(rows.get(name) ?? []), s]);
  for (let p = 0; p < pairs; p++) {
    // The same held-out pairs as scripts/control_study.ts (training draws pairSeed(seed, step), seed 0).
    const moved = augment(pair.image, pairSeed(1000, p), { range }, pair.labels);
    const real = await moved.image.toArray();
    for (const method of ["linear", "cubic"] as const) {
      add(
        method === "linear" ? "linear along z (trilinear)" : "cubic along z (Keys)",
        await srScores(interpolateAxial(real, shape, every, method), real, shape, every, range),
      );
    }
    const [condition] = conditionsOf(["slices"], moved.image, moved.labels!, { sliceEvery: every });
    const data = await condition.toArray();
    for (const c of [condition, moved.image, moved.labels!]) c.dispose();
    for (const c of controls) {
      const model = await controlledGenerator(await loadModelFile(values.model!), {
        file: c.file,
        conditions: [{ data, shape, source: `pair ${p}` }],
      });
      try {
        const out = await generate(model, { sampler: "ddim", steps, seed: 100 + p });
        add(c.name, await srScores(out.volumes[0], real, shape, every, range));
      } finally {
        model.dispose();
      }
    }
    console.error(`pair ${p + 1}/${pairs} done`);
  }
  pair.image.dispose();
  pair.labels.dispose();
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const summary = [...rows].map(([name, r]) => ({
    name,
    n: r.length,
    mae: mean(r.map((s) => s.mae)),
    maeMissing: mean(r.map((s) => s.maeMissing)),
    psnr: mean(r.map((s) => s.psnr)),
    ssim: mean(r.map((s) => s.ssim)),
  }));
  console.log(
    [
      `| every ${every}th axial slice kept | n | MAE ↓ | MAE, missing slices ↓ | PSNR (dB) ↑ | SSIM ↑ |`,
      "| --- | ---: | ---: | ---: | ---: | ---: |",
      ...summary.map((s) =>
        `| ${s.name} | ${s.n} | ${s.mae.toFixed(4)} | ${s.maeMissing.toFixed(4)} | ${s.psnr.toFixed(2)} | ${
          s.ssim.toFixed(4)
        } |`
      ),
    ].join("\n"),
  );
  if (values.json) {
    const json = {
      model: values.model,
      every,
      pairs,
      steps,
      controls,
      summary,
      rows: Object.fromEntries(rows),
    };
    await atomicWrite(values.json, new TextEncoder().encode(JSON.stringify(json, null, 2) + "\n"));
  }
}

if (import.meta.main) await main();
