import * as R from "../../engine/reference/mod.ts";
import * as V from "../../mod.ts";
import { randomRef } from "../../engine/reference/mod.ts";
import { checkOp } from "../helpers/opcheck.ts";
import { gpuTest } from "../helpers/gpu.ts";

gpuTest("reshape (with -1), on contiguous tensors and views", async () => {
  for (const asViews of [false, true]) {
    await checkOp({
      name: `reshape views=${asViews}`,
      gpu: ([x]) => V.reshape(x, [-1, 3]),
      ref: ([x]) => R.reshape(x, [-1, 3]),
      inputs: [randomRef([4, 6], 1)],
      asViews,
    });
  }
});

gpuTest("permute and transpose", async () => {
  await checkOp({
    name: "permute [2,3,4,5] → [3,1,0,2]",
    gpu: ([x]) => V.permute(x, [3, 1, 0, 2]),
    ref: ([x]) => R.permute(x, [3, 1, 0, 2]),
    inputs: [randomRef([2, 3, 4, 5], 2)],
  });
  await checkOp({
    name: "transpose(x, 0, 2)",
    gpu: ([x]) => V.transpose(x, 0, 2),
    ref: ([x]) => R.transpose(x, 0, 2),
    inputs: [randomRef([3, 4, 5], 3)],
    asViews: true,
  });
});

gpuTest("slice with negative indices and steps", async () => {
  await checkOp({
    name: "slice",
    gpu: ([x]) => V.slice(x, [1, -5], [3, 37], [1, 2]),
    ref: ([x]) => R.slice(x, [1, -5], [3, 37], [1, 2]),
    inputs: [randomRef([4, 37], 4)],
  });
  await checkOp({
    name: "slice of a view",
    gpu: ([x]) => V.slice(x, [1], [4]),
    ref: ([x]) => R.slice(x, [1], [4]),
    inputs: [randomRef([5, 3], 5)],
    asViews: true,
  });
});

gpuTest("concat along each axis", async () => {
  for (const axis of [0, 1, -1]) {
    await checkOp({
      name: `concat axis ${axis}`,
      gpu: (xs) => V.concat(xs, axis),
      ref: (xs) => R.concat(xs, axis),
      inputs: axis === 0
        ? [randomRef([2, 3], 6), randomRef([1, 3], 7), randomRef([4, 3], 8)]
        : [randomRef([2, 3], 6), randomRef([2, 1], 7), randomRef([2, 5], 8)],
    });
  }
});

gpuTest("pad with a value", async () => {
  await checkOp({
    name: "pad",
    gpu: ([x]) => V.pad(x, [[1, 2], [0, 3]], 0.25),
    ref: ([x]) => R.pad(x, [[1, 2], [0, 3]], 0.25),
    inputs: [randomRef([3, 4], 9)],
    asViews: true,
  });
});

gpuTest("expand broadcasts without copying and sums gradients back", async () => {
  await checkOp({
    name: "expand",
    gpu: ([x]) => V.expand(x, [2, 3, 4]),
    ref: ([x]) => R.expand(x, [2, 3, 4]),
    inputs: [randomRef([3, 1], 10)],
  });
});
