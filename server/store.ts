/**
 * The job store: every job, its state and its result description in one SQLite database
 * (`<data>/jobs.db`, through `node:sqlite`). SQLite commits atomically and survives a crash at any point,
 * so after a restart the server knows which results exist and which jobs still have to run.
 *
 * @module
 */

import { DatabaseSync, type StatementSync } from "node:sqlite";
import type { JobResult, SampleRequest } from "./protocol.ts";

/** Where a job is in its life. */
export type JobStatus = "queued" | "running" | "done" | "failed" | "cancelled";

/** States a job never leaves. */
export const FINAL_STATES: readonly JobStatus[] = ["done", "failed", "cancelled"];

/** A job as stored. Times are ISO 8601 strings. */
export interface Job {
  /** Unique id (a UUID). */
  id: string;
  /** Current state. */
  status: JobStatus;
  /** Fraction of the sampling steps done, 0..1. */
  progress: number;
  /** When the job was submitted. */
  createdAt: string;
  /** When it last started running. */
  startedAt?: string;
  /** When it reached a final state. */
  finishedAt?: string;
  /** Why it failed (or was cancelled). */
  error?: string;
  /** The request with every default filled in. */
  request: SampleRequest;
  /** What it produced, once done. */
  result?: JobResult;
}

interface Row {
  id: string;
  status: string;
  progress: number;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  error: string | null;
  request: string;
  result: string | null;
}

function fromRow(row: Row): Job {
  const job: Job = {
    id: row.id,
    status: row.status as JobStatus,
    progress: row.progress,
    createdAt: row.created_at,
    request: JSON.parse(row.request),
  };
  if (row.started_at) job.startedAt = row.started_at;
  if (row.finished_at) job.finishedAt = row.finished_at;
  if (row.error) job.error = row.error;
  if (row.result) job.result = JSON.parse(row.result);
  return job;
}

/** Jobs in SQLite. All calls are synchronous and each one is its own transaction. */
export class JobStore {
  readonly #db: DatabaseSync;
  readonly #insert: StatementSync;
  readonly #update: StatementSync;
  readonly #get: StatementSync;

  /** Opens (or creates) the store at `path`. */
  constructor(path: string) {
    this.#db = new DatabaseSync(path);
    try {
      // One server per data directory: the exclusive lock is held until close (or the process dies).
      this.#db.exec("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; COMMIT;");
    } catch (error) {
      this.#db.close();
      throw new Error(`${path} is in use by another voxgen server (${(error as Error).message}).`);
    }
    // WAL: a crash never leaves a half-written transaction; NORMAL sync is still crash-safe in WAL mode.
    this.#db.exec(`
      PRAGMA journal_mode = WAL;
      PRAGMA synchronous = NORMAL;
      CREATE TABLE IF NOT EXISTS jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        progress REAL NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        error TEXT,
        request TEXT NOT NULL,
        result TEXT
      );
      CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
    `);
    this.#insert = this.#db.prepare(
      "INSERT INTO jobs (id, status, progress, created_at, request) VALUES (?, ?, ?, ?, ?)",
    );
    this.#update = this.#db.prepare(`
      UPDATE jobs SET status = ?, progress = ?, started_at = ?, finished_at = ?, error = ?, result = ?
      WHERE id = ?`);
    this.#get = this.#db.prepare("SELECT * FROM jobs WHERE id = ?");
  }

  /** Adds a new job. */
  insert(job: Job): void {
    this.#insert.run(job.id, job.status, job.progress, job.createdAt, JSON.stringify(job.request));
  }

  /** Writes a job's mutable fields. */
  save(job: Job): void {
    this.#update.run(
      job.status,
      job.progress,
      job.startedAt ?? null,
      job.finishedAt ?? null,
      job.error ?? null,
      job.result ? JSON.stringify(job.result) : null,
      job.id,
    );
  }

  /** The job `id`, or undefined. */
  get(id: string): Job | undefined {
    const row = this.#get.get(id) as Row | undefined;
    return row ? fromRow(row) : undefined;
  }

  /** The most recent jobs first, optionally only those in `status`. */
  list(limit: number, status?: JobStatus): Job[] {
    const rows = status
      ? this.#db.prepare("SELECT * FROM jobs WHERE status = ? ORDER BY seq DESC LIMIT ?").all(status, limit)
      : this.#db.prepare("SELECT * FROM jobs ORDER BY seq DESC LIMIT ?").all(limit);
    return (rows as unknown as Row[]).map(fromRow);
  }

  /**
   * Jobs that still have to run, oldest first. A job found "running" was interrupted by a crash or a
   * shutdown: it goes back to "queued" and runs again from the start.
   */
  unfinished(): Job[] {
    this.#db.exec(
      "UPDATE jobs SET status = 'queued', progress = 0, started_at = NULL WHERE status = 'running'",
    );
    const rows = this.#db.prepare("SELECT * FROM jobs WHERE status = 'queued' ORDER BY seq").all();
    return (rows as unknown as Row[]).map(fromRow);
  }

  /** Closes the database. */
  close(): void {
    if (this.#db.isOpen) this.#db.close();
  }
}
