import * as R from "../../engine/reference/mod.ts";
import { warp3d as refWarp } from "../../engine/reference/warp.ts";
import { warp3d } from "../../engine/ops/warp.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, fromRef, gpuTest, toRef } from "../helpers/gpu.ts";
import { throws } from "node:assert";

const rot = (deg: number) => {
  const a = (deg * Math.PI) / 180;
  return [[Math.cos(a), -Math.sin(a), 0, 2.5], [Math.sin(a), Math.cos(a), 0, -1.2], [0.05, 0, 0.9, 0.73]];
};

gpuTest(
  "warp3d matches the reference: affine, displacement field, linear/nearest, fill/border, resize",
  async () => {
    const x = R.roundToF32(R.randomRef([2, 5, 6, 7], 1));
    const field = R.roundToF32(R.randomRef([3, 3, 2, 4], 2, -1.5, 1.5));
    const tx = fromRef(x);
    const tf = fromRef(field);
    const cases = [
      { name: "identity" },
      { name: "rotation linear fill", matrix: rot(17), fill: -1 },
      {
        name: "rotation nearest border",
        matrix: rot(-23),
        mode: "nearest" as const,
        padding: "border" as const,
      },
      { name: "elastic linear", matrix: rot(5), field: true },
      { name: "elastic nearest", field: true, mode: "nearest" as const },
      {
        name: "resize to 4×9×3",
        size: [4, 9, 3] as [number, number, number],
        matrix: [[7 / 3, 0, 0, 0], [0, 6 / 9, 0, 0], [0, 0, 5 / 4, 0]],
        padding: "border" as const,
      },
    ];
    for (const c of cases) {
      const y = warp3d(tx, { ...c, field: c.field ? tf : undefined });
      const e = refWarp(x, { ...c, field: c.field ? field : undefined });
      // Trilinear weights in f32 vs f64: ~1e-6 relative on O(1) values. Nearest picks can flip only when a
      // coordinate lands within f32 rounding of a voxel boundary, which these random matrices avoid.
      assertClose(await toRef(y), e, { rtol: 1e-5, atol: 2e-6, name: c.name });
      y.dispose();
    }
    disposeAll(tx, tf);
  },
);

gpuTest("warp3d of a batch warps every sample alike; bad arguments are refused", async () => {
  const x = R.roundToF32(R.randomRef([2, 1, 3, 4, 5], 3));
  const t = fromRef(x);
  const y = warp3d(t, { matrix: rot(30), mode: "nearest" });
  assertClose(await toRef(y), refWarp(x, { matrix: rot(30), mode: "nearest" }), { name: "batch" });
  throws(() => warp3d(t, { matrix: [[1, 0, 0]] }), /matrix must be 3 rows of 4 finite numbers/);
  throws(() => warp3d(t, { size: [0, 1, 1] }), /size \[0,1,1\] must be three positive integers/);
  throws(() => warp3d(t, { field: t }), /field \[2, 1, 3, 4, 5\] must be \[3, gz, gy, gx\]/);
  disposeAll(t, y);
});
