import { deepStrictEqual, strictEqual, throws } from "node:assert";
import { uniforms } from "../../kernels/uniforms.ts";

const L = uniforms("test:layout", {
  n: "u32",
  shift: "i32",
  scale: "f32",
  rows: ["u32", 3],
  none: ["f32", 0],
});

Deno.test("uniform layouts: fields in declaration order, typed WGSL reads at constant word indices", () => {
  strictEqual(L.words, 6);
  strictEqual(L.read("n"), "pu(0u)");
  strictEqual(L.read("shift"), "bitcast<i32>(pu(1u))");
  strictEqual(L.read("scale"), "pf(2u)");
  strictEqual(L.read("rows", 0), "pu(3u)");
  strictEqual(L.read("rows", 2), "pu(5u)");
  strictEqual(L.read("rows", "j"), "pu(3u + (j))");
  throws(() => L.read("rows", 3), /test:layout uniforms: index 3 is outside rows\[3\]/);
  throws(() => L.read("rows"), /rows is an array; give an index/);
  throws(() => L.read("n", 0), /n is a scalar, not an array/);
  // @ts-expect-error: not a declared field
  throws(() => L.read("m"), /no field m; declared: n, shift, scale, rows, none/);
  strictEqual(L.wgsl.includes("array<vec4<u32>, 2>"), true);
});

Deno.test("uniform packing: types, bounds, missing and unknown fields", () => {
  const words = L.pack({ n: 7, shift: -2, scale: 0.5, rows: [1, 2, 4294967295], none: [] });
  strictEqual(words.length % 4, 0, "whole vec4s");
  deepStrictEqual(Array.from(words.slice(0, 6)), [7, 4294967294, 0x3f000000, 1, 2, 4294967295]);
  deepStrictEqual(
    new Float32Array(L.pack({ n: 0, shift: 0, scale: NaN, rows: [0, 0, 0], none: [] }).buffer)[2],
    NaN,
  );
  const ok = { n: 1, shift: 0, scale: 1, rows: [0, 0, 0], none: [] };
  throws(() => L.pack({ ...ok, n: -1 }), /n = -1 is not a u32/);
  throws(() => L.pack({ ...ok, n: 2 ** 32 }), /is not a u32/);
  throws(() => L.pack({ ...ok, n: 1.5 }), /n = 1.5 is not a u32/);
  throws(() => L.pack({ ...ok, shift: 2 ** 31 }), /shift = 2147483648 is not an i32/);
  throws(() => L.pack({ ...ok, rows: [1, 2] }), /rows needs 3 values, got 2 values/);
  throws(() => L.pack({ ...ok, rows: [1, 2, -3] }), /rows\[2\] = -3 is not a u32/);
  // @ts-expect-error: a missing field is a type error too
  throws(() => L.pack({ shift: 0, scale: 1, rows: [0, 0, 0], none: [] }), /field n is missing/);
  // @ts-expect-error: so is an unknown one
  throws(() => L.pack({ ...ok, extra: 3 }), /unknown field extra; declared: n, shift/);
  throws(() => uniforms("test:bad", { x: "f64" as "f32" }), /field x has type f64; accepted: u32, i32, f32/);
});
