import * as R from "../../engine/reference/mod.ts";
import * as V from "../../mod.ts";
import { randomRef } from "../../engine/reference/mod.ts";
import { checkOp } from "../helpers/opcheck.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";
import { throws } from "node:assert";

gpuTest("a composite network: gradients of every parameter vs finite differences", async () => {
  // y = softmax(tanh(x·W + b)) ⊙ gelu(x·W)  — shared subexpression x·W, broadcasting bias, several ops.
  await checkOp({
    name: "mlp",
    gpu: ([x, w, b]) =>
      V.scope(() => {
        const h = V.matmul(x, w);
        return V.mul(V.softmax(V.tanh(V.add(h, b))), V.gelu(h));
      }),
    ref: ([x, w, b]) => {
      const h = R.matmul(x, w);
      return R.mul(R.softmax(R.tanh(R.add(h, b))), R.gelu(h));
    },
    inputs: [randomRef([5, 7], 1), randomRef([7, 3], 2), randomRef([3], 3)],
  });
});

gpuTest("a tensor used twice accumulates both gradient paths", async () => {
  const x = V.tensor([1, 2, 3], [3], { requiresGrad: true });
  const y = V.scope(() => V.sum(V.add(V.mul(x, x), V.mul(x, 3))));
  const [g] = V.grad(y, [x]);
  assertClose(await g.toArray(), [5, 7, 9], { name: "d/dx (x² + 3x)" });
  disposeAll(x, y, g);
});

gpuTest("gradients with respect to an intermediate tensor", async () => {
  const x = V.tensor([1, 2], [2], { requiresGrad: true });
  const h = V.mul(x, 2);
  const y = V.scope(() => V.sum(V.square(h)));
  const [gh, gx] = V.grad(y, [h, x]);
  assertClose(await gh.toArray(), [4, 8], { name: "dy/dh = 2h" });
  assertClose(await gx.toArray(), [8, 16], { name: "dy/dx = 8x" });
  disposeAll(x, h, y, gh, gx);
});

gpuTest("backward still works after the user disposed intermediates", async () => {
  const x = V.tensor([0.5, -1, 2], [3], { requiresGrad: true });
  const h = V.exp(x);
  const y = V.sum(h);
  h.dispose();
  const [g] = V.grad(y, [x]);
  assertClose(await g.toArray(), [Math.exp(0.5), Math.exp(-1), Math.exp(2)], {
    name: "d/dx Σ eˣ",
    rtol: 1e-6,
  });
  disposeAll(x, y, g);
});

gpuTest("noGrad records nothing; unused inputs throw unless allowUnused", async () => {
  const x = V.tensor([1, 2], [2], { requiresGrad: true });
  const z = V.tensor([1, 2], [2], { requiresGrad: true });
  const inside = V.noGrad(() => V.mul(x, 2));
  if (inside.requiresGrad) throw new Error("noGrad result must not require gradients");
  const y = V.scope(() => V.sum(V.mul(x, 2)));
  throws(() => V.grad(y, [z]), /does not depend on wrt\[0\]/);
  const [gz] = V.grad(y, [z], { allowUnused: true });
  assertClose(await gz.toArray(), [0, 0], { name: "unused gradient" });
  V.scope(() => throws(() => V.grad(V.sum(inside), [x]), /y does not require gradients/));
  disposeAll(x, z, inside, y, gz);
});

gpuTest("autograd records are freed with the tensors that reach them", () => {
  const before = V.memory().liveBytes;
  const x = V.tensor(new Float32Array(1000).fill(0.5), [1000], { requiresGrad: true });
  const y = V.scope(() => V.sum(V.exp(V.mul(V.sigmoid(x), 3))));
  const [g] = V.grad(y, [x]);
  disposeAll(g, y, x);
  const after = V.memory().liveBytes;
  if (after !== before) throw new Error(`live bytes ${before} → ${after}: autograd kept buffers alive`);
});
