/**
 * Resampling kernels over contiguous `[planes, ...spatial]` tensors with `nd` (1–3) spatial axes, the last
 * fastest: `interpolate` (nearest or multi-linear, PyTorch align_corners=False) and average pooling, each
 * with a backward that gathers over input positions (WebGPU has no float atomics, so no scatter).
 *
 * Thread layout, shared by all four kernels: a 2-D grid, planes along y (folded into z past 65535) and
 * positions within a plane along x, so the plane costs no division. Each thread handles `vec` (1 or 4)
 * consecutive positions along the last axis of the tensor it writes and stores them as one `vec4` when
 * `vec` is 4: on CPU adapters such as lavapipe, per-thread index arithmetic and scalar stores dominate these
 * kernels, and four outputs per thread amortise both. The remaining divisions use the float-reciprocal
 * `div_u` of `./norm.ts`.
 *
 * Interpolation taps are computed in the kernel with ATen's float32 arithmetic: nearest
 * `src = min(⌊dst·ratio⌋, in − 1)`; linear `src = max(ratio·(dst + 0.5) − 0.5, 0)`, neighbours
 * `i0 = min(⌊src⌋, in − 1)` and `i0 + 1` (clamped), weights `1 − λ`, `λ = src − i0`; an axis whose size
 * does not change is copied. The backward reads, per input index along each axis, the range `[lo, hi)` of
 * outputs whose taps may include it (computed by the engine on the CPU), and weighs each by the same tap
 * arithmetic as the forward.
 *
 * @module
 */

import { divHelper } from "./norm.ts";
import { type Kernel, WG } from "./types.ts";
import { type UniformLayout, uniforms } from "./uniforms.ts";
import { defineKernel, type KernelSource } from "./program.ts";

/** Interpolation kernel family: one tap per axis, or two with linear weights. */
export type InterpolateKind = "nearest" | "linear";

/** Positions per thread along the last axis. */
export type ResampleVec = 1 | 4;

const AXES = [0, 1, 2];

/**
 * WGSL tap arithmetic of the interpolation kernels (PyTorch's, in f32) on scalars, and with `vec` 4 also on
 * vec4s (suffix 4) for the four positions a thread covers along the last axis: one vector operation rather
 * than four scalar ones is measurably faster on lavapipe.
 */
function tapFunctions(vec: ResampleVec): string {
  const variant = (S: string, U: string, F: string) => /* wgsl */ `
fn nearest_src${S}(o: ${U}, ratio: f32, n_in: u32) -> ${U} {
  return min(${U}(${F}(o) * ratio), ${U}(n_in - 1u));
}
struct Taps${S} { i0: ${U}, i1: ${U}, w0: ${F}, w1: ${F} }
fn linear_taps${S}(o: ${U}, ratio: f32, n_in: u32, n_out: u32) -> Taps${S} {
  if (n_in == n_out) { return Taps${S}(o, o, ${F}(1.0), ${F}(0.0)); }
  let src = max(ratio * (${F}(o) + 0.5) - 0.5, ${F}(0.0));
  let i0 = min(${U}(src), ${U}(n_in - 1u));
  let l1 = clamp(src - ${F}(i0), ${F}(0.0), ${F}(1.0));
  return Taps${S}(i0, i0 + select(${U}(0u), ${U}(1u), i0 < ${U}(n_in - 1u)), 1.0 - l1, l1);
}`;
  return /* wgsl */ `${variant("", "u32", "f32")}
${vec === 4 ? variant("4", "vec4<u32>", "vec4<f32>") : ""}
// Weight with which output o reads input i along one axis (0 when it does not).
fn linear_weight(o: u32, i: u32, ratio: f32, n_in: u32, n_out: u32) -> f32 {
  let t = linear_taps(o, ratio, n_in, n_out);
  return select(0.0, t.w0, t.i0 == i) + select(0.0, t.w1, t.i1 == i);
}
`;
}

/** WGSL for the positions `o, o + 1, …` a thread covers along the last axis, and component `k` of a value. */
function lastAxis(
  vec: ResampleVec,
  o: string,
): { positions: string; comp: (k: number) => string; fn: string } {
  return vec === 4
    ? { positions: `vec4<u32>(${o}) + vec4<u32>(0u, 1u, 2u, 3u)`, comp: (k) => `.${"xyzw"[k]}`, fn: "4" }
    : { positions: o, comp: () => "", fn: "" };
}

/** The uniform reads every resample kernel shares (see {@linkcode interpolateUniforms}). */
type Read = (name: "planes" | "groups" | "offset" | "rcp", index?: number) => string;

/** WGSL for size `a` of an array of `nd` sizes in the uniforms. */
type Size = (a: number) => string;

/**
 * The start of every kernel: the thread's `plane` and its group `q` of `vec` positions, then coordinates
 * `<p>0..<p>(nd-1)` of the group's first position, from the sizes `dims` (the last divided by `vec`) and
 * the reciprocals of `dims[1..]` in the uniforms' `rcp`.
 */
function locate(nd: number, vec: ResampleVec, read: Read, dims: Size, p: string): string {
  const size = (a: number): string => (a === nd - 1 && vec > 1 ? `(${dims(a)} / ${vec}u)` : dims(a));
  const lines = [
    `let plane = wid.y + wid.z * nwg.y;`,
    `let q = wid.x * ${WG}u + li;`,
    `if (plane >= ${read("planes")} || q >= ${read("groups")}) { return; }`,
    `var rem = q;`,
  ];
  for (let a = nd - 1; a >= 1; a--) {
    lines.push(`let quot${a} = div_u(rem, ${size(a)}, ${read("rcp", a - 1)});`);
    lines.push(`let ${p}${a} = (rem - quot${a} * ${size(a)})${a === nd - 1 && vec > 1 ? ` * ${vec}u` : ""};`);
    lines.push(`rem = quot${a};`);
  }
  lines.push(`let ${p}0 = rem${nd === 1 && vec > 1 ? ` * ${vec}u` : ""};`);
  return lines.join("\n  ");
}

/** WGSL for the row-major offset of `(idx(0), .., idx(nd-1))` within one plane of sizes `size`. */
function ravel(nd: number, size: Size, idx: (a: number) => string): string {
  let e = idx(0);
  for (let a = 1; a < nd; a++) e = `(${e}) * ${size(a)} + ${idx(a)}`;
  return e;
}

/**
 * WGSL for the offset of the row (a line along the last axis) at outer coordinates `idx(0..nd-2)` within
 * one plane of sizes `size`.
 */
function rowOffset(nd: number, size: Size, idx: (a: number) => string): string {
  return nd === 1 ? "0u" : `(${ravel(nd - 1, size, idx)}) * ${size(nd - 1)}`;
}

/** WGSL product of the `nd` sizes `size`. */
function volume(nd: number, size: Size): string {
  return AXES.slice(0, nd).map((a) => size(a)).join(" * ");
}

/** The output declaration and the statement storing components `v0..v(vec-1)` at group `q` of `plane`. */
function store(
  vec: ResampleVec,
  name: string,
  binding: number,
  read: Read,
): { decl: string; write: (values: string[]) => string } {
  const T = vec === 4 ? "vec4<f32>" : "f32";
  return {
    decl: `@group(0) @binding(${binding}) var<storage, read_write> ${name}: array<${T}>;`,
    write: (values) =>
      `${name}[plane * ${read("groups")} + q] = ${
        vec === 4 ? `vec4<f32>(${values.join(", ")})` : values[0]
      };`,
  };
}

const ENTRY = /* wgsl */ `
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {`;

function interpolateFields(nd: number, grad: boolean) {
  return {
    /** Planes and groups of `vec` positions per plane; element offset of the input (x, or g backward). */
    planes: "u32",
    groups: "u32",
    offset: "u32",
    /** Input and output sizes, ATen's float32 source-to-destination ratios. */
    inSize: ["u32", nd],
    outSize: ["u32", nd],
    ratio: ["f32", nd],
    /** f32 reciprocals of the thread-layout dims after the first (the last one divided by `vec`). */
    rcp: ["f32", nd - 1],
    /** Backward only: where each axis' `[lo, hi)` ranges start in the table. */
    rangeAt: ["u32", grad ? nd : 0],
  } as const;
}

/**
 * Uniform layout of {@linkcode interpolateKernel} (`grad` false) and {@linkcode interpolateGradKernel}
 * (`grad` true) over `nd` spatial axes.
 */
export function interpolateUniforms(
  nd: number,
  grad: boolean,
): UniformLayout<ReturnType<typeof interpolateFields>> {
  return uniforms(grad ? "resample:interp_grad" : "resample:interp", interpolateFields(nd, grad));
}

/**
 * Interpolation forward: each thread computes `vec` consecutive outputs along the last axis from their taps.
 *
 * Parameters: {@linkcode interpolateUniforms} (`rcp` of the output dims). Bindings: x, out.
 */
export const interpolateKernel: (kind: InterpolateKind, nd: number, vec: ResampleVec) => Kernel =
  defineKernel(
    "resample:interp",
    (kind: InterpolateKind, nd: number, vec: ResampleVec): KernelSource => {
      const U = interpolateUniforms(nd, false);
      const L = nd - 1;
      const axes = AXES.slice(0, nd);
      const inSize = (a: number) => U.read("inSize", a);
      const outSize = (a: number) => U.read("outSize", a);
      const ratio = (a: number) => U.read("ratio", a);
      const last = lastAxis(vec, `o${L}`);
      const lines: string[] = [];
      const values: string[] = [];
      if (kind === "nearest") {
        for (const a of axes.slice(0, L)) {
          lines.push(`let s${a} = nearest_src(o${a}, ${ratio(a)}, ${inSize(a)});`);
        }
        lines.push(`let row = base + ${rowOffset(nd, inSize, (a) => `s${a}`)};`);
        lines.push(`let s${L} = nearest_src${last.fn}(${last.positions}, ${ratio(L)}, ${inSize(L)});`);
        for (let k = 0; k < vec; k++) values.push(`x[row + s${L}${last.comp(k)}]`);
      } else {
        for (const a of axes.slice(0, L)) {
          lines.push(`let t${a} = linear_taps(o${a}, ${ratio(a)}, ${inSize(a)}, ${outSize(a)});`);
        }
        lines.push(
          `let t${L} = linear_taps${last.fn}(${last.positions}, ${ratio(L)}, ${inSize(L)}, ${outSize(L)});`,
        );
        // The 2^(nd-1) rows of neighbours across the outer axes (corner bit a: upper or lower neighbour along
        // axis a) and their weights, shared by the `vec` outputs; each then blends two taps along each row.
        const corners = 1 << L;
        for (let corner = 0; corner < corners; corner++) {
          const upper = (a: number): boolean => ((corner >> (L - 1 - a)) & 1) === 1;
          const w = axes.slice(0, L).map((a) => `t${a}.${upper(a) ? "w1" : "w0"}`).join(" * ") || "1.0";
          lines.push(
            `let r${corner} = base + ${rowOffset(nd, inSize, (a) => `t${a}.${upper(a) ? "i1" : "i0"}`)};`,
          );
          lines.push(`let wr${corner} = ${w};`);
        }
        for (let k = 0; k < vec; k++) {
          const tap = (field: string) => `t${L}.${field}${last.comp(k)}`;
          const terms = Array.from(
            { length: corners },
            (_, c) =>
              `wr${c} * (${tap("w0")} * x[r${c} + ${tap("i0")}] + ${tap("w1")} * x[r${c} + ${tap("i1")}])`,
          );
          lines.push(`let v${k} = ${terms.join("\n    + ")};`);
          values.push(`v${k}`);
        }
      }
      const out = store(vec, "out", 2, U.read);
      const code = /* wgsl */ `
  ${U.wgsl}
  ${divHelper(true)}
  ${tapFunctions(vec)}
  @group(0) @binding(1) var<storage, read> x: array<f32>;
  ${out.decl}
  ${ENTRY}
    ${locate(nd, vec, U.read, outSize, "o")}
    let base = ${U.read("offset")} + plane * (${volume(nd, inSize)});
    ${lines.join("\n  ")}
    ${out.write(values)}
  }
  `;
      return { code, bindings: ["read", "write"] };
    },
  );

/**
 * Interpolation backward: each thread computes the gradient of `vec` consecutive inputs along the last
 * axis, summing the output gradient over the box of outputs whose taps may include each (ranges from the
 * table) with the forward's weights. The ranges of nearest are exact, so its weights are 1.
 *
 * Parameters: {@linkcode interpolateUniforms} (`rcp` of the input dims). The table holds `[lo, hi)` per
 * input index of each axis from `rangeAt[a]`. Bindings: g, ranges, dx.
 */
export const interpolateGradKernel: (kind: InterpolateKind, nd: number, vec: ResampleVec) => Kernel =
  defineKernel(
    "resample:interp_grad",
    (kind: InterpolateKind, nd: number, vec: ResampleVec): KernelSource => {
      const U = interpolateUniforms(nd, true);
      const inSize = (a: number) => U.read("inSize", a);
      const outSize = (a: number) => U.read("outSize", a);
      const L = nd - 1;
      const weight = (a: number, o: string, c: string): string =>
        kind === "nearest"
          ? ""
          : ` * linear_weight(${o}, ${c}, ${U.read("ratio", a)}, ${inSize(a)}, ${outSize(a)})`;
      const range = (a: number, c: string, name: string) =>
        `let lo${name} = tab[${U.read("rangeAt", a)} + 2u * (${c})]; let hi${name} = tab[${
          U.read("rangeAt", a)
        } + 2u * (${c}) + 1u];`;
      // Loops over the outer axes are shared by the `vec` inputs; each has its own range along the last axis.
      const heads = AXES.slice(0, L).map((a) => range(a, `c${a}`, `${a}`));
      const lasts = Array.from({ length: vec }, (_, k) => range(L, `c${L} + ${k}u`, `${L}_${k}`));
      let body = Array.from(
        { length: vec },
        (_, k) =>
          `for (var o = lo${L}_${k}; o < hi${L}_${k}; o = o + 1u) {
        acc${k} = acc${k} + w${L} * g[row + o]${weight(L, "o", `c${L} + ${k}u`)};
      }`,
      ).join("\n    ");
      body = `let row = gbase + ${rowOffset(nd, outSize, (a) => `o${a}`)};
      ${body}`;
      for (let a = L - 1; a >= 0; a--) {
        body = `for (var o${a} = lo${a}; o${a} < hi${a}; o${a} = o${a} + 1u) {
      let w${a + 1} = w${a}${weight(a, `o${a}`, `c${a}`)};
      ${body}
    }`;
      }
      const accs = Array.from({ length: vec }, (_, k) => `var acc${k} = 0.0;`);
      const out = store(vec, "dx", 3, U.read);
      const code = /* wgsl */ `
  ${U.wgsl}
  ${divHelper(true)}
  ${tapFunctions(1)}
  @group(0) @binding(1) var<storage, read> g: array<f32>;
  @group(0) @binding(2) var<storage, read> tab: array<u32>;
  ${out.decl}
  ${ENTRY}
    ${locate(nd, vec, U.read, inSize, "c")}
    ${[...heads, ...lasts].join("\n  ")}
    let gbase = ${U.read("offset")} + plane * (${volume(nd, outSize)});
    ${accs.join(" ")}
    let w0 = 1.0;
    ${body}
    ${out.write(Array.from({ length: vec }, (_, k) => `acc${k}`))}
  }
  `;
      return { code, bindings: ["read", "read", "write"] };
    },
  );

function avgPoolFields(nd: number) {
  return {
    /** Planes and groups of `vec` positions per plane; element offset of the input (x, or g backward). */
    planes: "u32",
    groups: "u32",
    offset: "u32",
    /** Input and output sizes, window and stride. */
    inSize: ["u32", nd],
    outSize: ["u32", nd],
    kernel: ["u32", nd],
    stride: ["u32", nd],
    /** f32 reciprocals of the thread-layout dims after the first (the last one divided by `vec`). */
    rcp: ["f32", nd - 1],
  } as const;
}

/** Uniform layout of {@linkcode avgPoolKernel} and {@linkcode avgPoolGradKernel} over `nd` spatial axes. */
export function avgPoolUniforms(nd: number, grad: boolean): UniformLayout<ReturnType<typeof avgPoolFields>> {
  return uniforms(grad ? "resample:avgpool_grad" : "resample:avgpool", avgPoolFields(nd));
}

/**
 * Average pooling forward without padding: each thread averages the windows of `vec` consecutive outputs
 * along the last axis.
 *
 * Parameters: {@linkcode avgPoolUniforms} (`rcp` of the output dims). Bindings: x, out.
 */
export const avgPoolKernel: (nd: number, vec: ResampleVec) => Kernel = defineKernel(
  "resample:avgpool",
  (nd: number, vec: ResampleVec): KernelSource => {
    const U = avgPoolUniforms(nd, false);
    const inSize = (a: number) => U.read("inSize", a);
    const outSize = (a: number) => U.read("outSize", a);
    const kernel = (a: number) => U.read("kernel", a);
    const L = nd - 1;
    const start = (a: number, o: string) => `${o} * ${U.read("stride", a)}`;
    let body = Array.from({ length: vec }, (_, k) =>
      `for (var kk = 0u; kk < ${kernel(L)}; kk = kk + 1u) {
        acc${k} = acc${k} + x[row + ${start(L, `(o${L} + ${k}u)`)} + kk];
      }`).join("\n    ");
    body = `let row = base + ${rowOffset(nd, inSize, (a) => `(${start(a, `o${a}`)} + k${a})`)};
      ${body}`;
    for (let a = L - 1; a >= 0; a--) {
      body = `for (var k${a} = 0u; k${a} < ${kernel(a)}; k${a} = k${a} + 1u) {
      ${body}
    }`;
    }
    const out = store(vec, "out", 2, U.read);
    const code = /* wgsl */ `
  ${U.wgsl}
  ${divHelper(true)}
  @group(0) @binding(1) var<storage, read> x: array<f32>;
  ${out.decl}
  ${ENTRY}
    ${locate(nd, vec, U.read, outSize, "o")}
    let base = ${U.read("offset")} + plane * (${volume(nd, inSize)});
    ${Array.from({ length: vec }, (_, k) => `var acc${k} = 0.0;`).join(" ")}
    ${body}
    let count = f32(${volume(nd, kernel)});
    ${out.write(Array.from({ length: vec }, (_, k) => `acc${k} / count`))}
  }
  `;
    return { code, bindings: ["read", "write"] };
  },
);

/**
 * Average pooling backward: each input sums g/volume over the windows containing it, the outputs o with
 * o·s ≤ i < o·s + k, i.e. ⌈(i + 1 − k)/s⌉ ≤ o ≤ ⌊i/s⌋ (clamped to the output); `vec` consecutive inputs
 * along the last axis per thread.
 *
 * Parameters: {@linkcode avgPoolUniforms} (`rcp` of the input dims). Bindings: g, dx.
 */
export const avgPoolGradKernel: (nd: number, vec: ResampleVec) => Kernel = defineKernel(
  "resample:avgpool_grad",
  (nd: number, vec: ResampleVec): KernelSource => {
    const U = avgPoolUniforms(nd, true);
    const inSize = (a: number) => U.read("inSize", a);
    const outSize = (a: number) => U.read("outSize", a);
    const kernel = (a: number) => U.read("kernel", a);
    const stride = (a: number) => U.read("stride", a);
    const L = nd - 1;
    // Window starts are multiples of s: the first output covering i is ⌈(i + 1 − k)/s⌉, the last ⌊i/s⌋.
    const range = (a: number, c: string, name: string) =>
      `let lo${name} = select(0u, (${c} + ${stride(a)} - ${kernel(a)}) / ${stride(a)}, ${c} + 1u >= ${
        kernel(a)
      });
    let hi${name} = min(${c} / ${stride(a)} + 1u, ${outSize(a)});`;
    const heads = AXES.slice(0, L).map((a) => range(a, `c${a}`, `${a}`));
    const lasts = Array.from({ length: vec }, (_, k) => range(L, `(c${L} + ${k}u)`, `${L}_${k}`));
    let body = Array.from({ length: vec }, (_, k) =>
      `for (var o = lo${L}_${k}; o < hi${L}_${k}; o = o + 1u) {
        acc${k} = acc${k} + g[row + o];
      }`).join("\n    ");
    body = `let row = gbase + ${rowOffset(nd, outSize, (a) => `o${a}`)};
      ${body}`;
    for (let a = L - 1; a >= 0; a--) {
      body = `for (var o${a} = lo${a}; o${a} < hi${a}; o${a} = o${a} + 1u) {
      ${body}
    }`;
    }
    const out = store(vec, "dx", 2, U.read);
    const code = /* wgsl */ `
  ${U.wgsl}
  ${divHelper(true)}
  @group(0) @binding(1) var<storage, read> g: array<f32>;
  ${out.decl}
  ${ENTRY}
    ${locate(nd, vec, U.read, inSize, "c")}
    ${[...heads, ...lasts].join("\n  ")}
    let gbase = ${U.read("offset")} + plane * (${volume(nd, outSize)});
    ${Array.from({ length: vec }, (_, k) => `var acc${k} = 0.0;`).join(" ")}
    ${body}
    let count = f32(${volume(nd, kernel)});
    ${out.write(Array.from({ length: vec }, (_, k) => `acc${k} / count`))}
  }
  `;
    return { code, bindings: ["read", "write"] };
  },
);
