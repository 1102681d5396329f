-- Rollback of migration 001: back to the schema before conversation ids.
--
-- Purpose: undoes 001_add_conversation_id_and_caching.sql, in reverse order,
--   for a deployment that must return to code that predates it.
-- Objects touched, in this order:
--   1. Restores the comments that 001 changed; drops the comments it added.
--   2. Drops the triggers salesai_sessions_set_updated_at and
--      salesai_analysis_results_set_updated_at, then the function
--      public.salesai_set_updated_at(). The drop fails if some other object
--      uses the function: remove that object first.
--   3. Drops the index idx_salesai_sessions_conversation.
--   4. Drops the constraint salesai_analysis_results_session_id_key, so a
--      session can again have several analyses.
--   5. Makes created_at/updated_at of salesai_analysis_results nullable.
--   6. Drops the column salesai_sessions.conversation_id.
-- Data lost: every conversation_id value. The duplicate analyses that 001
--   deleted cannot come back from here, and timestamps that 001 filled in
--   stay filled in.
-- Order: roll back 002 first. While its claims table or save function
--   exists, this file stops with SQLSTATE 55000 and changes nothing.
-- Locks: ACCESS EXCLUSIVE on salesai_analysis_results, then on
--   salesai_sessions, until commit, in the same order as 001 and with the
--   same 5 s lock_timeout (SQLSTATE 55P03 when it expires; nothing changes).
-- Re-runnable: yes; every drop uses "if exists". Applying 001 again
--   afterwards works, with every conversation_id NULL.
-- Tested: up, down, down again, up on PostgreSQL 15 and 18; after the
--   rollback the schema equals tests/legacy_schema.sql
--   (tests/test_sql_migration.py).

begin;

set local lock_timeout = '5s';

lock table public.salesai_analysis_results, public.salesai_sessions
  in access exclusive mode;

-- Migration 002's functions upsert on the constraint dropped below, so they
-- would fail on every save: roll 002 back first.
do $$
begin
  if to_regclass('public.salesai_analysis_claims') is not null
     or to_regprocedure('public.salesai_save_analysis(uuid, jsonb, text, '
       'integer, integer, integer, text, text, text)') is not null then
    raise exception 'migration 002 is still applied'
      using errcode = '55000',
        hint = 'Run migrations/002_add_freshness_and_claims_rollback.sql '
          'first, then this file.';
  end if;
end
$$;

-- 1.
comment on table public.salesai_analysis_results is
  'Model analyses of sessions.';
comment on column public.salesai_analysis_results.session_id is null;
comment on column public.salesai_analysis_results.updated_at is null;

-- 2.
drop trigger if exists salesai_analysis_results_set_updated_at
  on public.salesai_analysis_results;
drop trigger if exists salesai_sessions_set_updated_at
  on public.salesai_sessions;
drop function if exists public.salesai_set_updated_at();

-- 3.
drop index if exists public.idx_salesai_sessions_conversation;

-- 4.
alter table public.salesai_analysis_results
  drop constraint if exists salesai_analysis_results_session_id_key;

-- 5.
alter table public.salesai_analysis_results
  alter column created_at drop not null,
  alter column updated_at drop not null;

-- 6. Its comment goes with it.
alter table public.salesai_sessions
  drop column if exists conversation_id;

-- salesai-cache migrate records applied migrations; forget this one, so
-- that migrate applies it again.
do $$
begin
  if to_regclass('public.salesai_schema_migrations') is not null then
    delete from public.salesai_schema_migrations
    where name = 'migrations/001_add_conversation_id_and_caching';
  end if;
end
$$;

commit;
