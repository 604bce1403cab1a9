/**
 * `eval`: compare a set of generated volumes with a set of real ones and report the metrics the papers
 * use, as a table and (with `--json`) a JSON file.
 *
 *     deno run -A cli/eval.ts --real data/real/ --fake out/samples/ [--metrics ms-ssim,mmd,fid]
 *                             [--features resnet_50.safetensors] [--json report.json]
 *
 * Run with `--help` for every option. Volumes are NIfTI files (`.nii`, `.nii.gz`); a directory stands for
 * every NIfTI file in it, in name order. Paired metrics pair the i-th real with the i-th generated file.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ready } from "../engine/device.ts";
import { tensor } from "../engine/ops/create.ts";
import type { Tensor } from "../engine/tensor.ts";
import { readNifti } from "../io/nifti.ts";
import { atomicWrite } from "../io/atomic.ts";
import { Med3dResNet } from "../metrics/features.ts";
import { fid } from "../metrics/fid.ts";
import { medianDistance, mmd } from "../metrics/mmd.ts";
import { mae, mse, psnr } from "../metrics/regression.ts";
import { assd, dice, hausdorff95 } from "../metrics/segmentation.ts";
import {
  checkMsSsimSize,
  msSsim,
  type MsSsimOptions,
  nearestRealMsSsim,
  pairwiseMsSsim,
  ssim,
} from "../metrics/ssim.ts";

/** Every metric `eval` knows, with what it reports. */
export const EVAL_METRICS: Record<string, string> = {
  "ms-ssim": "pairwise MS-SSIM within each set (diversity; lower = more diverse)",
  "ms-ssim-paired": "MS-SSIM of the i-th real vs the i-th generated volume (TenVOO's MS)",
  "ms-ssim-nearest": "each generated volume's best MS-SSIM to any real one (memorisation check)",
  "ssim": "SSIM of paired volumes",
  "psnr": "PSNR of paired volumes (max value = --data-range)",
  "mae": "mean absolute error of paired volumes",
  "mse": "mean squared error of paired volumes",
  "mmd": "MONAI's unbiased linear-kernel MMD on the voxels",
  "mmd-features": "TenVOO's Gaussian-kernel MMD on features (α = median distance)",
  "fid": "Fréchet distance of features (MedicalNet ResNet)",
  "dice": "Dice of paired label volumes",
  "hd95": "95th-percentile Hausdorff distance of paired label volumes (mm)",
  "assd": "average symmetric surface distance of paired label volumes (mm)",
};

const DEFAULT_METRICS = ["ms-ssim", "mmd", "fid", "mmd-features"];

const HELP = `voxgen eval: metrics of generated volumes against real ones

usage: eval --real <file|dir>... --fake <file|dir>... [options]

  --real PATH          real volumes: NIfTI files or directories of them (repeatable)
  --fake PATH          generated volumes, likewise (repeatable)
  --metrics LIST       comma-separated, default ${DEFAULT_METRICS.join(",")}
  --json FILE          also write the report as JSON
  --features FILE      MedicalNet ResNet weights (.safetensors) for fid and mmd-features
  --data-range L       value range of the images (default 1): SSIM constants, PSNR peak
  --kernel-size K      SSIM window size (default 11)
  --kernel-sigma S     Gaussian window sigma (default 1.5)
  --kernel-type T      gaussian | uniform (default gaussian)
  --weights W,...      MS-SSIM scale weights (default MONAI's 5)
  --max-pairs N        evaluate at most N random pairs per set for ms-ssim
  --label N            foreground label for dice/hd95/assd (default: any non-zero voxel)
  --help               this text

metrics:
${Object.entries(EVAL_METRICS).map(([k, v]) => `  ${k.padEnd(17)}${v}`).join("\n")}
`;

/** One loaded volume. */
interface Volume {
  path: string;
  /** Row-major values, x fastest. */
  data: Float32Array;
  /** [nz, ny, nx] for 3-D, [ny, nx] for 2-D (nz = 1). */
  shape: number[];
  /** Voxel size in the order of `shape` (mm). */
  spacing: number[];
}

/** The outcome of one metric. */
export interface MetricResult {
  /** "ok", "skipped" (with `reason`) or "error" (with `reason`). */
  status: "ok" | "skipped" | "error";
  /** Why it was skipped or failed. */
  reason?: string;
  /** Numbers and details (present when ok). */
  [key: string]: unknown;
}

/** What `eval` computed; also the JSON it writes. */
export interface EvalReport {
  /** The real set. */
  real: { count: number; files: string[]; shape: number[] | null };
  /** The generated set. */
  fake: { count: number; files: string[]; shape: number[] | null };
  /** The feature extractor used, or null. */
  features: string | null;
  /** Results by metric name. */
  metrics: Record<string, MetricResult>;
}

async function expand(paths: string[], what: string): Promise<string[]> {
  const out: string[] = [];
  for (const p of paths) {
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(p);
    } catch {
      throw new Error(`eval: ${what} path "${p}" does not exist.`);
    }
    if (info.isDirectory) {
      const names: string[] = [];
      for await (const e of Deno.readDir(p)) {
        if (e.isFile && (e.name.endsWith(".nii") || e.name.endsWith(".nii.gz"))) names.push(e.name);
      }
      names.sort();
      if (names.length === 0) throw new Error(`eval: ${what} directory "${p}" has no .nii / .nii.gz files.`);
      out.push(...names.map((n) => `${p.replace(/\/$/, "")}/${n}`));
    } else {
      out.push(p);
    }
  }
  return out;
}

async function load(path: string): Promise<Volume> {
  const v = await readNifti(path);
  const [nx, ny = 1, nz = 1, nt = 1] = v.shape;
  if (nt !== 1 || v.shape.length > 4) {
    throw new Error(
      `eval: ${path} has shape [${v.shape.join(", ")}]; eval takes 2-D or 3-D volumes (one frame).`,
    );
  }
  const [sx = 1, sy = 1, sz = 1] = v.spacing;
  return nz === 1
    ? { path, data: v.data, shape: [ny, nx], spacing: [sy, sx] }
    : { path, data: v.data, shape: [nz, ny, nx], spacing: [sz, sy, sx] };
}

function sameShape(vols: Volume[], what: string): number[] {
  const shape = vols[0].shape;
  for (const v of vols) {
    if (v.shape.length !== shape.length || v.shape.some((d, i) => d !== shape[i])) {
      throw new Error(
        `eval: ${what} volumes differ in shape: ${vols[0].path} is [${shape.join(", ")}], ${v.path} is ` +
          `[${v.shape.join(", ")}]. Resample them to one grid first.`,
      );
    }
  }
  return shape;
}

function number(flag: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`eval: --${flag} ${JSON.stringify(v)} is not a number.`);
  return n;
}

function stats(values: number[]): { mean: number; std: number; count: number } {
  const mean = values.reduce((s, v) => s + v, 0) / values.length;
  const std = Math.sqrt(values.reduce((s, v) => s + (v - mean) ** 2, 0) / values.length);
  return { mean, std, count: values.length };
}

function format(v: unknown): string {
  if (typeof v !== "number") return String(v);
  if (!Number.isFinite(v)) return String(v);
  if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5)) return v.toExponential(4);
  return v.toFixed(4);
}

/** JSON cannot hold NaN or infinities: write them as strings. */
function jsonSafe(_key: string, v: unknown): unknown {
  return typeof v === "number" && !Number.isFinite(v) ? String(v) : v;
}

/**
 * Runs `eval` with command-line arguments; prints the table through `log` and returns the report. Throws
 * on bad arguments or unreadable input; a metric that cannot be computed is reported as an error or as
 * skipped, and the others still run.
 */
export async function runEval(
  args: string[],
  log: (line: string) => void = console.log,
): Promise<EvalReport> {
  const { values } = parseArgs({
    args,
    options: {
      real: { type: "string", multiple: true },
      fake: { type: "string", multiple: true },
      metrics: { type: "string" },
      json: { type: "string" },
      features: { type: "string" },
      "data-range": { type: "string" },
      "kernel-size": { type: "string" },
      "kernel-sigma": { type: "string" },
      "kernel-type": { type: "string" },
      weights: { type: "string" },
      "max-pairs": { type: "string" },
      label: { type: "string" },
      help: { type: "boolean" },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    log(HELP);
    return {
      real: { count: 0, files: [], shape: null },
      fake: { count: 0, files: [], shape: null },
      features: null,
      metrics: {},
    };
  }
  if (!values.real?.length || !values.fake?.length) {
    throw new Error("eval: give both --real and --fake (files or directories); see --help.");
  }
  const metrics = (values.metrics ?? DEFAULT_METRICS.join(",")).split(",").map((m) => m.trim()).filter(
    Boolean,
  );
  const unknown = metrics.filter((m) => !(m in EVAL_METRICS));
  if (unknown.length > 0) {
    throw new Error(
      `eval: unknown metric(s) ${unknown.join(", ")}; known: ${Object.keys(EVAL_METRICS).join(", ")}.`,
    );
  }
  const kernelType = values["kernel-type"];
  if (kernelType !== undefined && kernelType !== "gaussian" && kernelType !== "uniform") {
    throw new Error(`eval: --kernel-type must be gaussian or uniform, got ${JSON.stringify(kernelType)}.`);
  }
  const weights = values.weights?.split(",").map((w) => number("weights", w)!);
  const dataRange = number("data-range", values["data-range"]) ?? 1;
  const ssimOpts: MsSsimOptions = {
    dataRange,
    kernelType,
    kernelSize: number("kernel-size", values["kernel-size"]),
    kernelSigma: number("kernel-sigma", values["kernel-sigma"]),
    weights,
  };
  const maxPairs = number("max-pairs", values["max-pairs"]);
  const label = number("label", values.label);

  const realFiles = await expand(values.real, "--real");
  const fakeFiles = await expand(values.fake, "--fake");
  const reals = await Promise.all(realFiles.map(load));
  const fakes = await Promise.all(fakeFiles.map(load));
  const realShape = sameShape(reals, "real");
  const fakeShape = sameShape(fakes, "generated");
  const report: EvalReport = {
    real: { count: reals.length, files: realFiles, shape: realShape },
    fake: { count: fakes.length, files: fakeFiles, shape: fakeShape },
    features: null,
    metrics: {},
  };
  const needsGpu = metrics.some((m) => !["mmd", "dice", "hd95", "assd"].includes(m));
  if (needsGpu) await ready();

  const bothShape = (): number[] => sameShape([...reals, ...fakes], "real and generated");
  const paired = (): void => {
    bothShape();
    if (reals.length !== fakes.length) {
      throw new Error(
        `paired metrics need as many real as generated volumes (${reals.length} vs ${fakes.length}); ` +
          "they pair files in name order.",
      );
    }
  };
  // Volumes as GPU tensors [1, ...shape] (one channel), created on first use and freed at the end.
  const gpuCache = new Map<Volume, Tensor>();
  const onGpu = (v: Volume): Tensor => {
    let t = gpuCache.get(v);
    if (!t) {
      t = tensor(v.data, [1, ...v.shape]);
      gpuCache.set(v, t);
    }
    return t;
  };
  const batch = (v: Volume): Tensor => tensor(v.data, [1, 1, ...v.shape]);

  let extractor: Med3dResNet | null = null;
  const features = new Map<Volume, Float32Array>();
  const featureRows = async (vols: Volume[]): Promise<Float32Array[]> => {
    const rows: Float32Array[] = [];
    for (const v of vols) {
      let f = features.get(v);
      if (!f) {
        if (v.shape.length !== 3) throw new Error(`MedicalNet features need 3-D volumes; ${v.path} is 2-D.`);
        const x = batch(v);
        const t = extractor!.extract(x);
        f = await t.toArray();
        x.dispose();
        t.dispose();
        features.set(v, f);
      }
      rows.push(f);
    }
    return rows;
  };
  const wantsFeatures = metrics.includes("fid") || metrics.includes("mmd-features");
  if (wantsFeatures && values.features) {
    extractor = await Med3dResNet.load(values.features);
    report.features = extractor.name;
  }
  const noFeatures = "features: none supplied (--features FILE.safetensors with MedicalNet ResNet weights, " +
    "e.g. resnet_50 converted to safetensors)";

  const perPair = async (f: (a: Tensor, b: Tensor) => Tensor): Promise<number[]> => {
    paired();
    const out: number[] = [];
    for (let i = 0; i < reals.length; i++) {
      const a = batch(reals[i]);
      const b = batch(fakes[i]);
      const t = f(a, b);
      out.push((await t.toArray())[0]);
      a.dispose();
      b.dispose();
      t.dispose();
    }
    return out;
  };
  const perLabelPair = (f: (i: number) => number): number[] => {
    paired();
    return reals.map((_, i) => f(i));
  };
  const labelOpts = (i: number) => ({ spacing: reals[i].spacing, label });

  const compute: Record<string, () => Promise<Omit<MetricResult, "status">>> = {
    "ms-ssim": async () => {
      // Within each set; a set of one volume has no pairs and reports null.
      checkMsSsimSize([1, 1, ...fakeShape], ssimOpts);
      checkMsSsimSize([1, 1, ...realShape], ssimOpts);
      if (fakes.length < 2 && reals.length < 2) throw new Error("ms-ssim needs at least 2 volumes in a set.");
      const within = async (vols: Volume[]) => {
        if (vols.length < 2) return null;
        const r = await pairwiseMsSsim(vols.map(onGpu), { ...ssimOpts, maxPairs });
        return { mean: r.mean, std: r.std, pairs: r.pairs.length };
      };
      return { fake: await within(fakes), real: await within(reals) };
    },
    "ms-ssim-paired": async () => {
      checkMsSsimSize([1, 1, ...bothShape()], ssimOpts);
      return stats(await perPair((a, b) => msSsim(a, b, ssimOpts)));
    },
    "ms-ssim-nearest": async () => {
      checkMsSsimSize([1, 1, ...bothShape()], ssimOpts);
      const r = await nearestRealMsSsim(fakes.map(onGpu), reals.map(onGpu), ssimOpts);
      return {
        mean: r.mean,
        nearest: r.nearest.map((n, i) => ({ fake: fakeFiles[i], real: realFiles[n.index], value: n.value })),
      };
    },
    "ssim": async () => stats(await perPair((a, b) => ssim(a, b, ssimOpts))),
    "psnr": async () => stats(await perPair((a, b) => psnr(a, b, dataRange))),
    "mae": async () => stats(await perPair(mae)),
    "mse": async () => stats(await perPair(mse)),
    "mmd": () => {
      bothShape();
      return Promise.resolve({
        value: mmd(reals.map((v) => v.data), fakes.map((v) => v.data)),
        kernel: "linear",
      });
    },
    "mmd-features": async () => {
      const r = await featureRows(reals);
      const f = await featureRows(fakes);
      return { value: mmd(r, f, { kernel: "gaussian" }), alpha: medianDistance(r, f), kernel: "gaussian" };
    },
    "fid": async () => ({ value: fid(await featureRows(reals), await featureRows(fakes)) }),
    "dice": () => Promise.resolve(stats(perLabelPair((i) => dice(fakes[i], reals[i], { label })))),
    "hd95": () => Promise.resolve(stats(perLabelPair((i) => hausdorff95(fakes[i], reals[i], labelOpts(i))))),
    "assd": () => Promise.resolve(stats(perLabelPair((i) => assd(fakes[i], reals[i], labelOpts(i))))),
  };

  try {
    for (const m of metrics) {
      if ((m === "fid" || m === "mmd-features") && !extractor) {
        report.metrics[m] = { status: "skipped", reason: noFeatures };
        continue;
      }
      try {
        report.metrics[m] = { status: "ok", ...(await compute[m]()) };
      } catch (error) {
        report.metrics[m] = { status: "error", reason: (error as Error).message };
      }
    }
  } finally {
    for (const t of gpuCache.values()) t.dispose();
    extractor?.dispose();
  }

  printTable(report, log);
  if (values.json) {
    await atomicWrite(values.json, new TextEncoder().encode(JSON.stringify(report, jsonSafe, 2) + "\n"));
    log(`wrote ${values.json}`);
  }
  return report;
}

function printTable(report: EvalReport, log: (line: string) => void): void {
  const rows: string[][] = [];
  for (const [name, r] of Object.entries(report.metrics)) {
    if (r.status !== "ok") {
      rows.push([name, r.status, r.reason ?? ""]);
      continue;
    }
    if (name === "ms-ssim") {
      for (const set of ["fake", "real"] as const) {
        const s = r[set] as { mean: number; std: number; pairs: number } | null;
        if (s) rows.push([`ms-ssim (${set})`, format(s.mean), `± ${format(s.std)} over ${s.pairs} pairs`]);
      }
    } else if ("value" in r) {
      const note = name === "mmd-features" ? `α = ${format(r.alpha)}; ` : "";
      rows.push([name, format(r.value), note + EVAL_METRICS[name]]);
    } else {
      const detail = "std" in r ? `± ${format(r.std)} over ${r.count} pairs` : EVAL_METRICS[name];
      rows.push([name, format(r.mean), detail]);
    }
  }
  const w0 = Math.max(6, ...rows.map((r) => r[0].length));
  const w1 = Math.max(5, ...rows.map((r) => r[1].length));
  log(
    `real: ${report.real.count} volumes [${report.real.shape?.join(", ")}]; ` +
      `generated: ${report.fake.count} volumes [${report.fake.shape?.join(", ")}]`,
  );
  log(`features: ${report.features ?? "none"}`);
  log(`${"metric".padEnd(w0)}  ${"value".padEnd(w1)}  detail`);
  for (const r of rows) log(`${r[0].padEnd(w0)}  ${r[1].padEnd(w1)}  ${r[2]}`);
}

if (import.meta.main) {
  try {
    const report = await runEval(Deno.args);
    const failed = Object.values(report.metrics).some((m) => m.status === "error");
    Deno.exit(failed ? 1 : 0);
  } catch (error) {
    console.error((error as Error).message);
    Deno.exit(2);
  }
}
