-- Migration 003: cache counters recorded in the database.
--
-- Purpose: lets every worker of the cache record its hits, misses, stale
--   recomputes, waits and the tokens they saved, so that "salesai-cache
--   stats" sums them across processes, over a direct connection or through
--   Supabase's API.
-- Needs: migration 002 and Supabase's roles anon, authenticated and
--   service_role and its auth.uid(). Without 002 it stops at once with
--   SQLSTATE 55000 and changes nothing.
-- Objects touched, in this order:
--   1. Creates public.salesai_cache_stats: one row per flush of one worker
--      per (model, analysis_version), with the counter deltas since that
--      worker's previous flush (bigint, each checked >= 0), recorded_at,
--      user_id (auth.uid() by default: NULL for the service role and direct
--      connections; no foreign key, so that deleting a user keeps the sums
--      and the migration takes no lock on auth.users) and the worker's
--      label. The primary key id is chosen by the worker, so a flush sent
--      again after a lost reply is ignored (on conflict do nothing). Index
--      salesai_cache_stats_recorded_at_idx on recorded_at.
--   2. Row-level security on, with the policies "Users can read/record
--      their own cache stats" (authenticated, rows whose user_id is their
--      own) and "Service role can read/record/update/delete cache stats".
--      anon matches none. policies.sql creates the same policies.
--   3. Creates the functions
--      public.salesai_cache_stats_summary(timestamptz default null), the
--      sums per (model, analysis_version) of the rows recorded since the
--      argument, and public.salesai_analysis_summary(), the stored analyses
--      and their tokens per (model, analysis_version). SECURITY INVOKER with
--      an empty search_path; EXECUTE is revoked from PUBLIC, anon and
--      authenticated and granted to service_role only (operators).
--   4. Sets the comments that describe the new objects.
-- Locks: one transaction. Creating the table locks nothing that exists; a
--   run on a database that has the table takes ACCESS EXCLUSIVE on it to
--   replace its policies. lock_timeout is 5 s: on SQLSTATE 55P03 nothing has
--   changed and the migration can run again later.
-- Re-runnable: yes. A second run changes nothing: the table and index use
--   "if not exists", functions "create or replace" (which keeps their
--   privileges), policies are dropped and created again in the same
--   transaction, and the grants and comments are set to the same values.
-- Rollback: 003_add_cache_stats_rollback.sql. It loses every recorded
--   counter; analyses and claims stay.
-- Tested: on PostgreSQL 15 and 18 after migrations 001 and 002: up, up
--   again, down, up, and down to the legacy schema; the result equals
--   setup.sql's. The table and functions are tested as each API role
--   (tests/test_sql_stats.py).

begin;

set local lock_timeout = '5s';

-- The counters belong to the cache of migration 002, whose lookups and
-- saves produce them; an older schema has no worker that would flush them.
do $$
begin
  if to_regclass('public.salesai_analysis_claims') is null
     or to_regprocedure('public.salesai_save_analysis(uuid, jsonb, text, '
       'integer, integer, integer, text, text, text)') is null then
    raise exception 'migration 002 is not applied: the table '
      'salesai_analysis_claims or the function salesai_save_analysis is missing'
      using errcode = '55000',
        hint = 'Apply migrations/002_add_freshness_and_claims.sql first, '
          'then this file.';
  end if;
end
$$;

-- 1.
create table if not exists public.salesai_cache_stats (
  id uuid primary key default gen_random_uuid(),
  recorded_at timestamptz not null default now(),
  user_id uuid default auth.uid(),
  worker text not null,
  model text not null,
  analysis_version text,
  hits bigint not null default 0 check (hits >= 0),
  misses bigint not null default 0 check (misses >= 0),
  stale_recomputes bigint not null default 0 check (stale_recomputes >= 0),
  waits bigint not null default 0 check (waits >= 0),
  stale_served bigint not null default 0 check (stale_served >= 0),
  prompt_tokens_saved bigint not null default 0
    check (prompt_tokens_saved >= 0),
  completion_tokens_saved bigint not null default 0
    check (completion_tokens_saved >= 0)
);

-- The summary filters on recorded_at (--since), and an operator who prunes
-- old counters deletes by it.
create index if not exists salesai_cache_stats_recorded_at_idx
  on public.salesai_cache_stats (recorded_at);

-- 2. Supabase grants every API role all privileges on new tables in public, so
-- without row-level security the anon key could read and write counters.
alter table public.salesai_cache_stats enable row level security;

drop policy if exists "Users can read their own cache stats"
  on public.salesai_cache_stats;
create policy "Users can read their own cache stats"
  on public.salesai_cache_stats
  for select
  to authenticated
  using (user_id = (select auth.uid()));

drop policy if exists "Users can record their own cache stats"
  on public.salesai_cache_stats;
create policy "Users can record their own cache stats"
  on public.salesai_cache_stats
  for insert
  to authenticated
  with check (user_id = (select auth.uid()));

drop policy if exists "Service role can read cache stats"
  on public.salesai_cache_stats;
create policy "Service role can read cache stats"
  on public.salesai_cache_stats
  for select
  to service_role
  using (true);

drop policy if exists "Service role can record cache stats"
  on public.salesai_cache_stats;
create policy "Service role can record cache stats"
  on public.salesai_cache_stats
  for insert
  to service_role
  with check (true);

drop policy if exists "Service role can update cache stats"
  on public.salesai_cache_stats;
create policy "Service role can update cache stats"
  on public.salesai_cache_stats
  for update
  to service_role
  using (true)
  with check (true);

drop policy if exists "Service role can delete cache stats"
  on public.salesai_cache_stats;
create policy "Service role can delete cache stats"
  on public.salesai_cache_stats
  for delete
  to service_role
  using (true);

-- 3. The sums that salesai-cache stats prints, as a function so that a direct
-- connection and PostgREST (whose aggregate functions are off by default)
-- return the same sums. sum() of bigint is numeric, so the casts keep bigint,
-- which PostgREST returns as JSON numbers.
create or replace function public.salesai_cache_stats_summary(
  p_since timestamptz default null
)
returns table (
  model text,
  analysis_version text,
  hits bigint,
  misses bigint,
  stale_recomputes bigint,
  waits bigint,
  stale_served bigint,
  prompt_tokens_saved bigint,
  completion_tokens_saved bigint,
  flushes bigint,
  first_recorded_at timestamptz,
  last_recorded_at timestamptz
)
language sql
stable
security invoker
set search_path = ''
as $$
  select
    stats.model,
    stats.analysis_version,
    sum(stats.hits)::bigint,
    sum(stats.misses)::bigint,
    sum(stats.stale_recomputes)::bigint,
    sum(stats.waits)::bigint,
    sum(stats.stale_served)::bigint,
    sum(stats.prompt_tokens_saved)::bigint,
    sum(stats.completion_tokens_saved)::bigint,
    count(*),
    min(stats.recorded_at),
    max(stats.recorded_at)
  from public.salesai_cache_stats as stats
  where p_since is null or stats.recorded_at >= p_since
  group by stats.model, stats.analysis_version
  order by stats.model, stats.analysis_version;
$$;

-- The stored analyses per model and analysis version, for the same command.
-- The row whose model is NULL counts the sessions without an analysis.
create or replace function public.salesai_analysis_summary()
returns table (
  model text,
  analysis_version text,
  sessions bigint,
  analyses bigint,
  prompt_tokens bigint,
  completion_tokens bigint,
  total_tokens bigint
)
language sql
stable
security invoker
set search_path = ''
as $$
  select
    result.model,
    result.analysis_version,
    count(*),
    count(result.session_id),
    coalesce(sum(result.prompt_tokens), 0)::bigint,
    coalesce(sum(result.completion_tokens), 0)::bigint,
    coalesce(sum(result.total_tokens), 0)::bigint
  from public.salesai_sessions as session
  left join public.salesai_analysis_results as result
    on result.session_id = session.id
  group by result.model, result.analysis_version
  order by count(result.session_id) desc, result.model, result.analysis_version;
$$;

-- Operators only: Supabase's default privileges grant EXECUTE on every new
-- function in public to anon and authenticated, and PostgreSQL grants it to
-- PUBLIC. "create or replace" keeps these privileges on a later run.
revoke execute on function public.salesai_cache_stats_summary(timestamptz)
  from public, anon, authenticated;
grant execute on function public.salesai_cache_stats_summary(timestamptz)
  to service_role;

revoke execute on function public.salesai_analysis_summary()
  from public, anon, authenticated;
grant execute on function public.salesai_analysis_summary()
  to service_role;

-- 4.
comment on table public.salesai_cache_stats is
  'Counters of the cache, one row per flush of one worker per model and '
  'analysis version: deltas since its previous flush, to be summed.';
comment on column public.salesai_cache_stats.id is
  'Chosen by the worker, so that a flush sent again after a lost reply is '
  'ignored instead of counted twice.';
comment on column public.salesai_cache_stats.user_id is
  'The signed-in user whose key flushed the row; NULL for the service role '
  'and direct database connections.';
comment on column public.salesai_cache_stats.worker is
  'The process that flushed the row, as host:pid.';
comment on column public.salesai_cache_stats.analysis_version is
  'Analysis version of the analyses counted; NULL for stale analyses stored '
  'before migration 002 and served with allow_stale.';
comment on column public.salesai_cache_stats.prompt_tokens_saved is
  'Prompt tokens of the analyses served without a model call (hits, waits, '
  'stale serves), from the usage stored with each analysis.';
comment on function public.salesai_cache_stats_summary(timestamptz) is
  'Sums of the cache counters per model and analysis version, of the rows '
  'recorded at or after p_since (all rows when NULL).';
comment on function public.salesai_analysis_summary() is
  'Stored analyses and their tokens per model and analysis version; the row '
  'with a NULL model counts the sessions without an analysis.';

commit;
