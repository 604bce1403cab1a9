/**
 * MSE, MAE and PSNR per batch item, as MONAI's `MSEMetric`, `MAEMetric` and `PSNRMetric` compute them
 * (`compute_mean_error_metrics`: the mean over every non-batch axis; PSNR = 20·log10(maxVal) − 10·log10(MSE),
 * +Infinity for identical inputs). Each returns a `[N]` tensor; not differentiable (for a training loss use
 * the engine's `mse`).
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { scope } from "../engine/memory.ts";
import { map } from "../engine/ops/map.ts";
import { mean } from "../engine/ops/reduce.ts";
import "../engine/ops/index.ts";
import { formatShape } from "../engine/shape.ts";
import { Tensor } from "../engine/tensor.ts";

function checkPair(op: string, a: Tensor, b: Tensor): void {
  for (const [name, t] of [["a", a], ["b", b]] as const) {
    if (!(t instanceof Tensor)) throw new Error(`${op}: ${name} must be a Tensor.`);
    t.storage(op);
  }
  if (a.rank !== b.rank || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new Error(
      `${op}: a ${formatShape(a.shape)} and b ${formatShape(b.shape)} must have the same shape.`,
    );
  }
  if (a.rank < 2) {
    const shown = formatShape(a.shape);
    throw new Error(
      `${op}: inputs ${shown} need a batch axis and at least one more ([N, ...]), as in MONAI.`,
    );
  }
}

/** Mean over all non-batch axes of `expr(a, b)`. */
function perItemMean(name: string, expr: string, a: Tensor, b: Tensor): Tensor {
  const axes = [...Array(a.rank - 1).keys()].map((i) => i + 1);
  return noGrad(() =>
    scope(() => {
      const e = map(name, expr, [a, b]);
      return mean(e, axes);
    })
  );
}

/** Mean squared error per batch item: `[N]` from a and b `[N, ...]` (MONAI `MSEMetric`). */
export function mse(a: Tensor, b: Tensor): Tensor {
  checkPair("mse", a, b);
  return perItemMean("metric_sq_err", "(a - b) * (a - b)", a, b);
}

/** Mean absolute error per batch item: `[N]` from a and b `[N, ...]` (MONAI `MAEMetric`). */
export function mae(a: Tensor, b: Tensor): Tensor {
  checkPair("mae", a, b);
  return perItemMean("metric_abs_err", "abs(a - b)", a, b);
}

/**
 * Peak signal-to-noise ratio in dB per batch item: 20·log10(maxVal) − 10·log10(MSE), `[N]` from a and b
 * `[N, ...]` (MONAI `PSNRMetric`; `maxVal` is the data range, e.g. 1 or 255). Identical items give +Infinity.
 */
export function psnr(a: Tensor, b: Tensor, maxVal: number): Tensor {
  checkPair("psnr", a, b);
  if (typeof maxVal !== "number" || !Number.isFinite(maxVal) || maxVal <= 0) {
    throw new Error(
      `psnr: maxVal ${JSON.stringify(maxVal)} must be a positive number (the data range, e.g. 1).`,
    );
  }
  const m = mse(a, b);
  const out = noGrad(() =>
    // WGSL leaves log(0) undefined: identical inputs (MSE 0) give +inf explicitly, as PyTorch does.
    map(
      "metric_psnr",
      "select(s0 - 4.3429448190325176 * log(a), f32_inf(), a <= 0.0)",
      [m],
      [20 * Math.log10(maxVal)],
    )
  );
  m.dispose();
  return out;
}
