/**
 * Uniform layouts declared once: a kernel's parameters are listed as `name → type` (`u32`, `i32`, `f32`, or
 * `[type, length]` for an array), and both sides are generated from that list — the WGSL reads
 * ({@linkcode UniformLayout.read}) and the host's packing ({@linkcode UniformLayout.pack}) — so a field cannot
 * be numbered twice, read with the wrong type, or left out of the upload.
 *
 * Storage stays the `array<vec4<u32>>` block of {@linkcode paramsBlock}, read with `pu(i)`/`pf(i)` at
 * constant word indices: on llvmpipe, uniform loads at constant offsets are what the fast kernels rely on
 * (see conv_chunk.ts), and the generated reads are exactly those.
 *
 * @module
 */

import { paramsBlock } from "./types.ts";

/** The WGSL scalar type of a uniform field. */
export type UniformType = "u32" | "i32" | "f32";

/** One declared field: a scalar, or `[type, length]` for an array of `length` scalars. */
export type UniformField = UniformType | readonly [UniformType, number];

/** A uniform layout declaration: field names to their types, in block order. */
export type UniformSpec = Readonly<Record<string, UniformField>>;

/** The host-side values of a layout: a number per scalar field, `length` numbers per array field. */
export type UniformValues<S extends UniformSpec> = {
  readonly [K in keyof S]: S[K] extends readonly [UniformType, number] ? ArrayLike<number> : number;
};

/** A declared uniform layout (see the module doc). */
export interface UniformLayout<S extends UniformSpec> {
  /** Size of the block in u32 words. */
  readonly words: number;
  /** The WGSL declaration of the block and its accessors (`pu`, `pf`). */
  readonly wgsl: string;
  /**
   * The WGSL expression reading field `name` with its declared type. For an array field, `index` is a
   * constant element index (checked against the length; the read stays at a constant offset) or a WGSL u32
   * expression.
   */
  read(name: keyof S & string, index?: number | string): string;
  /** The block's words for a dispatch. Throws on a missing or unknown field, a wrong array length, or a
   * value its type cannot hold (a u32 must be an integer in [0, 2³²), an i32 one in [−2³¹, 2³¹)). */
  pack(values: UniformValues<S>): Uint32Array;
}

interface Slot {
  name: string;
  type: UniformType;
  /** Array length, or -1 for a scalar. */
  length: number;
  at: number;
}

/**
 * Declares the uniform layout `spec` of the kernel family `owner` (named in error messages). Fields are
 * packed in declaration order, one u32 word per scalar.
 *
 * @example
 * ```ts
 * const P = uniforms("demo:scale", { n: "u32", offset: "i32", factor: "f32", shape: ["u32", 3] });
 * const wgsl = `${P.wgsl} ... if (i < ${P.read("n")}) { out[i] = x[i] * ${P.read("factor")}; }`;
 * const params = P.pack({ n: 8, offset: -2, factor: 0.5, shape: [2, 2, 2] });
 * ```
 */
export function uniforms<S extends UniformSpec>(owner: string, spec: S): UniformLayout<S> {
  const slots = new Map<string, Slot>();
  let at = 0;
  for (const [name, field] of Object.entries(spec)) {
    const [type, length] = typeof field === "string" ? [field, -1] : field;
    if (type !== "u32" && type !== "i32" && type !== "f32") {
      throw new Error(`${owner} uniforms: field ${name} has type ${type}; accepted: u32, i32, f32.`);
    }
    if (length !== -1 && !(Number.isInteger(length) && length >= 0)) {
      throw new Error(`${owner} uniforms: array ${name} has length ${length}; accepted: an integer ≥ 0.`);
    }
    slots.set(name, { name, type, length, at });
    at += length === -1 ? 1 : length;
  }
  const words = at;
  const slot = (name: string): Slot => {
    const s = slots.get(name);
    if (!s) {
      throw new Error(`${owner} uniforms: no field ${name}; declared: ${[...slots.keys()].join(", ")}.`);
    }
    return s;
  };
  const load = (type: UniformType, word: string): string =>
    type === "u32" ? `pu(${word})` : type === "f32" ? `pf(${word})` : `bitcast<i32>(pu(${word}))`;
  return {
    words,
    wgsl: paramsBlock(words),
    read(name, index) {
      const s = slot(name);
      if (s.length === -1) {
        if (index !== undefined) throw new Error(`${owner} uniforms: ${name} is a scalar, not an array.`);
        return load(s.type, `${s.at}u`);
      }
      if (index === undefined) throw new Error(`${owner} uniforms: ${name} is an array; give an index.`);
      if (typeof index === "number") {
        if (!Number.isInteger(index) || index < 0 || index >= s.length) {
          throw new Error(`${owner} uniforms: index ${index} is outside ${name}[${s.length}].`);
        }
        return load(s.type, `${s.at + index}u`);
      }
      return load(s.type, `${s.at}u + (${index})`);
    },
    pack(values) {
      const out = new Uint32Array(Math.max(4, Math.ceil(words / 4) * 4));
      const i32 = new Int32Array(out.buffer);
      const f32 = new Float32Array(out.buffer);
      const record = values as Readonly<Record<string, number | ArrayLike<number>>>;
      for (const name of Object.keys(record)) {
        if (!slots.has(name)) {
          throw new Error(
            `${owner} uniforms: unknown field ${name}; declared: ${[...slots.keys()].join(", ")}.`,
          );
        }
      }
      const put = (s: Slot, word: number, v: unknown, what: string) => {
        if (typeof v !== "number") {
          throw new Error(`${owner} uniforms: ${what} is ${typeof v}, not a number.`);
        }
        if (s.type === "f32") {
          f32[word] = v;
        } else if (s.type === "u32") {
          if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
            throw new Error(`${owner} uniforms: ${what} = ${v} is not a u32 (an integer in [0, 2^32)).`);
          }
          out[word] = v;
        } else {
          if (!Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) {
            throw new Error(`${owner} uniforms: ${what} = ${v} is not an i32 (an integer in [-2^31, 2^31)).`);
          }
          i32[word] = v;
        }
      };
      for (const s of slots.values()) {
        const v = record[s.name];
        if (v === undefined) throw new Error(`${owner} uniforms: field ${s.name} is missing.`);
        if (s.length === -1) {
          put(s, s.at, v, s.name);
          continue;
        }
        if (typeof v === "number" || typeof v.length !== "number" || v.length !== s.length) {
          const got = typeof v === "number" ? "a number" : `${(v as ArrayLike<number>).length} values`;
          throw new Error(`${owner} uniforms: ${s.name} needs ${s.length} values, got ${got}.`);
        }
        for (let i = 0; i < s.length; i++) put(s, s.at + i, v[i], `${s.name}[${i}]`);
      }
      return out;
    },
  };
}
