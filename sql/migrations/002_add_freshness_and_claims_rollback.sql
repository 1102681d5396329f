-- Rollback of migration 002: back to the schema of migration 001.
--
-- Purpose: undoes 002_add_freshness_and_claims.sql, in reverse order, for a
--   deployment that must return to a library version that predates it.
--   Stop the workers of the newer library first: their lookups and saves
--   fail once the functions are gone.
-- Objects touched, in this order:
--   1. Drops the functions
--      public.salesai_save_analysis(uuid, jsonb, text, integer, integer,
--        integer, text, text, text) and
--      public.salesai_lookup_analysis(uuid, text, text, text,
--        double precision, boolean), with their privileges and comments.
--   2. Drops the table public.salesai_analysis_claims, with its policies,
--      constraints and comments.
--   3. Drops the columns analysis_version and transcript_hash of
--      public.salesai_analysis_results, with their comments.
-- Data lost: every stored fingerprint (transcript_hash, analysis_version)
--   and every claim, including claims of computations still running. The
--   analyses themselves stay. Applying 002 again afterwards leaves the
--   fingerprints NULL, so each analysis is recomputed once on its next
--   request.
-- Locks: ACCESS EXCLUSIVE on salesai_analysis_results, then on
--   salesai_sessions, then on the claims table when it is dropped; all held
--   until commit, in the same order as migration 002 and with the same 5 s
--   lock_timeout (SQLSTATE 55P03 when it expires; nothing changes).
--   Dropping the claims table removes its foreign key's triggers from
--   salesai_sessions, which takes ACCESS EXCLUSIVE there (PostgreSQL 15),
--   so that lock is taken up front rather than upgraded midway. Reads and
--   writes of sessions and analyses wait while it runs.
-- Order: roll back 003 first. While its table salesai_cache_stats exists,
--   this file stops with SQLSTATE 55000 and changes nothing.
-- Re-runnable: yes; every drop uses "if exists".
-- Tested: on PostgreSQL 15 and 18: up, down, down again, up; after this
--   rollback and 001's, the schema equals tests/legacy_schema.sql
--   (tests/test_sql_claims.py).

begin;

set local lock_timeout = '5s';

lock table public.salesai_analysis_results in access exclusive mode;
lock table public.salesai_sessions in access exclusive mode;

-- Migrations apply and roll back in order: 003 refuses to run without 002,
-- so 002 is not taken away from under it.
do $$
begin
  if to_regclass('public.salesai_cache_stats') is not null then
    raise exception 'migration 003 is still applied'
      using errcode = '55000',
        hint = 'Run migrations/003_add_cache_stats_rollback.sql first, '
          'then this file.';
  end if;
end
$$;

-- 1. By full signature: an overload with other arguments is not ours.
drop function if exists public.salesai_save_analysis(
  uuid, jsonb, text, integer, integer, integer, text, text, text
);
drop function if exists public.salesai_lookup_analysis(
  uuid, text, text, text, double precision, boolean
);

-- 2.
drop table if exists public.salesai_analysis_claims;

-- 3.
alter table public.salesai_analysis_results
  drop column if exists analysis_version,
  drop column if exists transcript_hash;

-- salesai-cache migrate records applied migrations; forget this one, so
-- that migrate applies it again.
do $$
begin
  if to_regclass('public.salesai_schema_migrations') is not null then
    delete from public.salesai_schema_migrations
    where name = 'migrations/002_add_freshness_and_claims';
  end if;
end
$$;

commit;
