/**
 * Prompts: `"<t1>"`, `"<t1> <lesion>"` (several tokens in one context), and composable prompts
 * `"<t1>:0.25 AND <flair>:0.75"` in AUTOMATIC1111's syntax — sub-prompts joined by `AND`, each with an
 * optional `:weight` (default 1, negative allowed) that multiplies the guidance scale. `""` (or only
 * spaces) is the null prompt, the unconditional context.
 *
 * @module
 */

/** One sub-prompt: its tokens (in order) and its weight. */
export interface PromptPart {
  /** Tokens, each written `<name>`. */
  tokens: string[];
  /** Weight of this sub-prompt (multiplies the guidance scale). */
  weight: number;
}

const WEIGHT = /^(.*?)\s*:\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)$/i;
const TOKEN = /<[^<>\s]+>/g;

/** Parses a prompt into its weighted sub-prompts (none for the null prompt); throws on bad syntax. */
export function parsePrompt(prompt: string): PromptPart[] {
  if (prompt.trim() === "") return [];
  const parts: PromptPart[] = [];
  for (const raw of prompt.split(/\s+AND\s+/)) {
    const text = raw.trim();
    const weighted = WEIGHT.exec(text);
    const body = (weighted ? weighted[1] : text).trim();
    const weight = weighted ? Number(weighted[2]) : 1;
    if (body === "") {
      throw new Error(
        `prompt "${prompt}": a sub-prompt has no token; write e.g. "<t1>", or "<t1>:0.25 AND <flair>:0.75".`,
      );
    }
    const tokens = body.match(TOKEN) ?? [];
    const rest = body.replace(TOKEN, " ").trim();
    if (rest !== "") {
      throw new Error(
        `prompt "${prompt}": "${rest}" is not a token; tokens are names in angle brackets, e.g. <t1>, ` +
          "separated by spaces; sub-prompts are joined by AND and may end in :weight.",
      );
    }
    parts.push({ tokens, weight });
  }
  return parts;
}
