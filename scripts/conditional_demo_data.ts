/**
 * Data of the conditional demo model (issue 13): a manifest with four concepts made from the real volumes
 * in `../shared/data/`:
 *
 * - `<t1>`: the ICBM 2009 T1 template (with skull);
 * - `<t1avg>`: the older avg152 T1 template;
 * - `<t2syn>`: T2-like volumes synthesised from the MNI tissue map `mni152_pveseg` (CSF bright, grey
 *   matter mid, white matter dark);
 * - `<pdsyn>`: proton-density-like volumes from the same map (CSF ≳ grey > white, low contrast).
 *
 * Each synthetic concept gets `--variants` volumes with their own noise and smooth bias field; training
 * adds the deformation and intensity augmentation of `train`. The two real templates are listed as often
 * as there are variants, so that every concept is drawn equally often.
 *
 * Usage: deno run -A scripts/conditional_demo_data.ts [--out runs/cond-demo] [--variants 4] [--seed 0]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { atomicWrite } from "../io/atomic.ts";
import { readNifti, writeNifti } from "../io/nifti.ts";
import { numberOption } from "../io/options.ts";
import { seededRandom } from "../nn/init.ts";

const DATA = "../shared/data";

/** Tissue intensities (background, CSF, grey, white) of each synthetic contrast, before noise and bias. */
const CONTRASTS: Record<string, [number, number, number, number]> = {
  "<t2syn>": [0, 1.0, 0.6, 0.35],
  "<pdsyn>": [0, 0.9, 0.8, 0.65],
};

/** A smooth multiplicative bias field: 1 + a sum of three random low-frequency cosines (±15 %). */
function biasField(
  shape: readonly number[],
  random: () => number,
): (x: number, y: number, z: number) => number {
  const terms = Array.from({ length: 3 }, () => ({
    amplitude: 0.05 * (2 * random() - 1),
    k: [random(), random(), random()].map((v) => (Math.PI * (0.5 + v)) / 1),
    phase: 2 * Math.PI * random(),
  }));
  const [nx, ny, nz] = shape;
  return (x, y, z) =>
    1 +
    terms.reduce(
      (s, t) => s + t.amplitude * Math.cos(t.k[0] * x / nx + t.k[1] * y / ny + t.k[2] * z / nz + t.phase),
      0,
    );
}

function gaussian(random: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
}

/** Writes the synthetic volumes and the manifest; returns the manifest's path. */
export async function makeConditionalDemoData(out: string, variants: number, seed: number): Promise<string> {
  await Deno.mkdir(`${out}/data`, { recursive: true });
  const labels = await readNifti(`${DATA}/mni152_pveseg.nii.gz`);
  const [nx, ny, nz] = labels.shape;
  const items: Array<{ file: string; concept: string }> = [];
  // Paths in the manifest are relative to its folder; the data folder is relative to the repository root.
  const fromManifest = (path: string) =>
    path.startsWith("/") ? path : `${"../".repeat(out.split("/").length)}${path}`;
  for (const [concept, tissue] of Object.entries(CONTRASTS)) {
    for (let v = 0; v < variants; v++) {
      const random = seededRandom((seed * 7919 + v * 104729 + concept.length * 31 + tissue[2] * 1000) >>> 0);
      const bias = biasField(labels.shape, random);
      const noise = 0.02 + 0.02 * random();
      const data = new Float32Array(nx * ny * nz);
      for (let z = 0; z < nz; z++) {
        for (let y = 0; y < ny; y++) {
          for (let x = 0; x < nx; x++) {
            const i = x + nx * (y + ny * z);
            const label = Math.round(labels.data[i]);
            const base = tissue[Math.min(3, Math.max(0, label))];
            data[i] = Math.max(0, base * bias(x, y, z) + (label > 0 ? noise * gaussian(random) : 0));
          }
        }
      }
      const name = `${concept.slice(1, -1)}_${v}.nii.gz`;
      await writeNifti(`${out}/data/${name}`, { data, shape: [nx, ny, nz], affine: labels.affine }, {
        description: `voxgen synthetic ${concept} variant ${v}`,
      });
      items.push({ file: `data/${name}`, concept });
    }
  }
  for (let v = 0; v < variants; v++) {
    items.push({ file: fromManifest(`${DATA}/MNI152_2009_template.nii.gz`), concept: "<t1>" });
    items.push({ file: fromManifest(`${DATA}/avg152T1_RL_nifti.nii.gz`), concept: "<t1avg>" });
  }
  const manifest = `${out}/manifest.json`;
  await atomicWrite(manifest, new TextEncoder().encode(JSON.stringify({ items }, null, 2) + "\n"));
  return manifest;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      out: { type: "string", default: "runs/cond-demo" },
      variants: { type: "string" },
      seed: { type: "string" },
    },
  });
  const variants = numberOption("variants", values.variants, 4, 1, 64, true);
  const seed = numberOption("seed", values.seed, 0, 0, 2 ** 31, true);
  const path = await makeConditionalDemoData(values.out!.replace(/\/$/, ""), variants, seed);
  console.log(`wrote ${path}`);
}
