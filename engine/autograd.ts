/**
 * Reverse-mode automatic differentiation.
 *
 * Each differentiable op that sees an input requiring gradients records a {@linkcode GradNode} on its
 * output: the inputs' ids and nodes, the tensors its backward needs (held by reference, so disposing the
 * user's tensors does not break backward), and a backward function written in terms of other ops — so
 * gradients are computed on the GPU. Nodes are reference counted: disposing the last tensor that can reach
 * a node frees the tensors it saved. `grad` walks the nodes reachable from `y` in reverse creation order.
 *
 * @module
 */

import { Tensor } from "./tensor.ts";
// These imports are cyclic (the ops record nodes here); that is safe because neither side uses the
// other at module load time.
import { onesLike, zerosLike } from "./ops/create.ts";
import { add } from "./ops/elementwise.ts";
import { formatShape } from "./shape.ts";

/** Backward of one op: the gradient of each input (null when that input needs none). */
export type Backward = (
  gradOutput: Tensor,
  saved: readonly Tensor[],
  needs: readonly boolean[],
) => Array<Tensor | null>;

/** An input of a recorded op: where its gradient goes. */
export interface Parent {
  /** Id of the input tensor. */
  id: number;
  /** The input's own record (null for leaves). */
  node: GradNode | null;
  /** Whether the input wants a gradient. */
  requiresGrad: boolean;
}

let nextSeq = 1;
let gradMode = true;

/** The autograd record of one op application. */
export class GradNode {
  /** Creation order; a node's inputs always have smaller numbers. */
  readonly seq: number = nextSeq++;
  /** Id of the output tensor this node produced. */
  outputId = 0;
  #refs = 0;

  /** Records one op application (engine internal: ops call `record`). */
  constructor(
    /** Name of the op, for error messages. */
    readonly op: string,
    /** The inputs: who to route gradients to. */
    readonly parents: readonly Parent[],
    /** Tensors the backward reads. */
    readonly saved: readonly Tensor[],
    /** Computes input gradients from the output gradient. */
    readonly backward: Backward,
  ) {
    for (const p of parents) p.node?.retain();
  }

  /** Adds a reference (an output tensor or a child node). */
  retain(): void {
    this.#refs++;
  }

  /** Drops a reference; at zero the saved tensors are freed and parents released, iteratively. */
  release(): void {
    if (--this.#refs > 0) return;
    const stack: GradNode[] = [this];
    while (stack.length > 0) {
      const node = stack.pop()!;
      for (const t of node.saved) t.dispose();
      for (const p of node.parents) {
        if (p.node && --p.node.#refs === 0) stack.push(p.node);
      }
    }
  }
}

/** True when ops should record autograd nodes. */
export function isGradEnabled(): boolean {
  return gradMode;
}

/**
 * Runs `fn` recording autograd nodes even inside `noGrad` or a backward pass (gradient checkpointing
 * recomputes a block with it).
 */
export function enableGrad<T>(fn: () => T): T {
  const previous = gradMode;
  gradMode = true;
  try {
    return fn();
  } finally {
    gradMode = previous;
  }
}

/** Runs `fn` without recording autograd nodes (sampling, optimizer updates, metrics). */
export function noGrad<T>(fn: () => T): T {
  const previous = gradMode;
  gradMode = false;
  try {
    return fn();
  } finally {
    gradMode = previous;
  }
}

/** True when recording is on and some input requires gradients. */
export function needsGrad(inputs: readonly Tensor[]): boolean {
  return gradMode && inputs.some((t) => t.requiresGrad);
}

/**
 * Attaches an autograd node to the freshly created `output` when any input requires gradients.
 * `save` lists tensors (inputs or the output) the backward needs; they are kept alive by the node.
 * Returns `output`, or a re-created handle flagged `requiresGrad`.
 */
export function record(
  op: string,
  output: Tensor,
  inputs: readonly Tensor[],
  backward: Backward,
  save: readonly Tensor[] = [],
): Tensor {
  if (!needsGrad(inputs)) return output;
  const parents = inputs.map((t) => ({ id: t.id, node: t.node, requiresGrad: t.requiresGrad }));
  const node = new GradNode(op, parents, save.map((t) => t.saveForBackward()), backward);
  const storage = output.storage(op);
  storage.retain();
  const result = new Tensor({
    shape: output.shape,
    strides: output.strides,
    offset: output.offset,
    dtype: output.dtype,
    storage,
    requiresGrad: true,
    node,
  });
  node.outputId = result.id;
  output.dispose();
  return result;
}

/** Options of {@linkcode grad}. */
export interface GradOptions {
  /** Return zeros for tensors `y` does not depend on instead of throwing. */
  allowUnused?: boolean;
}

/**
 * Gradients of the scalar `y` with respect to each tensor in `wrt`, computed by reverse-mode autograd on
 * the GPU. The returned tensors are new; dispose them (or run inside `scope`).
 */
export function grad(y: Tensor, wrt: readonly Tensor[], options: GradOptions = {}): Tensor[] {
  if (!(y instanceof Tensor)) throw new Error("grad(y, wrt): y must be a Tensor.");
  y.storage("grad");
  if (y.size !== 1) {
    throw new Error(
      `grad(y, wrt): y must be a scalar (one element) but has shape ${formatShape(y.shape)}; ` +
        "reduce it first, e.g. with sum() or mean().",
    );
  }
  if (!Array.isArray(wrt)) throw new Error("grad(y, wrt): wrt must be an array of tensors.");
  for (const t of wrt) t.storage("grad");
  if (!y.requiresGrad) {
    throw new Error(
      "grad(y, wrt): y does not require gradients — no input was created with { requiresGrad: true }, " +
        "or it was computed inside noGrad().",
    );
  }
  return noGrad(() => backpropagate(y, wrt, options));
}

function backpropagate(y: Tensor, wrt: readonly Tensor[], options: GradOptions): Tensor[] {
  const wanted = new Set(wrt.map((t) => t.id));
  // Collect the nodes reachable from y.
  const nodes: GradNode[] = [];
  const seen = new Set<GradNode>();
  const stack: GradNode[] = y.node ? [y.node] : [];
  while (stack.length > 0) {
    const node = stack.pop()!;
    if (seen.has(node)) continue;
    seen.add(node);
    nodes.push(node);
    for (const p of node.parents) if (p.node && !seen.has(p.node)) stack.push(p.node);
  }
  nodes.sort((a, b) => b.seq - a.seq);

  const grads = new Map<number, Tensor>();
  grads.set(y.id, onesLike(y));
  for (const node of nodes) {
    const g = grads.get(node.outputId);
    if (!g) continue;
    const inputGrads = node.backward(g, node.saved, node.parents.map((p) => p.requiresGrad));
    if (!wanted.has(node.outputId)) {
      grads.delete(node.outputId);
      g.dispose();
    }
    node.parents.forEach((p, i) => {
      const gi = inputGrads[i];
      if (!gi) return;
      if (!p.requiresGrad) {
        gi.dispose();
        return;
      }
      const previous = grads.get(p.id);
      if (previous) {
        grads.set(p.id, add(previous, gi));
        previous.dispose();
        gi.dispose();
      } else {
        grads.set(p.id, gi);
      }
    });
  }
  const result = wrt.map((t, i) => {
    const g = grads.get(t.id);
    if (g) {
      grads.delete(t.id);
      return g;
    }
    if (!options.allowUnused) {
      for (const left of grads.values()) left.dispose();
      throw new Error(
        `grad(y, wrt): y does not depend on wrt[${i}] (${t}). Pass { allowUnused: true } to get zeros instead.`,
      );
    }
    return zerosLike(t);
  });
  for (const left of grads.values()) left.dispose();
  return result;
}
