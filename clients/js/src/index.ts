import { Auth, type AuthOptions } from "./auth.js";
import { type AnyDatabase, Db, type GenericDatabase } from "./db.js";
import { EasyModeConfigError } from "./errors.js";
import { isBrowser, keyType } from "./env.js";
import { Http } from "./http.js";
import { Jobs } from "./jobs.js";
import { Realtime } from "./realtime.js";
import { defaultStorage, SessionKeeper, type SessionStorage } from "./session.js";

/**
 * `createClient({ url, apiKey })`: the gateway's data, auth, realtime and jobs APIs in
 * one object. Every call resolves to `{ data, error, status }` and never throws.
 */

export interface ClientOptions extends AuthOptions {
  /** The gateway's origin, e.g. `http://127.0.0.1:8080`. */
  url: string;
  /** A public key (`sheen_pk_…`, browsers and apps) or a server key (`sheen_sk_…`,
   * backends only). */
  apiKey: string;
  /** Where the session is kept (default: localStorage in browsers, memory elsewhere). */
  storage?: SessionStorage;
  /** The storage entry's name (default `easymode.session`). */
  storageKey?: string;
  /** Retry a 429 or 503 this many times after `Retry-After` (default 0: the caller
   * decides, with `error.retryAfter`). */
  maxRetries?: number;
  /** A `fetch` to use instead of the global one. */
  fetch?: typeof fetch;
  /** Extra headers on every request. */
  headers?: Record<string, string>;
}

export interface EasyModeClient<D extends GenericDatabase = AnyDatabase> {
  db: Db<D>;
  auth: Auth;
  realtime: Realtime<D>;
  jobs: Jobs;
}

export function createClient<D extends GenericDatabase = AnyDatabase>(options: ClientOptions): EasyModeClient<D> {
  const type = keyType(options.apiKey ?? "");
  if (isBrowser() && (type === "server" || type === "admin")) {
    throw new EasyModeConfigError(
      "SERVER_KEY_IN_BROWSER",
      "a server key must never be used in a browser (anyone can read it from the page): use the project's public key (sheen_pk_…) here, and the server key only in your backend",
    );
  }
  const http = new Http(options);
  const keeper = new SessionKeeper(options.storage ?? defaultStorage(), options.storageKey ?? "easymode.session");
  return {
    db: new Db<D>(http),
    auth: new Auth(http, keeper, options),
    realtime: new Realtime<D>(http, keeper),
    jobs: new Jobs(http),
  };
}

export { EasyModeConfigError } from "./errors.js";
export type { EasyModeError, Result } from "./errors.js";
export type { AnyDatabase, Filter, FilterOp, GenericDatabase, GenericTable, Query, QueryBuilder, SchemaDocument, SchemaTable, TableRef } from "./db.js";
export type { Auth, AuthEvent } from "./auth.js";
export { memoryStorage } from "./session.js";
export type { Session, SessionStorage, User } from "./session.js";
export type { RealtimeEvent, RealtimeStatus, SubscribeOptions, Subscription } from "./realtime.js";
export type { EnqueueOptions, Job, JobStatus, ListOptions, Schedule, ScheduleInput } from "./jobs.js";
export { verifyJobSignature } from "./jobs.js";
