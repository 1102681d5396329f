-- Migration 001: conversation ids and one cached analysis per session.
--
-- Purpose: brings a database created before conversation ids and caching up
--   to the schema of setup.sql, so that analyses can be cached per session
--   (an upsert on session_id) and looked up by conversation id.
-- Objects touched, in this order:
--   1. public.salesai_sessions: adds the nullable column conversation_id.
--   2. public.salesai_analysis_results: deletes duplicate analyses, keeping
--      one per session (see "Data removed" below).
--   3. public.salesai_analysis_results: sets NULL created_at/updated_at to
--      the other timestamp, or to the time of the migration when both are
--      NULL, then makes both columns NOT NULL.
--   4. public.salesai_analysis_results: adds the unique constraint
--      salesai_analysis_results_session_id_key on (session_id).
--   5. public.salesai_sessions: creates the index
--      idx_salesai_sessions_conversation on (conversation_id).
--   6. Creates the function public.salesai_set_updated_at() and a trigger
--      on each table that keeps updated_at current on update.
--   7. Sets the comments that describe the changed objects.
-- Data removed: for each session with several analyses, every analysis but
--   the most recent: greatest updated_at, then greatest created_at, NULL
--   counting as older than any time; when rows still tie, the one with the
--   greatest id stays (arbitrary but deterministic), so exactly one remains.
--   Export the table first if the older analyses matter.
-- Locks: one transaction. It first takes ACCESS EXCLUSIVE locks on
--   salesai_analysis_results, then on salesai_sessions, and holds them until
--   commit. The ALTER TABLE steps need these locks anyway; taking them up
--   front means no duplicate can be inserted between the delete and the new
--   constraint, and no lock is upgraded midway. The child table comes first
--   because the cache's writes (upserts of analyses) lock it before their
--   foreign-key check locks the session row. A statement that locks the two
--   tables in the other order (a read that joins sessions to analyses) can
--   still deadlock with it; PostgreSQL then cancels one of the two, and if
--   that is the migration, nothing has changed. lock_timeout is 5 s: if another
--   transaction holds either table longer, the migration stops with SQLSTATE
--   55P03 and changes nothing, instead of queueing all traffic behind it.
--   Run it again when the database is quieter. Reads and writes of both
--   tables wait while it runs; the index is built without CONCURRENTLY,
--   which cannot run inside a transaction.
-- Re-runnable: yes. A second run changes nothing: every step is guarded
--   (if not exists, a pg_constraint or pg_trigger check) or finds no row.
-- Rollback: 001_add_conversation_id_and_caching_rollback.sql. It loses the
--   conversation_id values; the analyses deleted here cannot come back.
-- Tested: on PostgreSQL 15 and 18, on legacy rows with duplicates, ties and
--   NULL timestamps: up, up again, down, up (tests/test_sql_migration.py).
--   The resulting schema equals the one setup.sql creates.

begin;

set local lock_timeout = '5s';

lock table public.salesai_analysis_results, public.salesai_sessions
  in access exclusive mode;

-- 1. The conversation id, nullable: sessions recorded without one keep NULL.
alter table public.salesai_sessions
  add column if not exists conversation_id text;

-- 2. Keep the most recent analysis of each session.
delete from public.salesai_analysis_results as result
using (
  select
    id,
    row_number() over (
      partition by session_id
      order by
        updated_at desc nulls last,
        created_at desc nulls last,
        id desc
    ) as recency
  from public.salesai_analysis_results
) as ranked
where result.id = ranked.id
  and ranked.recency > 1;

-- 3. Before the trigger exists, so that backfilled rows keep their times.
update public.salesai_analysis_results
set
  created_at = coalesce(created_at, updated_at, now()),
  updated_at = coalesce(updated_at, created_at, now())
where created_at is null
   or updated_at is null;

alter table public.salesai_analysis_results
  alter column created_at set not null,
  alter column updated_at set not null;

-- 4. PostgreSQL has no "add constraint if not exists".
do $$
begin
  if not exists (
    select
    from pg_catalog.pg_constraint
    where conrelid = 'public.salesai_analysis_results'::regclass
      and conname = 'salesai_analysis_results_session_id_key'
  ) then
    alter table public.salesai_analysis_results
      add constraint salesai_analysis_results_session_id_key unique (session_id);
  end if;
end
$$;

-- 5.
create index if not exists idx_salesai_sessions_conversation
  on public.salesai_sessions (conversation_id);

-- 6. An update that leaves updated_at unchanged gets the current time. An
-- update that sets it explicitly keeps its value.
create or replace function public.salesai_set_updated_at()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if new.updated_at is not distinct from old.updated_at then
    new.updated_at := pg_catalog.now();
  end if;
  return new;
end;
$$;

do $$
begin
  if not exists (
    select
    from pg_catalog.pg_trigger
    where tgrelid = 'public.salesai_sessions'::regclass
      and tgname = 'salesai_sessions_set_updated_at'
  ) then
    create trigger salesai_sessions_set_updated_at
      before update on public.salesai_sessions
      for each row execute function public.salesai_set_updated_at();
  end if;
  if not exists (
    select
    from pg_catalog.pg_trigger
    where tgrelid = 'public.salesai_analysis_results'::regclass
      and tgname = 'salesai_analysis_results_set_updated_at'
  ) then
    create trigger salesai_analysis_results_set_updated_at
      before update on public.salesai_analysis_results
      for each row execute function public.salesai_set_updated_at();
  end if;
end
$$;

-- 7.
comment on table public.salesai_analysis_results is
  'Cached model analyses of sessions: at most one per session.';
comment on column public.salesai_sessions.conversation_id is
  'Identifier of the conversation in the app that recorded it, such as a '
  'call id; not unique. NULL when the app gave none.';
comment on column public.salesai_analysis_results.session_id is
  'The session analysed. Unique: the cache upserts on it.';
comment on column public.salesai_analysis_results.updated_at is
  'Set to the current time by a trigger on every update that does not set '
  'it; the most recent analysis wins a lookup by conversation id.';
comment on function public.salesai_set_updated_at() is
  'Trigger function: keeps updated_at current on update.';

commit;
