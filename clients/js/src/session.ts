/**
 * Keeping the end user's session: where it lives and who hears when it changes.
 *
 * In a browser it lives in `localStorage` so a reload keeps the user signed in; elsewhere
 * (Node, workers) in memory, because a server process serves many users and must not
 * share one session between them. Apps with other needs (cookies, secure storage in a
 * mobile shell) pass their own `storage`.
 */

export interface User {
  id: string;
  projectId: string;
  email: string;
  emailVerified: boolean;
  provider: string;
  metadata: Record<string, unknown> | null;
  createdAt: string;
  lastSignIn: string | null;
}

export interface Session {
  token: string;
  /** ISO 8601; the session ends then unless refreshed. */
  expiresAt: string;
  user: User | null;
}

export type AuthEvent = "SIGNED_IN" | "SIGNED_OUT" | "TOKEN_REFRESHED";

/** The subset of the Web Storage API the client uses; methods may be async. */
export interface SessionStorage {
  getItem(key: string): string | null | Promise<string | null>;
  setItem(key: string, value: string): void | Promise<void>;
  removeItem(key: string): void | Promise<void>;
}

export function memoryStorage(): SessionStorage {
  const items = new Map<string, string>();
  return {
    getItem: (key) => items.get(key) ?? null,
    setItem: (key, value) => void items.set(key, value),
    removeItem: (key) => void items.delete(key),
  };
}

/** `localStorage` where it exists and works (it throws in some private modes), else memory. */
export function defaultStorage(): SessionStorage {
  try {
    const storage = (globalThis as { localStorage?: SessionStorage }).localStorage;
    if (storage) {
      const probe = "__easymode_probe__";
      storage.setItem(probe, "1");
      storage.removeItem(probe);
      return storage;
    }
  } catch {
    /* fall through to memory */
  }
  return memoryStorage();
}

export type SessionListener = (session: Session | null, event: AuthEvent) => void;

export class SessionKeeper {
  private current: Session | null = null;
  private loaded = false;
  private readonly listeners = new Set<SessionListener>();

  constructor(
    private readonly storage: SessionStorage,
    private readonly key: string,
  ) {}

  async get(): Promise<Session | null> {
    if (!this.loaded) {
      try {
        const raw = await this.storage.getItem(this.key);
        const parsed = raw ? JSON.parse(raw) : null;
        this.current = parsed && typeof parsed.token === "string" ? parsed : null;
      } catch {
        this.current = null;
      }
      this.loaded = true;
    }
    return this.current;
  }

  async set(session: Session | null, event: AuthEvent): Promise<void> {
    this.current = session;
    this.loaded = true;
    try {
      if (session) await this.storage.setItem(this.key, JSON.stringify(session));
      else await this.storage.removeItem(this.key);
    } catch {
      /* a full or unavailable storage keeps the session in memory only */
    }
    for (const listener of [...this.listeners]) {
      try {
        listener(session, event);
      } catch {
        /* one listener's bug must not stop the others */
      }
    }
  }

  onChange(listener: SessionListener): () => void {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }
}
