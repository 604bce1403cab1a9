/**
 * f16 storage for any kernel: {@linkcode halfStorage} rewrites a kernel written for `f32` storage so that
 * chosen storage bindings hold `f16` (or `vecN<f16>`) elements while everything it computes stays `f32`.
 * Loads from such a binding are widened (`f32(X[i])`, `vec4<f32>(X4[i])`) and stores narrowed
 * (`Out[i] = f16(…)`), so accumulators, workgroup tiles and locals keep f32: f16 is a storage format only.
 *
 * Kernels index their arrays in elements, so element offsets and strides mean the same for both storage
 * types and the engine passes the same parameters. The rewrite needs the conventions every kernel here
 * follows: storage arrays are declared `@group(0) @binding(k) var<storage, …> NAME: array<f32>` (or
 * `array<vecN<f32>>`), and each store to one is a plain statement `NAME[index] = value;` (no compound
 * assignment, no component store, no pointer to it); {@linkcode halfStorage} throws when a kernel breaks them.
 *
 * @module
 */

import type { Kernel } from "./types.ts";

const DECLARATION =
  /@group\(0\)\s*@binding\((\d+)\)\s*var<storage,\s*(?:read|read_write)>\s*(\w+)\s*:\s*array<(f32|vec[234]<f32>)>/g;

/** The storage bindings of `code` declared as f32 arrays: binding number → name and element type. */
function floatBindings(code: string): Map<number, { name: string; element: string }> {
  const found = new Map<number, { name: string; element: string }>();
  for (const m of code.matchAll(DECLARATION)) found.set(Number(m[1]), { name: m[2], element: m[3] });
  return found;
}

/** Index just past the bracket group opening at `open` (`code[open]` is `[` or `(`). */
function closing(code: string, open: number): number {
  let depth = 0;
  for (let i = open; i < code.length; i++) {
    const c = code[i];
    if (c === "[" || c === "(") depth++;
    else if (c === "]" || c === ")") {
      if (--depth === 0) return i + 1;
    }
  }
  throw new Error(`halfStorage: unbalanced brackets from offset ${open}`);
}

/** Index of the `;` ending the expression starting at `from` (outside brackets). */
function statementEnd(code: string, from: number): number {
  let depth = 0;
  for (let i = from; i < code.length; i++) {
    const c = code[i];
    if (c === "[" || c === "(") depth++;
    else if (c === "]" || c === ")") depth--;
    else if (c === ";" && depth === 0) return i;
  }
  throw new Error(`halfStorage: statement from offset ${from} does not end`);
}

/**
 * Rewrites loads and stores of the arrays named in `half` (name → element type of the f32 original) in
 * `code`. Index and value expressions are rewritten recursively (they may load from other such arrays).
 */
function rewrite(code: string, half: Map<string, string>, key: string): string {
  if (half.size === 0) return code;
  const access = new RegExp(`(?<![\\w.])(${[...half.keys()].join("|")})\\s*\\[`, "g");
  let out = "";
  let at = 0;
  for (;;) {
    access.lastIndex = at;
    const m = access.exec(code);
    if (!m) break;
    const name = m[1];
    const open = m.index + m[0].length - 1;
    const end = closing(code, open);
    const index = rewrite(code.slice(open + 1, end - 1), half, key);
    const wide = half.get(name)!;
    const narrow = wide.replace("f32", "f16");
    out += code.slice(at, m.index);
    const after = code.slice(end);
    const store = /^\s*=(?!=)/.exec(after);
    if (store) {
      const from = end + store[0].length;
      const stop = statementEnd(code, from);
      out += `${name}[${index}] = ${narrow}(${rewrite(code.slice(from, stop), half, key).trim()})`;
      at = stop;
    } else {
      if (/^\s*(?:[-+*/%&|^]|<<|>>)=/.test(after) || /^\s*(?:\.\w+|\[[^\]]*\])\s*=(?!=)/.test(after)) {
        throw new Error(
          `halfStorage(${key}): "${name}[…]" is updated in place or by component; only whole-element ` +
            `stores \`${name}[i] = value;\` can be narrowed to f16.`,
        );
      }
      out += `${wide}(${name}[${index}])`;
      at = end;
    }
  }
  return out + code.slice(at);
}

/**
 * `kernel` with its storage bindings `halfBindings` (1-based binding numbers, as in
 * {@linkcode Kernel.bindings}: binding k is `bindings[k - 1]`) holding f16 instead of f32 elements. The
 * WGSL gains `enable f16;` (the device needs the `shader-f16` feature) and the key the suffix
 * `|f16:<bindings>`: the base key covers what the generator baked in, the suffix the storage types, so f32
 * and f16 pipelines are cached side by side. Generated once per key. Throws when a named binding is not an
 * f32 array.
 */
export function halfStorage(kernel: Kernel, halfBindings: readonly number[]): Kernel {
  if (halfBindings.length === 0) return kernel;
  const key = `${kernel.key}|f16:${[...halfBindings].sort((a, b) => a - b).join(",")}`;
  let variant = variants.get(key);
  if (!variant) {
    variant = { ...kernel, key, code: `enable f16;\n${halfCode(kernel, halfBindings)}` };
    variants.set(key, variant);
  }
  return variant;
}

/** Every f16 variant generated so far, by key (like kernels/program.ts, the rewrite runs once per key). */
const variants = new Map<string, Kernel>();

/** The WGSL of `kernel` with f16 storage for `halfBindings` (without the `enable` directive). */
function halfCode(kernel: Kernel, halfBindings: readonly number[]): string {
  const declared = floatBindings(kernel.code);
  const half = new Map<string, string>();
  for (const b of halfBindings) {
    const decl = declared.get(b);
    if (!decl) {
      throw new Error(
        `halfStorage(${kernel.key}): binding ${b} is not an f32 storage array, so it cannot hold f16 data.`,
      );
    }
    half.set(decl.name, decl.element);
  }
  // Declarations first (their `NAME: array<…>` is not an access, so the rewrite leaves them alone).
  const declaredHalf = kernel.code.replace(
    DECLARATION,
    (whole, b: string, name: string, element: string) =>
      half.has(name) && halfBindings.includes(Number(b))
        ? whole.slice(0, whole.length - `array<${element}>`.length) +
          `array<${element.replace("f32", "f16")}>`
        : whole,
  );
  return rewrite(declaredHalf, half, kernel.key);
}
