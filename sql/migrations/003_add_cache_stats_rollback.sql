-- Rollback of migration 003: back to the schema of migration 002.
--
-- Purpose: undoes 003_add_cache_stats.sql, in reverse order, for a
--   deployment that must return to a library version that predates it.
--   Workers of the newer library keep working without it: their first
--   flush fails, logs one WARNING naming migration 003, and they stop
--   flushing.
-- Objects touched, in this order:
--   1. Drops the functions public.salesai_analysis_summary() and
--      public.salesai_cache_stats_summary(timestamptz), with their
--      privileges and comments.
--   2. Drops the table public.salesai_cache_stats, with its index, policies,
--      constraints and comments.
-- Data lost: every recorded counter. Analyses and claims stay.
-- Locks: ACCESS EXCLUSIVE on salesai_cache_stats while it is dropped, with
--   the 5 s lock_timeout of the migrations (SQLSTATE 55P03 when it expires;
--   nothing changes). No other table is locked.
-- Re-runnable: yes; every drop uses "if exists".
-- Tested: on PostgreSQL 15 and 18: up, down, down again, up; after this
--   rollback the schema equals that of migrations 001 and 002
--   (tests/test_sql_stats.py).

begin;

set local lock_timeout = '5s';

-- 1. By full signature: an overload with other arguments is not ours.
drop function if exists public.salesai_analysis_summary();
drop function if exists public.salesai_cache_stats_summary(timestamptz);

-- 2.
drop table if exists public.salesai_cache_stats;

-- salesai-cache migrate records applied migrations; forget this one, so
-- that migrate applies it again.
do $$
begin
  if to_regclass('public.salesai_schema_migrations') is not null then
    delete from public.salesai_schema_migrations
    where name = 'migrations/003_add_cache_stats';
  end if;
end
$$;

commit;
