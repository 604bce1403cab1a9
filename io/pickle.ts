/**
 * A restricted reader of Python pickles (protocols 0–5, binary opcodes): it builds plain values — `null`,
 * booleans, numbers (`bigint` beyond 2^53), strings, bytes, arrays (lists and frozen arrays for tuples),
 * `Map`s for dicts — and resolves globals only through a table the caller supplies. Any other global is
 * refused with an error naming it; nothing in the pickle is ever executed, since the only "code" that can
 * run is the caller's own functions for the globals it allows.
 *
 * @module
 */

/**
 * What a global may stand for: a function called by REDUCE / NEWOBJ with the pickled arguments, or any
 * other value (e.g. a marker for a class that is only passed around, like a storage type).
 */
export type PickleGlobal = ((args: unknown[]) => unknown) | Record<string, unknown>;

/** Options of {@linkcode unpickle}. */
export interface UnpickleOptions {
  /** The globals the pickle may use, by `"module.name"`; every other global is refused. */
  globals: Readonly<Record<string, PickleGlobal>>;
  /** Turns a persistent id (PERSID / BINPERSID) into a value; without it persistent ids are refused. */
  persistentLoad?: (pid: unknown) => unknown;
  /** Names the data in errors (e.g. the file path). */
  source?: string;
}

/** A pickle refused because it names a global outside the allowed table. */
export class RefusedGlobalError extends Error {
  /** The refused global, `"module.name"`. */
  readonly global: string;
  /** The error for the refused `global`, with the full `message`. */
  constructor(global: string, message: string) {
    super(message);
    this.name = "RefusedGlobalError";
    this.global = global;
  }
}

/** Names of the opcodes refused (for the error message). */
const REFUSED: Record<number, string> = {
  0x53: "STRING",
  0x56: "UNICODE",
  0x69: "INST",
  0x6f: "OBJ",
  0x82: "EXT1",
  0x83: "EXT2",
  0x84: "EXT4",
  0x8f: "EMPTY_SET",
  0x90: "ADDITEMS",
  0x91: "FROZENSET",
  0x92: "NEWOBJ_EX",
  0x96: "BYTEARRAY8",
  0x97: "NEXT_BUFFER",
  0x98: "READONLY_BUFFER",
};

/** The result of {@linkcode unpickle}: the value and the offset just after its STOP opcode. */
export interface Unpickled {
  /** The unpickled value. */
  value: unknown;
  /** Offset of the byte after STOP (where a following pickle starts). */
  end: number;
}

/** Reads one pickle from `bytes` starting at `offset`. */
export function unpickle(bytes: Uint8Array, opts: UnpickleOptions, offset = 0): Unpickled {
  const source = opts.source ?? "<bytes>";
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fail = (message: string): never => {
    throw new Error(`pickle ${source}: ${message}`);
  };
  let at = offset;
  const need = (n: number) => {
    if (at + n > bytes.byteLength) fail(`truncated at byte ${at} (needs ${n} more bytes).`);
    const start = at;
    at += n;
    return start;
  };
  const line = () => {
    const nl = bytes.indexOf(0x0a, at);
    if (nl < 0) fail(`truncated at byte ${at} (a text argument has no end of line).`);
    const text = new TextDecoder().decode(bytes.subarray(at, nl));
    at = nl + 1;
    return text;
  };
  const utf8 = (n: number) => new TextDecoder().decode(bytes.subarray(need(n), at));
  const stack: unknown[] = [];
  const marks: number[] = [];
  const memo = new Map<number, unknown>();
  const pop = () => (stack.length === 0 ? fail(`stack underflow at byte ${at - 1}.`) : stack.pop());
  const top =
    () => (stack.length === 0 ? fail(`stack underflow at byte ${at - 1}.`) : stack[stack.length - 1]);
  const popMark = () => {
    const m = marks.pop();
    if (m === undefined) fail(`an opcode at byte ${at - 1} needs a MARK that is not there.`);
    return stack.splice(m!);
  };
  const tuple = (items: unknown[]) => Object.freeze(items);
  const resolve = (module: string, name: string): unknown => {
    const key = `${module}.${name}`;
    if (!Object.hasOwn(opts.globals, key)) {
      throw new RefusedGlobalError(
        key,
        `pickle ${source}: refuses the global ${key} (at byte ${at}): only ${
          Object.keys(opts.globals).join(", ")
        } may appear. Nothing was executed; a file like this can run code when Python unpickles it.`,
      );
    }
    return opts.globals[key];
  };
  const call = (f: unknown, args: unknown, opcode: string): unknown => {
    if (typeof f !== "function") {
      fail(`${opcode} at byte ${at - 1} calls something that is not callable here.`);
    }
    if (!Array.isArray(args)) fail(`${opcode} at byte ${at - 1} has arguments that are not a tuple.`);
    return (f as (args: unknown[]) => unknown)(args as unknown[]);
  };
  const asMap = (d: unknown, opcode: string) =>
    d instanceof Map ? d : fail(`${opcode} at byte ${at - 1} targets something that is not a dict.`);
  const asList = (l: unknown, opcode: string) =>
    Array.isArray(l) && !Object.isFrozen(l)
      ? l
      : fail(`${opcode} at byte ${at - 1} targets something that is not a list.`);
  const int = (n: bigint) => (n >= -(2n ** 53n) && n <= 2n ** 53n ? Number(n) : n);
  const littleSigned = (start: number, n: number) => {
    let v = 0n;
    for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[start + i]);
    if (n > 0 && bytes[start + n - 1] & 0x80) v -= 1n << BigInt(8 * n);
    return int(v);
  };
  const persistent = (pid: unknown) =>
    opts.persistentLoad
      ? opts.persistentLoad(pid)
      : fail(`a persistent id at byte ${at - 1} was found, but this data may not hold any.`);

  for (;;) {
    const op = bytes[need(1)];
    switch (op) {
      case 0x80: // PROTO
        if (bytes[need(1)] > 5) fail(`pickle protocol ${bytes[at - 1]} is newer than 5.`);
        break;
      case 0x95: // FRAME: only a length prefix; the data follows inline
        need(8);
        break;
      case 0x2e: // STOP
        if (stack.length !== 1 || marks.length) {
          fail(`STOP at byte ${at - 1} with ${stack.length} values left.`);
        }
        return { value: stack[0], end: at };
      case 0x28:
        marks.push(stack.length);
        break;
      case 0x30:
        pop();
        break;
      case 0x31:
        popMark();
        break;
      case 0x32:
        stack.push(top());
        break;
      case 0x4e:
        stack.push(null);
        break;
      case 0x88:
        stack.push(true);
        break;
      case 0x89:
        stack.push(false);
        break;
      case 0x4a:
        stack.push(view.getInt32(need(4), true));
        break;
      case 0x4b:
        stack.push(bytes[need(1)]);
        break;
      case 0x4d:
        stack.push(view.getUint16(need(2), true));
        break;
      case 0x8a: {
        const n = bytes[need(1)];
        stack.push(littleSigned(need(n), n));
        break;
      }
      case 0x8b: {
        const n = view.getInt32(need(4), true);
        if (n < 0) fail(`LONG4 with a negative length at byte ${at - 5}.`);
        stack.push(littleSigned(need(n), n));
        break;
      }
      case 0x49: { // INT (text; "01"/"00" are protocol 0's booleans)
        const text = line();
        stack.push(text === "01" ? true : text === "00" ? false : int(BigInt(text)));
        break;
      }
      case 0x4c: // LONG (text)
        stack.push(int(BigInt(line().replace(/L$/, ""))));
        break;
      case 0x46: // FLOAT (text)
        stack.push(Number(line()));
        break;
      case 0x47:
        stack.push(view.getFloat64(need(8), false)); // big-endian, unlike every other number
        break;
      case 0x58:
        stack.push(utf8(view.getUint32(need(4), true)));
        break;
      case 0x8c:
        stack.push(utf8(bytes[need(1)]));
        break;
      case 0x8d: {
        const n = view.getBigUint64(need(8), true);
        stack.push(utf8(Number(n)));
        break;
      }
      case 0x55: // SHORT_BINSTRING / BINSTRING: Python 2 str, read as latin-1
      case 0x54: {
        const n = op === 0x55 ? bytes[need(1)] : view.getInt32(need(4), true);
        stack.push(String.fromCharCode(...bytes.subarray(need(n), at)));
        break;
      }
      case 0x43:
        stack.push(bytes.slice(need(bytes[need(1)]), at));
        break;
      case 0x42: {
        const n = view.getUint32(need(4), true);
        stack.push(bytes.slice(need(n), at));
        break;
      }
      case 0x8e: {
        const n = Number(view.getBigUint64(need(8), true));
        stack.push(bytes.slice(need(n), at));
        break;
      }
      case 0x29:
        stack.push(tuple([]));
        break;
      case 0x74:
        stack.push(tuple(popMark()));
        break;
      case 0x85:
        stack.push(tuple([pop()]));
        break;
      case 0x86: {
        const b = pop();
        stack.push(tuple([pop(), b]));
        break;
      }
      case 0x87: {
        const c = pop();
        const b = pop();
        stack.push(tuple([pop(), b, c]));
        break;
      }
      case 0x5d:
        stack.push([]);
        break;
      case 0x6c:
        stack.push(popMark());
        break;
      case 0x61: {
        const v = pop();
        asList(top(), "APPEND").push(v);
        break;
      }
      case 0x65: {
        const items = popMark();
        asList(top(), "APPENDS").push(...items);
        break;
      }
      case 0x7d:
        stack.push(new Map());
        break;
      case 0x64: {
        const items = popMark();
        const d = new Map();
        for (let i = 0; i + 1 < items.length; i += 2) d.set(items[i], items[i + 1]);
        stack.push(d);
        break;
      }
      case 0x73: {
        const v = pop();
        const k = pop();
        asMap(top(), "SETITEM").set(k, v);
        break;
      }
      case 0x75: {
        const items = popMark();
        const d = asMap(top(), "SETITEMS");
        for (let i = 0; i + 1 < items.length; i += 2) d.set(items[i], items[i + 1]);
        break;
      }
      case 0x70:
        memo.set(Number(line()), top());
        break;
      case 0x71:
        memo.set(bytes[need(1)], top());
        break;
      case 0x72:
        memo.set(view.getUint32(need(4), true), top());
        break;
      case 0x94:
        memo.set(memo.size, top());
        break;
      case 0x67:
      case 0x68:
      case 0x6a: {
        const key = op === 0x67
          ? Number(line())
          : op === 0x68
          ? bytes[need(1)]
          : view.getUint32(need(4), true);
        if (!memo.has(key)) fail(`memo entry ${key} read at byte ${at} was never stored.`);
        stack.push(memo.get(key));
        break;
      }
      case 0x63: {
        const module = line();
        stack.push(resolve(module, line()));
        break;
      }
      case 0x93: {
        const name = pop();
        const module = pop();
        if (typeof module !== "string" || typeof name !== "string") {
          fail(`STACK_GLOBAL at byte ${at - 1} with a module or name that is not a string.`);
        }
        stack.push(resolve(module as string, name as string));
        break;
      }
      case 0x52: {
        const args = pop();
        stack.push(call(pop(), args, "REDUCE"));
        break;
      }
      case 0x81: {
        const args = pop();
        stack.push(call(pop(), args, "NEWOBJ"));
        break;
      }
      case 0x62: { // BUILD: only a dict's instance attributes (an OrderedDict's `_metadata`) are accepted
        const state = pop();
        if (!(top() instanceof Map) || !(state instanceof Map || state === null)) {
          fail(`BUILD at byte ${at - 1} sets the state of an object; only dicts may carry attributes here.`);
        }
        break;
      }
      case 0x50:
        stack.push(persistent(line()));
        break;
      case 0x51:
        stack.push(persistent(pop()));
        break;
      default:
        fail(
          `opcode ${REFUSED[op] ?? `0x${op.toString(16).padStart(2, "0")}`} at byte ${
            at - 1
          } is not accepted ` +
            "(objects, sets, extensions and out-of-band buffers are refused).",
        );
    }
  }
}
