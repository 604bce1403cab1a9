import * as V from "../../mod.ts";
import { checkpoint } from "../../engine/ops/checkpoint.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";

/** A block of a few ops whose intermediates autograd would keep: silu(x·w + b)·w. */
function block(x: V.Tensor, w: V.Tensor, b: V.Tensor): V.Tensor {
  return V.scope(() => V.mul(V.silu(V.add(V.mul(x, w), b)), w));
}

async function values(t: V.Tensor): Promise<{ shape: number[]; data: Float64Array }> {
  return { shape: [...t.shape], data: Float64Array.from(await t.toArray()) };
}

gpuTest(
  "checkpoint: same value and gradients as the plain block, fewer live bytes before backward",
  async () => {
    const x = V.randn([4096], { seed: 1 });
    const w = V.randn([4096], { seed: 2 });
    const b = V.randn([4096], { seed: 3 });
    for (const t of [x, w, b]) t.setRequiresGrad(true);
    const run = (checkpointed: boolean) => {
      const before = V.memory().liveBytes;
      const y = checkpointed ? checkpoint((xi) => block(xi, w, b), [x], [w, b]) : block(x, w, b);
      const held = V.memory().liveBytes - before;
      const grads = V.grad(V.sum(V.square(y)), [x, w, b]);
      return { y, grads, held };
    };
    const plain = V.scope(() => run(false));
    const ckpt = V.scope(() => run(true));
    try {
      // The same kernels run on the same values: identical up to nothing (rtol 0 would also pass; 1e-6 keeps
      // the test independent of summation order should the gradient of a shared w be accumulated differently).
      assertClose(await values(ckpt.y), await values(plain.y), { rtol: 1e-6, atol: 0, name: "value" });
      for (let i = 0; i < 3; i++) {
        assertClose(await values(ckpt.grads[i]), await values(plain.grads[i]), {
          rtol: 1e-6,
          atol: 1e-7,
          name: `gradient ${i}`,
        });
      }
      // Plain autograd keeps x·w + b and silu(·) (2 × 16 KiB) besides the output; the checkpoint only its
      // input x, which is alive anyway.
      if (!(ckpt.held < plain.held)) {
        throw new Error(`checkpoint held ${ckpt.held} bytes after forward, plain autograd ${plain.held}`);
      }
    } finally {
      disposeAll(x, w, b, plain.y, plain.grads, ckpt.y, ckpt.grads);
    }
  },
);

gpuTest("checkpoint: a U-Net with gradientCheckpointing() gets the same gradients", async () => {
  const unet = new V.DiffusionModelUNet({
    spatialDims: 3,
    inChannels: 1,
    outChannels: 1,
    channels: [8, 8],
    attentionLevels: [false, false],
    numResBlocks: 1,
    normNumGroups: 8,
    seed: 5,
  });
  const x = V.randn([1, 1, 8, 8, 8], { seed: 1 });
  const params = unet.parameters();
  const run = () =>
    V.scope(() => V.grad(V.mean(V.square(unet.forward(x, [10]))), [params[0], params[params.length - 3]]));
  try {
    const plain = run();
    unet.gradientCheckpointing();
    const ckpt = run();
    for (let i = 0; i < 2; i++) {
      // Same kernels on the same values: only summation order may differ (f32 reassociation).
      assertClose(await values(ckpt[i]), await values(plain[i]), {
        rtol: 1e-5,
        atol: 1e-7,
        name: `gradient ${i}`,
      });
    }
    disposeAll(plain, ckpt);
  } finally {
    x.dispose();
    unet.dispose();
  }
});
