import assert from "node:assert/strict";
import {
  avgPool2d,
  avgPool3d,
  interpolate,
  interpolateOutputShape,
} from "../../engine/reference/resample.ts";
import { randomRef } from "../../engine/reference/random.ts";
import { arange, at, ref, refFull } from "../../engine/reference/tensor.ts";
import { assertClose, maxAbsDiff } from "../helpers/check.ts";

/** A [1, 1, 1, n] row for 1-D checks through the 2-D modes. */
const row = (v: number[]) => ref(v, [1, 1, 1, v.length]);

Deno.test("nearest x2 duplicates every voxel (2-D and 3-D)", () => {
  const x = randomRef([2, 3, 2, 3, 4], 1);
  const y = interpolate(x, { scaleFactor: 2, mode: "nearest" });
  assert.deepEqual(y.shape, [2, 3, 4, 6, 8]);
  for (let n = 0; n < 2; n++) {
    for (let c = 0; c < 3; c++) {
      for (let d = 0; d < 4; d++) {
        for (let h = 0; h < 6; h++) {
          for (let w = 0; w < 8; w++) {
            assert.equal(at(y, [n, c, d, h, w]), at(x, [n, c, d >> 1, h >> 1, w >> 1]));
          }
        }
      }
    }
  }
  const x2 = ref([1, 2, 3, 4], [1, 1, 2, 2]);
  assert.deepEqual([...interpolate(x2, { size: [4, 4], mode: "nearest" }).data], [
    1,
    1,
    2,
    2,
    1,
    1,
    2,
    2,
    3,
    3,
    4,
    4,
    3,
    3,
    4,
    4,
  ]);
});

Deno.test("legacy nearest: src = floor(dst · ratio) in float32 (PyTorch values)", () => {
  // torch: F.interpolate(torch.arange(3.).view(1,1,3), size=5) -> [0, 0, 1, 1, 2]
  assert.deepEqual([...interpolate(ref([0, 1, 2], [1, 1, 3]), { size: 5, mode: "nearest" }).data], [
    0,
    0,
    1,
    1,
    2,
  ]);
  // downsampling 4 -> 3: ratio 4/3 -> [0, 1, 2]
  assert.deepEqual([...interpolate(row([0, 1, 2, 3]), { size: [1, 3], mode: "nearest" }).data], [0, 1, 2]);
  // scale_factor 2.5 on 5 -> 12 outputs, ratio 1/2.5 = 0.4 (not 5/12)
  const s = interpolate(row([0, 1, 2, 3, 4]), { scaleFactor: [1, 2.5], mode: "nearest" });
  assert.deepEqual([...s.data], [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4]);
  // The float32 arithmetic decides real cases. in = 6 -> out = 74: the ratio 6/74 rounds down in float32,
  // so dst = 37 maps to 2 (float64 would give exactly 3).
  const r = interpolate(row([0, 1, 2, 3, 4, 5]), { size: [1, 74], mode: "nearest" });
  assert.equal(r.data[37], 2);
  const ratio = Math.fround(6 / 74);
  assert.deepEqual(
    [...r.data],
    Array.from({ length: 74 }, (_, d) => Math.min(Math.floor(Math.fround(d * ratio)), 5)),
  );
  // scale_factor 2.2 on 16 -> 35: 1/2.2 rounds up in float32, so dst = 33 maps to 15 (float64: 14)
  assert.equal(
    interpolate(row(Array.from({ length: 16 }, (_, i) => i)), { scaleFactor: [1, 2.2], mode: "nearest" })
      .data[33],
    15,
  );
});

Deno.test("linear modes reproduce PyTorch's align_corners=False values", () => {
  // torch: F.interpolate(torch.arange(4.).view(1,1,4), scale_factor=2, mode='linear')
  //   -> [0.00, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.00]
  const y = interpolate(row([0, 1, 2, 3]), { scaleFactor: [1, 2], mode: "bilinear" });
  assert.deepEqual([...y.data], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3]);
  // bilinear 2x2 -> 4x4 of [[1, 2], [3, 4]]; rows and columns follow the 1-D weights (0, .25, .75, 1)
  const b = interpolate(ref([1, 2, 3, 4], [1, 1, 2, 2]), { size: [4, 4], mode: "bilinear" });
  const w1 = [0, 0.25, 0.75, 1];
  const expected: number[] = [];
  for (const r of w1) for (const c of w1) expected.push(1 + c + 2 * r);
  assertClose(b, ref(expected, [1, 1, 4, 4]), { rtol: 0, atol: 1e-15 });
  // downsampling 4 -> 2: src = 2·(dst + .5) − .5 = .5, 2.5 → averages of neighbours
  assert.deepEqual([...interpolate(row([0, 1, 2, 3]), { size: [1, 2], mode: "bilinear" }).data], [0.5, 2.5]);
});

Deno.test("scaleFactor uses ratio 1/scaleFactor unless recomputeScaleFactor", () => {
  const x = row([0, 1, 4, 9, 16]);
  const bySf = interpolate(x, { scaleFactor: [1, 2.5], mode: "bilinear", precision: "float64" });
  const bySize = interpolate(x, { size: [1, 12], mode: "bilinear", precision: "float64" });
  const recomputed = interpolate(x, {
    scaleFactor: [1, 2.5],
    mode: "bilinear",
    recomputeScaleFactor: true,
    precision: "float64",
  });
  assert.deepEqual(bySf.shape, [1, 1, 1, 12]);
  assert.deepEqual(recomputed.data, bySize.data);
  assert.ok(maxAbsDiff(bySf, bySize) > 1e-3);
  const hand = Array.from({ length: 12 }, (_, d) => {
    const src = Math.max(0.4 * (d + 0.5) - 0.5, 0);
    const i0 = Math.min(Math.floor(src), 4);
    const i1 = Math.min(i0 + 1, 4);
    const l = src - i0;
    return (1 - l) * x.data[i0] + l * x.data[i1];
  });
  assertClose(bySf.data, hand, { rtol: 1e-15, atol: 1e-15 });
  // out == in copies exactly even when the given scale factor is not 1 (floor(4 · 1.1) = 4)
  const z = randomRef([1, 2, 4, 4], 3);
  assert.deepEqual(interpolate(z, { scaleFactor: 1.1, mode: "bilinear" }).data, z.data);
  assert.deepEqual(interpolateOutputShape([1, 2, 4, 4], { scaleFactor: [1.1, 2.6], mode: "bilinear" }), [
    1,
    2,
    4,
    10,
  ]);
});

Deno.test("trilinear resize of a linear ramp reproduces the ramp in the interior", () => {
  const inDims = [3, 4, 5];
  const f = (d: number, h: number, w: number) => 2 * d - 3 * h + 0.5 * w + 1;
  const x = ref(
    Array.from({ length: 60 }, (_, i) => f(Math.floor(i / 20), Math.floor(i / 5) % 4, i % 5)),
    [1, 1, ...inDims],
  );
  for (const size of [[6, 8, 10], [7, 5, 9], [2, 3, 4]]) {
    for (const precision of ["float64", "float32"] as const) {
      const y = interpolate(x, { size, mode: "trilinear", precision });
      assert.deepEqual(y.shape, [1, 1, ...size]);
      let checked = 0;
      for (let d = 0; d < size[0]; d++) {
        for (let h = 0; h < size[1]; h++) {
          for (let w = 0; w < size[2]; w++) {
            const src = [d, h, w].map((o, a) => (inDims[a] / size[a]) * (o + 0.5) - 0.5);
            if (src.some((s, a) => s < 0 || s > inDims[a] - 1)) continue; // border: clamped, not linear
            checked++;
            const tol = precision === "float64" ? 1e-13 : 1e-5;
            assert.ok(
              Math.abs(at(y, [0, 0, d, h, w]) - f(src[0], src[1], src[2])) < tol,
              `${precision} ${size} at ${[d, h, w]}`,
            );
          }
        }
      }
      assert.ok(checked > 0);
    }
  }
  // a constant stays constant, everywhere
  const c = interpolate(refFull([1, 2, 3, 3, 3], 4.25), { scaleFactor: [1.7, 2, 0.7], mode: "trilinear" });
  assert.ok([...c.data].every((v) => Math.abs(v - 4.25) < 1e-12));
});

Deno.test("float32 coordinate emulation differs from float64 only at the 1e-7 level", () => {
  const x = randomRef([1, 1, 5, 6, 7], 9);
  const a = interpolate(x, { size: [7, 9, 11], mode: "trilinear" });
  const b = interpolate(x, { size: [7, 9, 11], mode: "trilinear", precision: "float64" });
  const d = maxAbsDiff(a, b);
  assert.ok(d > 0 && d < 1e-6, `diff ${d}`);
});

Deno.test("interpolate validates its arguments", () => {
  const x = randomRef([1, 1, 2, 2], 1);
  assert.throws(() => interpolate(x, { mode: "trilinear", size: 4 }), /needs a 5-D input/);
  assert.throws(() => interpolate(x, { mode: "bilinear" }), /exactly one of size and scaleFactor/);
  assert.throws(() => interpolate(x, { mode: "bilinear", size: 4, scaleFactor: 2 }), /exactly one/);
  assert.throws(() => interpolate(x, { mode: "bilinear", size: [4, 4, 4] }), /one entry per spatial axis/);
  assert.throws(() => interpolate(x, { mode: "nearest", scaleFactor: 0.2 }), /must be positive/);
  assert.throws(() => interpolate(x, { mode: "nearest", scaleFactor: -1 }), /positive and finite/);
  assert.throws(
    () => interpolate(x, { mode: "nearest", size: 3, recomputeScaleFactor: true }),
    /only valid with scaleFactor/,
  );
});

Deno.test("avgPool3d / avgPool2d", () => {
  assert.deepEqual([...avgPool3d(arange(8, [1, 1, 2, 2, 2]), 2).data], [3.5]);
  const x = arange(16, [1, 1, 4, 4]);
  assert.deepEqual([...avgPool2d(x, 2).data], [2.5, 4.5, 10.5, 12.5]);
  const s = avgPool2d(x, [2, 3], 1);
  assert.deepEqual(s.shape, [1, 1, 3, 2]);
  assert.deepEqual([...s.data], [3, 4, 7, 8, 11, 12]); // e.g. mean of rows 0-1, cols 0-2 = (0+1+2+4+5+6)/6
  const odd = avgPool3d(randomRef([1, 1, 5, 5, 5], 2), 2); // floor: the last plane is dropped
  assert.deepEqual(odd.shape, [1, 1, 2, 2, 2]);
  // pooling undoes nearest upsampling
  const y = randomRef([2, 3, 3, 2, 4], 3);
  assertClose(avgPool3d(interpolate(y, { scaleFactor: 2, mode: "nearest" }), 2), y, {
    rtol: 1e-15,
    atol: 1e-16,
  });
  assert.deepEqual(avgPool3d(randomRef([1, 2, 4, 6, 8], 4), [2, 3, 4], [1, 3, 2]).shape, [1, 2, 3, 2, 3]);
  assert.throws(() => avgPool3d(randomRef([1, 1, 2, 2, 2], 1), 3), /larger than the input/);
  assert.throws(() => avgPool2d(randomRef([1, 1, 2, 2, 2], 1), 2), /4 dims/);
});
