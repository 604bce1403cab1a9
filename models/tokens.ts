/**
 * The token table: voxgen's stand-in for a text encoder (de Wilde et al.'s textual
 * inversion, mapped onto a MONAI U-Net). A learned table of rows — `<bos>`, `<pad>`, then a few rows per concept (`<t1>`, …) —
 * turns a sub-prompt into a cross-attention context of fixed length, as Stable Diffusion's 77 slots:
 * `[<bos>, rows of each token…, <pad>…]`. The empty prompt gives `[<bos>, <pad>…]`, the null context that
 * classifier-free guidance compares against.
 *
 * Textual-inversion concepts are extra tensors added with {@linkcode TokenTable.addConcept}: they are not
 * part of the table's weight, so the base model's weights stay untouched while they train.
 *
 * @module
 */

import { scope } from "../engine/memory.ts";
import { concat, reshape } from "../engine/ops/view.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { Embedding } from "../nn/embedding.ts";

/** The beginning-of-context token (first row). */
export const BOS = "<bos>";
/** The padding token (second row; fills the context). */
export const PAD = "<pad>";

/** What a model file records about its token table (the weight holds the rows). */
export interface TokenVocabulary {
  /** Tokens per context (L): every context is [1, L, dim]. */
  contextLength: number;
  /** Width of a row (the U-Net's crossAttentionDim). */
  dim: number;
  /** The concepts, in row order after `<bos>` and `<pad>`, with their number of rows. */
  concepts: Array<{ name: string; vectors: number }>;
}

const NAME = /^<[^<>\s]+>$/;

/** Checks a vocabulary (from a file or a user) and returns its total number of rows. */
export function vocabularyRows(v: TokenVocabulary): number {
  if (!Number.isInteger(v.contextLength) || v.contextLength < 2) {
    throw new Error(`token table: contextLength ${v.contextLength} must be an integer ≥ 2.`);
  }
  if (!Number.isInteger(v.dim) || v.dim < 1) throw new Error(`token table: dim ${v.dim} must be ≥ 1.`);
  const seen = new Set([BOS, PAD]);
  let rows = 2;
  for (const { name, vectors } of v.concepts) {
    checkConceptName(name);
    if (seen.has(name)) throw new Error(`token table: "${name}" is listed twice.`);
    seen.add(name);
    if (!Number.isInteger(vectors) || vectors < 1 || vectors > v.contextLength - 1) {
      throw new Error(
        `token table: "${name}" has ${vectors} vectors; 1..${v.contextLength - 1} fit a context.`,
      );
    }
    rows += vectors;
  }
  return rows;
}

/** Throws unless `name` is written `<name>` and is not `<bos>` or `<pad>`. */
export function checkConceptName(name: string): void {
  if (!NAME.test(name) || name === BOS || name === PAD) {
    throw new Error(
      `"${name}" is not a usable concept name: write it in angle brackets, e.g. <flair> (not <bos>/<pad>).`,
    );
  }
}

/** A learned token table (state-dict key `weight`, stored in model files as `token_embedding.weight`). */
export class TokenTable extends Embedding {
  /** The vocabulary (base concepts only; added ones are in {@linkcode TokenTable.concepts}). */
  readonly vocabulary: TokenVocabulary;
  readonly #rows = new Map<string, number>();
  readonly #added = new Map<string, Tensor>();

  /** A table for `vocabulary`, rows drawn from N(0, 1) with `seed`. */
  constructor(vocabulary: TokenVocabulary, opts: { seed?: number } = {}) {
    super(vocabularyRows(vocabulary), vocabulary.dim, opts);
    this.vocabulary = structuredClone(vocabulary);
    let row = 2;
    for (const { name, vectors } of vocabulary.concepts) {
      this.#rows.set(name, row);
      row += vectors;
    }
  }

  /** Tokens per context. */
  get contextLength(): number {
    return this.vocabulary.contextLength;
  }

  /** Every concept a prompt may use: the base ones, then the added ones, with their vector counts. */
  concepts(): Array<{ name: string; vectors: number; added: boolean }> {
    return [
      ...this.vocabulary.concepts.map((c) => ({ ...c, added: false })),
      ...[...this.#added].map(([name, t]) => ({ name, vectors: t.shape[0], added: true })),
    ];
  }

  /**
   * Adds a concept whose rows are `vectors` [n, dim] (e.g. a textual-inversion embedding). The table keeps
   * a reference, not a copy: the caller owns the tensor (and may train it).
   */
  addConcept(name: string, vectors: Tensor): void {
    checkConceptName(name);
    if (this.#rows.has(name) || this.#added.has(name)) {
      throw new Error(`token table: the model already has a concept "${name}"; choose another name.`);
    }
    if (vectors.rank !== 2 || vectors.shape[1] !== this.dim || vectors.shape[0] > this.contextLength - 1) {
      throw new Error(
        `token table: "${name}" vectors ${formatShape(vectors.shape)} must be [n, ${this.dim}] with n ≤ ` +
          `${this.contextLength - 1}.`,
      );
    }
    this.#added.set(name, vectors);
  }

  /** Removes an added concept (its tensor is not disposed). */
  removeConcept(name: string): void {
    this.#added.delete(name);
  }

  /** Throws, listing the known concepts, unless every token is one. */
  checkTokens(tokens: readonly string[]): void {
    const unknown = tokens.filter((t) => !this.#rows.has(t) && !this.#added.has(t));
    if (unknown.length > 0) {
      throw new UnknownTokenError(unknown, this.concepts().map((c) => c.name));
    }
  }

  /**
   * The context [1, contextLength, dim] of a sub-prompt's tokens: `<bos>`, each token's rows, then
   * `<pad>` rows. No tokens gives the null context. Differentiable in the table and in added concepts.
   */
  encode(tokens: readonly string[]): Tensor {
    this.checkTokens(tokens);
    return scope(() => this.#encode(tokens));
  }

  #encode(tokens: readonly string[]): Tensor {
    const L = this.contextLength;
    // Runs of table rows are gathered with one lookup each; added concepts are spliced in between.
    const pieces: Tensor[] = [];
    let rows: number[] = [0];
    let used = 1;
    const flush = () => {
      if (rows.length > 0) pieces.push(this.forward(rows));
      rows = [];
    };
    for (const token of tokens) {
      const added = this.#added.get(token);
      const n = added ? added.shape[0] : this.#vectors(token);
      if (used + n > L) {
        throw new Error(
          `the prompt's tokens ${tokens.join(" ")} need ${used + n - 1}+ rows; a context holds ${L - 1}.`,
        );
      }
      if (added) {
        flush();
        pieces.push(added);
      } else {
        const first = this.#rows.get(token)!;
        for (let i = 0; i < n; i++) rows.push(first + i);
      }
      used += n;
    }
    for (; used < L; used++) rows.push(1);
    flush();
    const context = pieces.length === 1 ? pieces[0] : concat(pieces, 0);
    return reshape(context, [1, L, this.dim]);
  }

  #vectors(token: string): number {
    return this.vocabulary.concepts.find((c) => c.name === token)!.vectors;
  }
}

/** A prompt used a token the model does not know; `known` lists the ones it does. */
export class UnknownTokenError extends Error {
  /** The unknown tokens. */
  readonly unknown: string[];
  /** The tokens the model knows. */
  readonly known: string[];

  /** An error naming `unknown` and listing `known`. */
  constructor(unknown: string[], known: string[]) {
    super(
      `unknown token${unknown.length > 1 ? "s" : ""} ${unknown.join(", ")}; the model knows ${
        known.length ? known.join(", ") : "no concepts"
      } (and "" for the null prompt).`,
    );
    this.name = "UnknownTokenError";
    this.unknown = unknown;
    this.known = known;
  }
}
