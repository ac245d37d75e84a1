import { clientError, type Result } from "./errors.js";
import { isBrowser, keyType } from "./env.js";
import { Http } from "./http.js";

/**
 * Background jobs (docs/jobs.md): enqueue, inspect, cancel, retry, cron schedules — with
 * a server key, from a backend. The gateway refuses public keys (403), but the client
 * refuses first, without a request, and also in a browser: a server key in page code is
 * readable by anyone. Answers are unwrapped: `get` resolves to the job itself.
 *
 * `verifyJobSignature` is for the app's receiver, which gets each job as a signed POST.
 * It is exported from `easymode-client/jobs` so a receiver needn't load the rest.
 */

export type JobStatus = "pending" | "active" | "completed" | "failed" | "delayed" | "cancelled";

export interface Job {
  id: string;
  name: string;
  payload: unknown;
  status: JobStatus;
  createdAt: string;
  runAt: string | null;
  startedAt: string | null;
  processedAt: string | null;
  finishedAt: string | null;
  attemptsMade: number;
  maxAttempts: number;
  result: unknown;
  error: string | null;
  failedReason: string | null;
}

export interface EnqueueOptions {
  /** `"30s"`, `"5m"`, `"2h"`, `"1d"` or milliseconds; at most 7 days. */
  delay?: string | number;
  runAt?: string | Date;
  timeoutMs?: number;
  maxAttempts?: number;
  concurrencyKey?: string;
  idempotencyKey?: string;
}

export interface ListOptions {
  name?: string;
  status?: JobStatus | "all";
  limit?: number;
  offset?: number;
  orderBy?: "createdAt" | "runAt" | "finishedAt";
  orderDir?: "asc" | "desc";
}

export interface Schedule {
  id: string;
  name: string;
  cron: string;
  payload: unknown;
  timezone: string;
  active: boolean;
  description: string | null;
  nextRunAt: string | null;
  lastRunAt: string | null;
  createdAt: string;
  updatedAt: string;
}

export interface ScheduleInput {
  name: string;
  cron: string;
  payload?: unknown;
  timezone?: string;
  active?: boolean;
  description?: string;
}

const BASE = "/v1/inhouse/jobs";

export class Jobs {
  readonly schedules: Schedules;

  constructor(private readonly http: Http) {
    this.schedules = new Schedules(this);
  }

  enqueue(name: string, payload: unknown, options: EnqueueOptions = {}): Promise<Result<Job>> {
    const body: Record<string, unknown> = { name, payload, ...options };
    if (options.runAt instanceof Date) body.runAt = options.runAt.toISOString();
    return this.call("POST", BASE, body, "job");
  }

  get(id: string): Promise<Result<Job>> {
    return this.call("GET", `${BASE}/${encodeURIComponent(id)}`, undefined, "job");
  }

  list(options: ListOptions = {}): Promise<Result<{ jobs: Job[]; total: number; hasMore: boolean }>> {
    return this.call("GET", BASE, undefined, null, options as Record<string, string | number | undefined>);
  }

  /** Pending or delayed jobs only (400 `VALIDATION_ERROR` otherwise). */
  cancel(id: string): Promise<Result<Job>> {
    return this.call("POST", `${BASE}/${encodeURIComponent(id)}/cancel`, {}, "job");
  }

  /** Failed jobs only: it starts over with its attempts reset. */
  retry(id: string): Promise<Result<Job>> {
    return this.call("POST", `${BASE}/${encodeURIComponent(id)}/retry`, {}, "job");
  }

  /** @internal one request, refused locally where a server key must not be. */
  async call<T>(
    method: string,
    path: string,
    body: unknown,
    unwrap: string | null,
    query?: Record<string, string | number | undefined>,
  ): Promise<Result<T>> {
    if (isBrowser()) {
      return clientError("JOBS_NOT_IN_BROWSER", "jobs need a server key, which must never be used in a browser: call them from your backend");
    }
    if (keyType(this.http.apiKey) !== "server") {
      return clientError("SERVER_KEY_REQUIRED", "jobs need a server key (sheen_sk_…); this client has a public key");
    }
    const result = await this.http.request<any>({ method, path, body, query, envelope: "ok", session: "none" });
    if (result.error || !unwrap) return result as Result<T>;
    const data = result.data && typeof result.data === "object" && unwrap in result.data ? result.data[unwrap] : result.data;
    return { ...result, data };
  }
}

export class Schedules {
  constructor(private readonly jobs: Jobs) {}

  create(input: ScheduleInput): Promise<Result<Schedule>> {
    return this.jobs.call("POST", `${BASE}/schedules`, input, "schedule");
  }

  list(): Promise<Result<Schedule[]>> {
    return this.jobs.call("GET", `${BASE}/schedules`, undefined, "schedules");
  }

  update(id: string, change: Partial<ScheduleInput>): Promise<Result<Schedule>> {
    return this.jobs.call("PATCH", `${BASE}/schedules/${encodeURIComponent(id)}`, change, "schedule");
  }

  delete(id: string): Promise<Result<unknown>> {
    return this.jobs.call("DELETE", `${BASE}/schedules/${encodeURIComponent(id)}`, undefined, null);
  }
}

// --- receiving: the signature -------------------------------------------------------------

export interface VerifyInput {
  /** The project's signing secret (`gateway jobs set-endpoint` prints it once). */
  secret: string;
  /** The request's headers: a `Headers`, or a plain object (Node's `req.headers`). */
  headers: Headers | Record<string, string | string[] | undefined>;
  /** The raw body, exactly as received (not re-serialised JSON). */
  body: string | Uint8Array | ArrayBuffer;
  /** How old (or far in the future) the timestamp may be; default 300 s. */
  toleranceSeconds?: number;
  /** For tests: the current time in Unix seconds. */
  now?: number;
}

export interface VerifyResult {
  valid: boolean;
  /** Why not: "missing-headers", "stale-timestamp", "bad-signature". */
  reason?: "missing-headers" | "stale-timestamp" | "bad-signature";
  jobId?: string;
}

/**
 * Checks `X-Sheen-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>` over
 * the exact bytes received, in constant time, and that `X-Sheen-Timestamp` is within
 * the window (a captured delivery can't be replayed later). WebCrypto, so it runs in
 * Node, Deno, workers and browsers alike; hence async.
 */
export async function verifyJobSignature(input: VerifyInput): Promise<VerifyResult> {
  const signature = header(input.headers, "x-sheen-signature");
  const timestamp = header(input.headers, "x-sheen-timestamp");
  const jobId = header(input.headers, "x-sheen-job-id") ?? undefined;
  if (!signature || !timestamp || !/^\d{1,15}$/.test(timestamp)) return { valid: false, reason: "missing-headers", jobId };
  const now = input.now ?? Math.floor(Date.now() / 1000);
  if (Math.abs(now - Number(timestamp)) > (input.toleranceSeconds ?? 300)) return { valid: false, reason: "stale-timestamp", jobId };
  const encoder = new TextEncoder();
  const body = typeof input.body === "string" ? encoder.encode(input.body) : new Uint8Array(input.body as ArrayBuffer);
  const signed = new Uint8Array(timestamp.length + 1 + body.length);
  signed.set(encoder.encode(`${timestamp}.`));
  signed.set(body, timestamp.length + 1);
  const key = await crypto.subtle.importKey("raw", encoder.encode(input.secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, signed));
  const expected = "v1=" + Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join("");
  return constantTimeEqual(expected, signature) ? { valid: true, jobId } : { valid: false, reason: "bad-signature", jobId };
}

/** Compares every character whatever the first difference, so the time taken says
 * nothing about how much of a forged signature was right. */
function constantTimeEqual(a: string, b: string): boolean {
  let diff = a.length ^ b.length;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ (i < b.length ? b.charCodeAt(i) : 0);
  return diff === 0;
}

function header(headers: VerifyInput["headers"], name: string): string | null {
  if (typeof (headers as Headers).get === "function") return (headers as Headers).get(name);
  const record = headers as Record<string, string | string[] | undefined>;
  const found = Object.keys(record).find((k) => k.toLowerCase() === name);
  const value = found === undefined ? undefined : record[found];
  return Array.isArray(value) ? (value[0] ?? null) : (value ?? null);
}
