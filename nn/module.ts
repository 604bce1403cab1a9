/**
 * `Module`: the base of every network. Parameters and sub-modules are registered under names, so that
 * `namedParameters()` yields dotted paths exactly like a PyTorch `state_dict` (`down_blocks.0.resnets.1.
 * conv1.conv.weight`), and MONAI checkpoints load by name.
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { castInPlace } from "../engine/ops/cast.ts";
import { copyInto } from "../engine/ops/map.ts";
import { checkPrecision, type Precision } from "../engine/precision.ts";
import { formatShape } from "../engine/shape.ts";
import { keep } from "../engine/memory.ts";
import type { Tensor } from "../engine/tensor.ts";

/** Result of {@linkcode Module.loadStateDict}. */
export interface LoadReport {
  /** Parameters of the module that the state dict did not provide. */
  missing: string[];
  /** Entries of the state dict that match no parameter. */
  unexpected: string[];
  /** Entries whose shape differs from the parameter's: `name: [file shape] vs [model shape]`. */
  mismatched: string[];
  /** Parameters that were loaded. */
  loaded: string[];
}

/** Options of {@linkcode Module.loadStateDict}. */
export interface LoadOptions {
  /** Throw (listing every problem at once) on missing, unexpected or mis-shaped keys. Default true. */
  strict?: boolean;
  /** Keys to ignore when they appear in the state dict (e.g. weights the architecture never uses). */
  ignore?: (name: string) => boolean;
}

/** Base class of networks: named parameters, sub-modules, state dicts, freezing, train/eval mode. */
export class Module {
  #params = new Map<string, Tensor>();
  #children = new Map<string, Module>();
  #training = true;
  #precision: Precision = "f32";

  /** Registers a parameter (a leaf tensor that requires gradients) under `name`. Returns it. */
  protected param(name: string, t: Tensor): Tensor {
    if (this.#params.has(name) || this.#children.has(name)) {
      throw new Error(`Module: "${name}" is registered twice.`);
    }
    if (!t.requiresGrad) t.setRequiresGrad(true);
    // Parameters live as long as the module: a model built inside a scope must not lose them.
    keep(t);
    this.#params.set(name, t);
    return t;
  }

  /** Registers a sub-module under `name` (use numeric names for lists: "0", "1", …). Returns it. */
  protected child<M extends Module>(name: string, m: M): M {
    if (this.#params.has(name) || this.#children.has(name)) {
      throw new Error(`Module: "${name}" is registered twice.`);
    }
    this.#children.set(name, m);
    return m;
  }

  /** Replaces the sub-module registered under `name` (used by adapters that wrap layers). */
  replaceChild(name: string, m: Module): void {
    if (!this.#children.has(name)) throw new Error(`Module: no sub-module "${name}" to replace.`);
    this.#children.set(name, m);
  }

  /** The direct sub-module registered under `name` (throws naming the module's children when absent). */
  getChild<M extends Module = Module>(name: string): M {
    const m = this.#children.get(name);
    if (!m) {
      throw new Error(
        `Module: no sub-module "${name}"; children are ${[...this.#children.keys()].join(", ") || "none"}.`,
      );
    }
    return m as M;
  }

  /** The direct sub-modules by name. */
  children(): Array<[string, Module]> {
    return [...this.#children.entries()];
  }

  /** Every sub-module (this one first) with its dotted path. */
  namedModules(prefix = ""): Array<[string, Module]> {
    const out: Array<[string, Module]> = [[prefix, this]];
    for (const [name, m] of this.#children) out.push(...m.namedModules(prefix ? `${prefix}.${name}` : name));
    return out;
  }

  /** Every parameter with its dotted path, in registration order. */
  namedParameters(prefix = ""): Array<[string, Tensor]> {
    const out: Array<[string, Tensor]> = [];
    for (const [name, t] of this.#params) out.push([prefix ? `${prefix}.${name}` : name, t]);
    for (const [name, m] of this.#children) {
      out.push(...m.namedParameters(prefix ? `${prefix}.${name}` : name));
    }
    return out;
  }

  /** Every parameter. */
  parameters(): Tensor[] {
    return this.namedParameters().map(([, t]) => t);
  }

  /** Parameters that currently require gradients. */
  trainableParameters(): Tensor[] {
    return this.parameters().filter((t) => t.requiresGrad);
  }

  /** Total number of parameter elements. */
  numParameters(): number {
    return this.parameters().reduce((n, t) => n + t.size, 0);
  }

  /** The parameters as a name → tensor map (the tensors themselves, not copies). */
  stateDict(): Map<string, Tensor> {
    return new Map(this.namedParameters());
  }

  /**
   * Copies values from `state` into the parameters with the same names. In strict mode (default) every
   * missing, unexpected and wrongly-shaped key is reported by name in one error, and nothing is loaded.
   */
  loadStateDict(state: Map<string, Tensor>, opts: LoadOptions = {}): LoadReport {
    const strict = opts.strict ?? true;
    const own = this.stateDict();
    const report: LoadReport = { missing: [], unexpected: [], mismatched: [], loaded: [] };
    for (const [name, t] of own) {
      const src = state.get(name);
      if (!src) report.missing.push(name);
      else if (src.shape.length !== t.shape.length || src.shape.some((d, i) => d !== t.shape[i])) {
        report.mismatched.push(
          `${name}: ${formatShape(src.shape)} in the state dict vs ${formatShape(t.shape)} in the model`,
        );
      }
    }
    for (const name of state.keys()) if (!own.has(name) && !opts.ignore?.(name)) report.unexpected.push(name);
    const problems = report.missing.length + report.unexpected.length + report.mismatched.length;
    if (strict && problems > 0) {
      const list = (title: string, items: string[]) =>
        items.length
          ? `\n  ${title} (${items.length}): ${items.slice(0, 50).join(", ")}${
            items.length > 50 ? ", …" : ""
          }`
          : "";
      throw new Error(
        `loadStateDict: the state dict does not match the model.` +
          list("missing keys", report.missing) + list("unexpected keys", report.unexpected) +
          list("wrong shapes", report.mismatched),
      );
    }
    noGrad(() => {
      for (const [name, t] of own) {
        const src = state.get(name);
        if (!src || report.mismatched.some((m) => m.startsWith(`${name}:`))) continue;
        copyInto(t, src);
        report.loaded.push(name);
      }
    });
    return report;
  }

  /** Stops gradients to every parameter (or only those whose name matches `filter`). Returns `this`. */
  freeze(filter?: (name: string) => boolean): this {
    for (const [name, t] of this.namedParameters()) if (!filter || filter(name)) t.setRequiresGrad(false);
    return this;
  }

  /** Re-enables gradients (for every parameter, or those matching `filter`). Returns `this`. */
  unfreeze(filter?: (name: string) => boolean): this {
    for (const [name, t] of this.namedParameters()) if (!filter || filter(name)) t.setRequiresGrad(true);
    return this;
  }

  /** True in training mode. */
  get training(): boolean {
    return this.#training;
  }

  /** Sets training mode on this module and all sub-modules. Returns `this`. */
  train(on = true): this {
    for (const [, m] of this.namedModules()) m.#training = on;
    return this;
  }

  /** Sets evaluation mode. Returns `this`. */
  eval(): this {
    return this.train(false);
  }

  /** Storage precision of the parameters: "f32", or "f16" after `toPrecision("f16")`. */
  get precision(): Precision {
    return this.#precision;
  }

  /**
   * Converts every parameter in place to `precision` ("f16": half the memory; needs the adapter feature
   * `shader-f16`) and records it on this module and its sub-modules. Models whose forward supports it (the
   * U-Net) then store their activations in the same precision and compute in f32. For inference: training
   * (the optimizer) accepts f32 parameters only. Returns `this`.
   */
  toPrecision(precision: Precision): this {
    checkPrecision(precision);
    const dtype = precision === "f16" ? "float16" : "float32";
    for (const t of this.parameters()) castInPlace(t, dtype);
    for (const [, m] of this.namedModules()) m.#precision = precision;
    return this;
  }

  /** Frees every parameter's GPU memory. */
  dispose(): void {
    for (const t of this.parameters()) t.dispose();
  }
}

/** A list of sub-modules registered as "0", "1", … (PyTorch's `nn.ModuleList`). */
export class ModuleList<M extends Module> extends Module {
  /** The modules, in order. */
  readonly items: M[] = [];

  /** A list holding `items`, registered as "0", "1", …. */
  constructor(items: Iterable<M> = []) {
    super();
    for (const m of items) this.push(m);
  }

  /** Appends a module. */
  push(m: M): M {
    this.child(String(this.items.length), m);
    this.items.push(m);
    return m;
  }

  /** Number of modules. */
  get length(): number {
    return this.items.length;
  }
}
