import * as R from "../../engine/reference/mod.ts";
import * as V from "../../mod.ts";
import { Linear } from "../../nn/linear.ts";
import { Module, ModuleList } from "../../nn/module.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, gpuTest, toRef } from "../helpers/gpu.ts";
import { deepStrictEqual, throws } from "node:assert";

class Block extends Module {
  readonly proj: Linear;
  readonly layers: ModuleList<Linear>;
  constructor() {
    super();
    this.proj = this.child("proj", new Linear(3, 4, { seed: 1 }));
    this.layers = this.child(
      "layers",
      new ModuleList([0, 1].map((i) => new Linear(4, 4, { seed: 2 + i, bias: i === 0 }))),
    );
  }
}

gpuTest("named parameters follow PyTorch's dotted state_dict paths", () => {
  const m = new Block();
  deepStrictEqual(m.namedParameters().map(([n, t]) => `${n}${JSON.stringify(t.shape)}`), [
    "proj.weight[4,3]",
    "proj.bias[4]",
    "layers.0.weight[4,4]",
    "layers.0.bias[4]",
    "layers.1.weight[4,4]",
  ]);
  deepStrictEqual(m.numParameters(), 12 + 4 + 16 + 4 + 16);
  m.freeze((n) => n.startsWith("layers"));
  deepStrictEqual(m.trainableParameters().length, 2);
  m.unfreeze();
  deepStrictEqual(m.trainableParameters().length, 5);
  deepStrictEqual([m.eval().training, m.layers.items[0].training, m.train().layers.items[1].training], [
    false,
    false,
    true,
  ]);
  m.dispose();
});

gpuTest("Linear matches x·Wᵀ + b, and gradients reach weight and bias", async () => {
  const lin = new Linear(5, 3, { seed: 7 });
  const xr = R.roundToF32(R.randomRef([2, 4, 5], 3));
  const x = V.tensor(Float32Array.from(xr.data), xr.shape);
  const y = lin.forward(x);
  const w = await toRef(lin.weight);
  const b = await toRef(lin.bias!);
  const expected = R.add(R.matmul(xr, R.transpose(w)), b);
  assertClose(await toRef(y), expected, { rtol: 1e-5, atol: 1e-6, name: "linear" });
  const loss = V.sum(y);
  const [gw, gb] = V.grad(loss, [lin.weight, lin.bias!]);
  assertClose(await toRef(gb), R.refFull([3], 8), { name: "dL/db = number of rows" });
  assertClose(await toRef(gw), R.sum(R.expand(R.sum(xr, [0, 1], false), [3, 5]), [], false), {
    name: "dL/dW = column sums of x",
    rtol: 1e-5,
  });
  disposeAll(x, y, loss, gw, gb);
  lin.dispose();
});

gpuTest("loadStateDict copies values, and strict mode reports every problem at once", async () => {
  const a = new Linear(2, 2, { seed: 1 });
  const b = new Linear(2, 2, { seed: 2 });
  const report = b.loadStateDict(a.stateDict());
  deepStrictEqual(report.loaded, ["weight", "bias"]);
  assertClose(await b.weight.toArray(), await a.weight.toArray(), {
    name: "copied weight",
    rtol: 0,
    atol: 0,
  });
  const wrong = new Map([["weight", V.zeros([3, 2])], ["extra", V.zeros([1])]]);
  throws(
    () => b.loadStateDict(wrong),
    (e: Error) =>
      /missing keys \(1\): bias/.test(e.message) && /unexpected keys \(1\): extra/.test(e.message) &&
      /wrong shapes \(1\): weight: \[3, 2\] in the state dict vs \[2, 2\] in the model/.test(e.message),
  );
  const lenient = b.loadStateDict(wrong, { strict: false });
  deepStrictEqual([lenient.loaded, lenient.missing, lenient.unexpected], [[], ["bias"], ["extra"]]);
  disposeAll([...wrong.values()]);
  a.dispose();
  b.dispose();
});
