-- Row-level security of an owner table: PostgreSQL enforcing on its own the rule the
-- compiler already applies, so a compiler bug can't leak another user's rows
-- (docs/auth.md). A template, not a function: gateway/control/rowpolicy.py renders it
-- for a table whose row_access is 'owner' or 'public_read' and runs it as the project
-- role (the table's owner), after dropping the table's earlier policies and before
-- enabling and forcing row-level security.
--
-- The first paragraph is {mine}: the request may read and write the row. True for a
-- trusted backend (a server or admin key), or when the row's owner ({owner}, the owner
-- column) is the session's user ('' without a session: no row matches). The executor
-- sets both settings with set_config(..., true) in the request's own transaction;
-- outside a gateway request they are unset and the policies hide every row (fail
-- closed). Only current_setting and the owner column: the project role has no privilege
-- on schema gateway, so the policies can't call gateway functions.
(current_setting('gateway.key_type', true) IN ('server', 'admin') OR {owner} = nullif(current_setting('gateway.user_id', true), '')::uuid)

-- The policies on {table}. {read} is the SELECT condition: (true) for 'public_read',
-- ({mine}) for 'owner'.
CREATE POLICY gateway_rows_select ON {table} FOR SELECT USING {read};
CREATE POLICY gateway_rows_insert ON {table} FOR INSERT WITH CHECK {mine};
CREATE POLICY gateway_rows_update ON {table} FOR UPDATE USING {mine} WITH CHECK {mine};
CREATE POLICY gateway_rows_delete ON {table} FOR DELETE USING {mine};
