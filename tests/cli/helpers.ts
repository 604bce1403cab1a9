/**
 * Helpers of the command tests: tiny training volumes, and capturing what a command prints.
 *
 * @module
 */

import { writeNifti } from "../../io/nifti.ts";
import { seededRandom } from "../../nn/init.ts";
import { makeTinyModel } from "../server/helpers.ts";

export { makeTinyModel };

/** Fine-tuning options of the tests: batch 1, a high learning rate so that a few steps change the outputs. */
export const QUICK: readonly string[] = ["--batch", "1", "--lr", "0.01"];

/** A tiny random base model (see `makeTinyModel`) and two training volumes in a fresh folder. */
export async function setup(): Promise<{ dir: string; base: string; data: string }> {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-cli-" });
  const base = `${dir}/base.safetensors`;
  await makeTinyModel(base);
  await Deno.mkdir(`${dir}/data`);
  await writeTinyVolumes(`${dir}/data`);
  return { dir, base, data: `${dir}/data` };
}

/**
 * Writes `count` small NIfTI volumes (12³, 1.5 mm voxels) into `dir`: a bright ellipsoid of random size on
 * a dark, slightly noisy background, so the foreground fit and the intensity normalisation have something to
 * work on. Returns their paths.
 */
export async function writeTinyVolumes(dir: string, count = 2): Promise<string[]> {
  const n = 12;
  const paths: string[] = [];
  for (let v = 0; v < count; v++) {
    const random = seededRandom(17 + v);
    const radii = [3 + random() * 2, 3 + random() * 2, 3 + random() * 2];
    const data = new Float32Array(n * n * n);
    for (let z = 0; z < n; z++) {
      for (let y = 0; y < n; y++) {
        for (let x = 0; x < n; x++) {
          const c = (n - 1) / 2;
          const r = ((x - c) / radii[0]) ** 2 + ((y - c) / radii[1]) ** 2 + ((z - c) / radii[2]) ** 2;
          data[x + n * (y + n * z)] = (r < 1 ? 100 + 40 * (1 - r) : 0) + 2 * random();
        }
      }
    }
    const path = `${dir}/volume_${v}.nii.gz`;
    await writeNifti(path, { data, shape: [n, n, n], spacing: [1.5, 1.5, 1.5] });
    paths.push(path);
  }
  return paths;
}

/** Runs `fn` with `console.log` and `console.error` captured; returns what each printed. */
export async function capture(fn: () => Promise<void>): Promise<{ stdout: string; stderr: string }> {
  const { log, error } = console;
  let stdout = "";
  let stderr = "";
  console.log = (...parts: unknown[]) => void (stdout += `${parts.join(" ")}\n`);
  console.error = (...parts: unknown[]) => void (stderr += `${parts.join(" ")}\n`);
  try {
    await fn();
  } finally {
    console.log = log;
    console.error = error;
  }
  return { stdout, stderr };
}
