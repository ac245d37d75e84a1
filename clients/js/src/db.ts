import { type Result } from "./errors.js";
import { Http } from "./http.js";

/**
 * The query API as a builder: `db.from(table).select(...).eq(...).order(...).execute()`.
 *
 * A builder only collects the structured query of docs/query-api.md (`toQuery()` shows
 * it); `execute()` sends it to `/query`, `db.batch([...])` sends several builders to
 * `/batch` as one transaction. With the `Database` type printed by `gateway types`, the
 * table names, columns, filter values and rows are typed, and a wrong column is a
 * compile error; without it every table is `Record<string, any>`.
 */

export type GenericRow = Record<string, any>;
export interface GenericTable {
  Row: GenericRow;
  Insert: GenericRow;
  Update: GenericRow;
}
export interface GenericDatabase {
  tables: Record<string, GenericTable>;
}
/** What `createClient()` without a type parameter uses: any table, any column. */
export interface AnyDatabase {
  tables: Record<string, GenericTable>;
}

export type FilterOp =
  | "eq" | "neq" | "gt" | "gte" | "lt" | "lte" | "like" | "ilike" | "in" | "is"
  | "contains" | "containedBy" | "overlaps";

export interface Filter {
  column: string;
  op: FilterOp;
  value?: unknown;
}

export interface Sort {
  column: string;
  direction: "asc" | "desc";
  nullsFirst?: boolean;
}

export interface Query {
  operation: "select" | "insert" | "update" | "delete";
  table: string;
  columns?: string[];
  filters?: Filter[];
  sorts?: Sort[];
  limit?: number;
  offset?: number;
  data?: unknown;
  set?: unknown;
  returning?: string[];
  maxRows?: number;
}

export interface SchemaColumn {
  name: string;
  type: string;
  nullable: boolean;
  primaryKey: boolean;
  sensitive?: boolean;
}
export interface SchemaTable {
  name: string;
  columns: SchemaColumn[];
  readable: boolean;
  writable: boolean;
  [more: string]: unknown;
}

export interface SchemaDocument {
  project_id: string;
  schema_name: string;
  table_count: number;
  tables: SchemaTable[];
}

type Col<T extends GenericTable> = keyof T["Row"] & string;

export class QueryBuilder<T extends GenericTable, R> {
  /** @internal */
  readonly query: Query;

  constructor(
    private readonly http: Http,
    query: Query,
  ) {
    this.query = query;
  }

  private with(change: Partial<Query>): this {
    const next = new (this.constructor as any)(this.http, { ...this.query, ...change });
    return next as this;
  }

  private filter(column: string, op: FilterOp, value: unknown): this {
    const item: Filter = op === "is" && value === undefined ? { column, op } : { column, op, value };
    return this.with({ filters: [...(this.query.filters ?? []), item] });
  }

  eq<C extends Col<T>>(column: C, value: T["Row"][C]) { return this.filter(column, "eq", value); }
  neq<C extends Col<T>>(column: C, value: T["Row"][C]) { return this.filter(column, "neq", value); }
  gt<C extends Col<T>>(column: C, value: T["Row"][C]) { return this.filter(column, "gt", value); }
  gte<C extends Col<T>>(column: C, value: T["Row"][C]) { return this.filter(column, "gte", value); }
  lt<C extends Col<T>>(column: C, value: T["Row"][C]) { return this.filter(column, "lt", value); }
  lte<C extends Col<T>>(column: C, value: T["Row"][C]) { return this.filter(column, "lte", value); }
  /** SQL LIKE: `%` any run of characters, `_` one character. */
  like<C extends Col<T>>(column: C, pattern: string) { return this.filter(column, "like", pattern); }
  ilike<C extends Col<T>>(column: C, pattern: string) { return this.filter(column, "ilike", pattern); }
  in<C extends Col<T>>(column: C, values: readonly T["Row"][C][]) { return this.filter(column, "in", values); }
  /** `IS NULL`, `IS TRUE`, `IS FALSE`. */
  is<C extends Col<T>>(column: C, value: null | boolean) { return this.filter(column, "is", value); }
  /** Arrays and jsonb: the column contains every element of `value`. */
  contains<C extends Col<T>>(column: C, value: T["Row"][C]) { return this.filter(column, "contains", value); }
  containedBy<C extends Col<T>>(column: C, value: T["Row"][C]) { return this.filter(column, "containedBy", value); }
  /** Arrays: the column shares at least one element with `value`. */
  overlaps<C extends Col<T>>(column: C, value: T["Row"][C]) { return this.filter(column, "overlaps", value); }

  /** Sort; ascending unless `{ ascending: false }`; NULLs last unless `nullsFirst`. */
  order(column: Col<T>, options: { ascending?: boolean; nullsFirst?: boolean } = {}) {
    const sort: Sort = { column, direction: options.ascending === false ? "desc" : "asc" };
    if (options.nullsFirst !== undefined) sort.nullsFirst = options.nullsFirst;
    return this.with({ sorts: [...(this.query.sorts ?? []), sort] });
  }

  /** At most `n` rows (the gateway's default is 100, its maximum 1,000). */
  limit(n: number) { return this.with({ limit: n }); }
  offset(n: number) { return this.with({ offset: n }); }
  /** Convenience for `offset(from).limit(to - from + 1)` (both inclusive). */
  range(from: number, to: number) { return this.with({ offset: from, limit: to - from + 1 }); }

  /** Insert, update, delete: the columns to answer with (default: every readable one). */
  returning<C extends Col<T>>(columns: C[]): QueryBuilder<T, Pick<T["Row"], C>[]> {
    return this.with({ returning: columns }) as unknown as QueryBuilder<T, Pick<T["Row"], C>[]>;
  }

  /** Update, delete: refuse (400 `ROW_LIMIT_EXCEEDED`, nothing changed) when more rows match. */
  maxRows(n: number) { return this.with({ maxRows: n }); }

  /** The structured query this builder sends. */
  toQuery(): Query {
    return structuredClone(this.query);
  }

  /** Sends it: `{ data, error, status, count }`, never throws. */
  execute(): Promise<Result<R>> {
    return this.http.request<R>({ method: "POST", path: "/v1/inhouse/db/query", body: { query: this.query }, envelope: "data", session: "auto" });
  }
}

export class TableRef<T extends GenericTable> {
  constructor(
    private readonly http: Http,
    readonly table: string,
  ) {}

  select(): QueryBuilder<T, T["Row"][]>;
  select(star: "*"): QueryBuilder<T, T["Row"][]>;
  select<C extends Col<T>>(...columns: C[]): QueryBuilder<T, Pick<T["Row"], C>[]>;
  select(...columns: string[]): QueryBuilder<T, any> {
    const query: Query = { operation: "select", table: this.table };
    if (columns.length && !(columns.length === 1 && columns[0] === "*")) query.columns = columns;
    return new QueryBuilder(this.http, query);
  }

  /** One row or an array of rows with the same keys (up to 1,000). */
  insert(data: T["Insert"] | T["Insert"][]): QueryBuilder<T, T["Row"][]> {
    return new QueryBuilder(this.http, { operation: "insert", table: this.table, data });
  }

  /** Needs at least one filter (`FILTERLESS_MUTATION` otherwise). */
  update(set: T["Update"]): QueryBuilder<T, T["Row"][]> {
    return new QueryBuilder(this.http, { operation: "update", table: this.table, set });
  }

  /** Needs at least one filter (`FILTERLESS_MUTATION` otherwise). */
  delete(): QueryBuilder<T, T["Row"][]> {
    return new QueryBuilder(this.http, { operation: "delete", table: this.table });
  }
}

export class Db<D extends GenericDatabase> {
  constructor(private readonly http: Http) {}

  from<N extends keyof D["tables"] & string>(table: N): TableRef<D["tables"][N]> {
    return new TableRef(this.http, table);
  }

  /** 1–20 queries in ONE transaction: every answer's rows in order, or the first
   * failing query's error (with `details.index`) and nothing committed. */
  batch(queries: QueryBuilder<any, any>[]): Promise<Result<unknown[]>> {
    return this.http.request<unknown[]>({
      method: "POST", path: "/v1/inhouse/db/batch", body: { queries: queries.map((q) => q.query) }, envelope: "data", session: "auto",
    });
  }

  /** The tables and columns as this key (and session) may see them. */
  schema(): Promise<Result<SchemaDocument>> {
    return this.http.request({ method: "GET", path: "/v1/inhouse/db/schema", envelope: "raw", session: "auto" });
  }
}
