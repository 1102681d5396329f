-- Checks that a database has everything salesai-cache needs.
--
-- Purpose: run after setup.sql and policies.sql, or after a migration, to see
--   whether the schema is complete. Returns one row per check, with columns
--   check_name text, passed boolean, detail text; every passed must be true.
-- Objects touched: none. It only reads the catalog and counts rows.
-- Checks, in order: both tables of setup.sql exist;
--   salesai_sessions.conversation_id exists; the unique constraint
--   salesai_analysis_results_session_id_key exists; the index
--   idx_salesai_sessions_conversation exists; no session has more than one
--   analysis; row-level security is on for both tables; the policies of
--   policies.sql exist on both tables. Then what migration 002 adds: the
--   columns transcript_hash and analysis_version; the table
--   salesai_analysis_claims with its primary key salesai_analysis_claims_pkey
--   (the lookup function names it); row-level security and the policies on
--   it; the functions salesai_lookup_analysis and salesai_save_analysis with
--   the argument types that the library calls them with; and that neither
--   anon nor PUBLIC may execute them (Supabase's default privileges would let
--   anon). Then what migration 003 adds: the table salesai_cache_stats,
--   row-level security and the policies on it, the functions
--   salesai_cache_stats_summary(timestamptz) and salesai_analysis_summary(),
--   and that only operators may execute them (not anon, authenticated or
--   PUBLIC).
-- Form: one select statement, so that any client (psql, Supabase's SQL
--   editor, psycopg) gets a single result set. It needs no begin/commit: a
--   read-only statement runs in a transaction of its own.
-- Missing tables are reported as failed rows, not as an error: the one query
--   that reads a table runs only when the table exists. A plain select can
--   name a table that may not exist only inside a query passed as text to a
--   function that runs it. ts_stat() is such a function in every build;
--   query_to_xml() is another but needs a server built with libxml, which
--   the embedded server of the tests is not.
-- Re-runnable: yes. Rollback: none needed.
-- Tested: on the legacy schema and after migration 001 alone (failing rows),
--   after migrations 001 to 003 plus policies.sql and after setup.sql plus
--   policies.sql (all passing), and on a database without the tables, on
--   PostgreSQL 15 and 18 (tests/test_sql_migration.py,
--   tests/test_sql_setup.py, tests/test_sql_claims.py,
--   tests/test_sql_stats.py).

with
tables as (
  select
    to_regclass('public.salesai_sessions') as sessions,
    to_regclass('public.salesai_analysis_results') as results,
    to_regclass('public.salesai_analysis_claims') as claims,
    to_regclass('public.salesai_cache_stats') as stats
),
functions as (
  select
    to_regprocedure(
      'public.salesai_lookup_analysis(uuid, text, text, text, '
      'double precision, boolean)'
    ) as lookup,
    to_regprocedure(
      'public.salesai_save_analysis(uuid, jsonb, text, integer, integer, '
      'integer, text, text, text)'
    ) as save,
    to_regprocedure('public.salesai_cache_stats_summary(timestamptz)')
      as stats_summary,
    to_regprocedure('public.salesai_analysis_summary()') as analysis_summary
),
-- The functions of migration 002 that anon may execute, directly or through
-- PUBLIC. Joined on the role's oid, so a server without the role anon (a
-- plain PostgreSQL) checks PUBLIC only and raises nothing.
anon_executable as (
  select
    string_agg(proc.oid::regprocedure::text, ', ' order by proc.proname)
      as functions
  from functions
  cross join lateral unnest(array[functions.lookup, functions.save]) as fn (oid)
  join pg_catalog.pg_proc as proc on proc.oid = fn.oid
  left join pg_catalog.pg_roles as anon on anon.rolname = 'anon'
  where pg_catalog.has_function_privilege(anon.oid, proc.oid, 'execute')
    or exists (
      select
      from pg_catalog.aclexplode(
        coalesce(proc.proacl, pg_catalog.acldefault('f', proc.proowner))
      ) as acl
      where acl.grantee = 0
        and acl.privilege_type = 'EXECUTE'
    )
),
-- The summary functions of migration 003 that anyone but operators may
-- execute: anon or authenticated, directly or through PUBLIC.
open_summaries as (
  select
    string_agg(proc.oid::regprocedure::text, ', ' order by proc.proname)
      as functions
  from functions
  cross join lateral unnest(
    array[functions.stats_summary, functions.analysis_summary]
  ) as fn (oid)
  join pg_catalog.pg_proc as proc on proc.oid = fn.oid
  where exists (
      select
      from pg_catalog.pg_roles as api_role
      where api_role.rolname in ('anon', 'authenticated')
        and pg_catalog.has_function_privilege(api_role.oid, proc.oid, 'execute')
    )
    or exists (
      select
      from pg_catalog.aclexplode(
        coalesce(proc.proacl, pg_catalog.acldefault('f', proc.proowner))
      ) as acl
      where acl.grantee = 0
        and acl.privilege_type = 'EXECUTE'
    )
),
expected_policies (table_name, policy_name) as (
  values
    ('salesai_sessions', 'Users can read their own sessions'),
    ('salesai_sessions', 'Users can create their own sessions'),
    ('salesai_sessions', 'Users can update their own sessions'),
    ('salesai_sessions', 'Users can delete their own sessions'),
    ('salesai_sessions', 'Service role can read all sessions'),
    ('salesai_sessions', 'Service role can create sessions'),
    ('salesai_sessions', 'Service role can update sessions'),
    ('salesai_sessions', 'Service role can delete sessions'),
    ('salesai_analysis_results', 'Users can read analyses of their own sessions'),
    ('salesai_analysis_results', 'Service role can read all analyses'),
    ('salesai_analysis_results', 'Service role can create analyses'),
    ('salesai_analysis_results', 'Service role can update analyses'),
    ('salesai_analysis_results', 'Service role can delete analyses'),
    ('salesai_analysis_claims', 'Service role can read claims'),
    ('salesai_analysis_claims', 'Service role can create claims'),
    ('salesai_analysis_claims', 'Service role can update claims'),
    ('salesai_analysis_claims', 'Service role can delete claims'),
    ('salesai_cache_stats', 'Users can read their own cache stats'),
    ('salesai_cache_stats', 'Users can record their own cache stats'),
    ('salesai_cache_stats', 'Service role can read cache stats'),
    ('salesai_cache_stats', 'Service role can record cache stats'),
    ('salesai_cache_stats', 'Service role can update cache stats'),
    ('salesai_cache_stats', 'Service role can delete cache stats')
),
policy_status as (
  select
    expected.table_name,
    count(*) as expected_count,
    string_agg(format('"%s"', expected.policy_name), ', '
      order by expected.policy_name)
      filter (where actual.policyname is null) as missing
  from expected_policies as expected
  left join pg_catalog.pg_policies as actual
    on actual.schemaname = 'public'
    and actual.tablename = expected.table_name
    and actual.policyname = expected.policy_name
  group by expected.table_name
),
duplicates as (
  select
    case
      when tables.results is not null then (
        -- One document per session with several analyses: ndoc counts them.
        select coalesce(sum(stat.ndoc), 0)
        from ts_stat(
          'select to_tsvector(''simple'', ''duplicated'')
           from public.salesai_analysis_results
           group by session_id
           having count(*) > 1'
        ) as stat
      )
    end as sessions
  from tables
),
checks (position, check_name, passed, detail) as (
  select
    1,
    'sessions_table_exists',
    tables.sessions is not null,
    case
      when tables.sessions is not null then 'public.salesai_sessions exists'
      else 'public.salesai_sessions is missing: run setup.sql'
    end
  from tables
  union all
  select
    2,
    'analysis_results_table_exists',
    tables.results is not null,
    case
      when tables.results is not null
        then 'public.salesai_analysis_results exists'
      else 'public.salesai_analysis_results is missing: run setup.sql'
    end
  from tables
  union all
  select
    3,
    'conversation_id_column_exists',
    found,
    case
      when found then 'salesai_sessions.conversation_id exists'
      else 'salesai_sessions.conversation_id is missing: run migration 001'
    end
  from (
    select exists (
      select
      from pg_catalog.pg_attribute as attribute, tables
      where attribute.attrelid = tables.sessions
        and attribute.attname = 'conversation_id'
        and not attribute.attisdropped
    ) as found
  ) as column_check
  union all
  select
    4,
    'session_id_unique_constraint_exists',
    found,
    case
      when found then 'salesai_analysis_results_session_id_key exists'
      else 'salesai_analysis_results_session_id_key is missing: run migration 001'
    end
  from (
    select exists (
      select
      from pg_catalog.pg_constraint as con, tables
      where con.conrelid = tables.results
        and con.conname = 'salesai_analysis_results_session_id_key'
        and con.contype = 'u'
    ) as found
  ) as constraint_check
  union all
  select
    5,
    'conversation_id_index_exists',
    found,
    case
      when found then 'idx_salesai_sessions_conversation exists'
      else 'idx_salesai_sessions_conversation is missing: run migration 001'
    end
  from (
    select exists (
      select
      from pg_catalog.pg_index as ind, tables
      where ind.indrelid = tables.sessions
        and ind.indexrelid = to_regclass('public.idx_salesai_sessions_conversation')
    ) as found
  ) as index_check
  union all
  select
    6,
    'no_duplicate_analyses',
    coalesce(duplicates.sessions = 0, false),
    case
      when duplicates.sessions is null
        then 'cannot count: public.salesai_analysis_results is missing'
      when duplicates.sessions = 0 then 'every session has at most one analysis'
      else duplicates.sessions || ' sessions have several analyses: '
        || 'run migration 001'
    end
  from duplicates
  union all
  select
    7,
    'sessions_rls_enabled',
    coalesce(class.relrowsecurity, false),
    case
      when class.relrowsecurity then 'row-level security is on for salesai_sessions'
      else 'row-level security is off for salesai_sessions: run policies.sql'
    end
  from tables
  left join pg_catalog.pg_class as class on class.oid = tables.sessions
  union all
  select
    8,
    'analysis_results_rls_enabled',
    coalesce(class.relrowsecurity, false),
    case
      when class.relrowsecurity
        then 'row-level security is on for salesai_analysis_results'
      else 'row-level security is off for salesai_analysis_results: run policies.sql'
    end
  from tables
  left join pg_catalog.pg_class as class on class.oid = tables.results
  union all
  select
    case policy_status.table_name
      when 'salesai_sessions' then 9
      when 'salesai_analysis_results' then 10
      when 'salesai_analysis_claims' then 14
      else 20
    end,
    case policy_status.table_name
      when 'salesai_sessions' then 'sessions_policies_exist'
      when 'salesai_analysis_results' then 'analysis_results_policies_exist'
      when 'salesai_analysis_claims' then 'claims_policies_exist'
      else 'cache_stats_policies_exist'
    end,
    policy_status.missing is null,
    case
      when policy_status.missing is null
        then 'all ' || policy_status.expected_count || ' policies on '
          || policy_status.table_name || ' exist'
      -- policies.sql fails on a database without the claims table.
      when policy_status.table_name = 'salesai_analysis_claims'
        and tables.claims is null
        then 'public.salesai_analysis_claims is missing: run migration 002'
      when policy_status.table_name = 'salesai_cache_stats'
        and tables.stats is null
        then 'public.salesai_cache_stats is missing: run migration 003'
      else 'missing on ' || policy_status.table_name || ': '
        || policy_status.missing || '; run policies.sql'
    end
  from policy_status, tables
  union all
  select
    11,
    'freshness_columns_exist',
    missing is null,
    case
      when missing is null
        then 'salesai_analysis_results.transcript_hash and analysis_version exist'
      else 'salesai_analysis_results lacks ' || missing || ': run migration 002'
    end
  from (
    select
      string_agg(expected.name, ' and ' order by expected.position)
        filter (where attribute.attname is null) as missing
    from tables
    cross join (
      values (1, 'transcript_hash'), (2, 'analysis_version')
    ) as expected (position, name)
    left join pg_catalog.pg_attribute as attribute
      on attribute.attrelid = tables.results
      and attribute.attname = expected.name
      and not attribute.attisdropped
  ) as column_check
  union all
  select
    12,
    'claims_table_exists',
    tables.claims is not null and primary_key.found,
    case
      when tables.claims is null
        then 'public.salesai_analysis_claims is missing: run migration 002'
      when not primary_key.found
        then 'salesai_analysis_claims_pkey is missing: the lookup function '
          || 'needs it; run migration 002 on a database without the table'
      else 'public.salesai_analysis_claims and its primary key exist'
    end
  from tables
  cross join lateral (
    select exists (
      select
      from pg_catalog.pg_constraint as con
      where con.conrelid = tables.claims
        and con.conname = 'salesai_analysis_claims_pkey'
        and con.contype = 'p'
    ) as found
  ) as primary_key
  union all
  select
    13,
    'claims_rls_enabled',
    coalesce(class.relrowsecurity, false),
    case
      when class.relrowsecurity
        then 'row-level security is on for salesai_analysis_claims'
      when class.oid is null
        then 'public.salesai_analysis_claims is missing: run migration 002'
      else 'row-level security is off for salesai_analysis_claims: run '
        || 'policies.sql'
    end
  from tables
  left join pg_catalog.pg_class as class on class.oid = tables.claims
  union all
  select
    15,
    'lookup_function_exists',
    functions.lookup is not null,
    case
      when functions.lookup is not null
        then 'public.salesai_lookup_analysis exists'
      else 'public.salesai_lookup_analysis(uuid, text, text, text, '
        || 'double precision, boolean) is missing: run migration 002'
    end
  from functions
  union all
  select
    16,
    'save_function_exists',
    functions.save is not null,
    case
      when functions.save is not null then 'public.salesai_save_analysis exists'
      else 'public.salesai_save_analysis(uuid, jsonb, text, integer, integer, '
        || 'integer, text, text, text) is missing: run migration 002'
    end
  from functions
  union all
  select
    17,
    'functions_not_executable_by_anon',
    functions.lookup is not null
      and functions.save is not null
      and anon_executable.functions is null,
    case
      when functions.lookup is null or functions.save is null
        then 'cannot check: a function of migration 002 is missing'
      when anon_executable.functions is null
        then 'anon and PUBLIC may not execute the lookup and save functions'
      else 'anon or PUBLIC may execute ' || anon_executable.functions
        || ': run migration 002 again, which revokes it'
    end
  from functions, anon_executable
  union all
  select
    18,
    'cache_stats_table_exists',
    tables.stats is not null,
    case
      when tables.stats is not null then 'public.salesai_cache_stats exists'
      else 'public.salesai_cache_stats is missing: run migration 003'
    end
  from tables
  union all
  select
    19,
    'cache_stats_rls_enabled',
    coalesce(class.relrowsecurity, false),
    case
      when class.relrowsecurity
        then 'row-level security is on for salesai_cache_stats'
      when class.oid is null
        then 'public.salesai_cache_stats is missing: run migration 003'
      else 'row-level security is off for salesai_cache_stats: run policies.sql'
    end
  from tables
  left join pg_catalog.pg_class as class on class.oid = tables.stats
  union all
  select
    21,
    'stats_functions_exist',
    functions.stats_summary is not null
      and functions.analysis_summary is not null,
    case
      when functions.stats_summary is not null
        and functions.analysis_summary is not null
        then 'public.salesai_cache_stats_summary and '
          || 'public.salesai_analysis_summary exist'
      else 'public.salesai_cache_stats_summary(timestamptz) or '
        || 'public.salesai_analysis_summary() is missing: run migration 003'
    end
  from functions
  union all
  select
    22,
    'stats_functions_for_operators_only',
    functions.stats_summary is not null
      and functions.analysis_summary is not null
      and open_summaries.functions is null,
    case
      when functions.stats_summary is null or functions.analysis_summary is null
        then 'cannot check: a function of migration 003 is missing'
      when open_summaries.functions is null
        then 'only operators may execute the summary functions'
      else 'anon, authenticated or PUBLIC may execute '
        || open_summaries.functions
        || ': run migration 003 again, which revokes it'
    end
  from functions, open_summaries
)
select check_name::text, passed, detail::text
from checks
order by position;
