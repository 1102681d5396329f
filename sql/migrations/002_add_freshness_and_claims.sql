-- Migration 002: freshness fingerprints and compute claims.
--
-- Purpose: lets the cache tell a stale analysis from a fresh one, and lets
--   exactly one worker, in any process, compute a missing analysis while the
--   others wait for it. A worker that dies leaves a claim whose lease
--   expires, after which another worker takes it over.
-- Needs: migration 001 (the functions upsert on
--   salesai_analysis_results_session_id_key) and Supabase's roles anon,
--   authenticated and service_role. Without 001 it stops at once with
--   SQLSTATE 55000 and changes nothing.
-- Objects touched, in this order:
--   1. public.salesai_analysis_results: adds the nullable columns
--      transcript_hash (SHA-256 of the normalised transcript) and
--      analysis_version (model, prompt and output schema), last. Rows stored
--      before this migration have NULL in both, so the cache treats them as
--      stale and recomputes each on its next request.
--   2. Creates public.salesai_analysis_claims: at most one claim per session
--      (primary key salesai_analysis_claims_pkey on session_id, which is also
--      the only index any query of the table needs), with the worker that
--      holds it and when its lease expires; deleting a session deletes its
--      claim. Row-level security on, with the policies "Service role can
--      read/create/update/delete claims", so anon and signed-in users can
--      neither see nor take a claim. policies.sql creates the same policies.
--   3. Creates the functions
--      public.salesai_lookup_analysis(uuid, text, text, text,
--        double precision, boolean) and
--      public.salesai_save_analysis(uuid, jsonb, text, integer, integer,
--        integer, text, text, text),
--      which the library calls through PostgREST (POST /rest/v1/rpc/...) or
--      SQL. Each PostgREST request is a transaction of its own, so a claim is
--      a row with a lease, not a session lock: a lookup returns a fresh
--      analysis or takes the claim in one round trip, and a save upserts the
--      analysis and releases the claim in one more. Both are SECURITY
--      INVOKER with an empty search_path, so row-level security applies to
--      the caller as it does to plain table requests. EXECUTE is revoked from
--      PUBLIC and anon and granted to service_role and authenticated, whose
--      reads of fresh analyses work and whose claims and saves fail with
--      SQLSTATE 42501 (row-level security). The lookup raises 22023 on an
--      invalid argument (a NULL session id, claimant or p_force, an empty
--      claimant, a lease outside (0, 31536000] seconds), and both raise
--      23503 for a session that does not exist.
--   4. Sets the comments that describe the new objects.
-- Locks: one transaction. It first takes ACCESS EXCLUSIVE on
--   salesai_analysis_results (for the new columns), then SHARE ROW EXCLUSIVE
--   on salesai_sessions (the new foreign key points at it; reads of sessions
--   go on, writes wait), in the same order as migration 001, and holds them
--   until commit. Adding a nullable column without a default rewrites
--   nothing, so the locks last a moment. A run on a database that has the
--   claims table also takes ACCESS EXCLUSIVE on it to replace its policies.
--   A statement that locks sessions before analyses (deleting a session
--   cascades that way) can deadlock with it; PostgreSQL then cancels one of
--   the two, and if that is the migration, nothing has changed. lock_timeout
--   is 5 s: on SQLSTATE 55P03 nothing has changed and the migration can run
--   again later.
-- Re-runnable: yes. A second run changes nothing: columns and the table use
--   "if not exists", functions "create or replace" (which keeps their
--   privileges), policies are dropped and created again in the same
--   transaction, and the grants and comments are set to the same values.
-- Rollback: 002_add_freshness_and_claims_rollback.sql. It loses the
--   fingerprints (the older library does not read them) and any claims in
--   progress; the analyses stay.
-- Tested: on PostgreSQL 15 and 18 after migration 001: up, up again, down,
--   up, and down to the legacy schema; the result equals setup.sql's. The
--   functions are tested on that database as each API role, with concurrent
--   callers on separate connections (tests/test_sql_claims.py).

begin;

set local lock_timeout = '5s';

lock table public.salesai_analysis_results in access exclusive mode;
lock table public.salesai_sessions in share row exclusive mode;

-- The save function upserts on the unique constraint that migration 001
-- adds; without it every save would fail after a paid analysis.
do $$
begin
  if not exists (
    select
    from pg_catalog.pg_constraint
    where conrelid = 'public.salesai_analysis_results'::regclass
      and conname = 'salesai_analysis_results_session_id_key'
  ) then
    raise exception 'migration 001 is not applied: the constraint '
      'salesai_analysis_results_session_id_key is missing'
      using errcode = '55000',
        hint = 'Apply migrations/001_add_conversation_id_and_caching.sql first, '
          'then this file.';
  end if;
end
$$;

-- 1. Nullable: rows stored before this migration keep NULL and count as stale.
alter table public.salesai_analysis_results
  add column if not exists transcript_hash text,
  add column if not exists analysis_version text;

-- 2. The primary key is named explicitly because the lookup function names it
-- in "on conflict on constraint". It is also the only index the table needs:
-- every query and the cascade from salesai_sessions find claims by session_id.
create table if not exists public.salesai_analysis_claims (
  session_id uuid not null,
  claimant text not null,
  claimed_at timestamptz not null default now(),
  expires_at timestamptz not null,
  constraint salesai_analysis_claims_pkey primary key (session_id),
  constraint salesai_analysis_claims_session_id_fkey
    foreign key (session_id) references public.salesai_sessions (id)
    on delete cascade
);

-- Supabase grants every API role all privileges on new tables in public, so
-- without row-level security the anon key could read and take claims.
alter table public.salesai_analysis_claims enable row level security;

drop policy if exists "Service role can read claims"
  on public.salesai_analysis_claims;
create policy "Service role can read claims"
  on public.salesai_analysis_claims
  for select
  to service_role
  using (true);

drop policy if exists "Service role can create claims"
  on public.salesai_analysis_claims;
create policy "Service role can create claims"
  on public.salesai_analysis_claims
  for insert
  to service_role
  with check (true);

drop policy if exists "Service role can update claims"
  on public.salesai_analysis_claims;
create policy "Service role can update claims"
  on public.salesai_analysis_claims
  for update
  to service_role
  using (true)
  with check (true);

drop policy if exists "Service role can delete claims"
  on public.salesai_analysis_claims;
create policy "Service role can delete claims"
  on public.salesai_analysis_claims
  for delete
  to service_role
  using (true);

-- 3. The lookup reads the stored analysis. When it is not fresh, or p_force
-- is true, it also tries to take the claim: a new one, an expired one, or one
-- that p_claimant already holds (a renewal). Concurrent callers serialise on
-- the claim's primary key: a concurrent insert waits for the first one to
-- commit, then finds the conflicting row, locks it and evaluates the "where"
-- of "do update" against its latest version. Under READ COMMITTED exactly one
-- caller therefore gets claimed = true, for a missing claim as for an expired
-- one. claim_expires_at is the expiry of the claim that exists after the
-- call; it is NULL with claimed = false when the holder released it in the
-- meantime, and the caller should look up again.
create or replace function public.salesai_lookup_analysis(
  p_session_id uuid,
  p_transcript_hash text,
  p_analysis_version text,
  p_claimant text,
  p_lease_seconds double precision,
  p_force boolean default false
)
returns table (
  session_id uuid,
  analysis jsonb,
  model text,
  prompt_tokens integer,
  completion_tokens integer,
  total_tokens integer,
  transcript_hash text,
  analysis_version text,
  created_at timestamptz,
  updated_at timestamptz,
  age_seconds double precision,
  fresh boolean,
  claimed boolean,
  claim_expires_at timestamptz
)
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
  stored public.salesai_analysis_results%rowtype;
  is_fresh boolean;
  is_claimed boolean := false;
  lease_end timestamptz;
  -- One reading of the clock for the whole call, so that the new lease and
  -- the expiry test agree. now() would be the start of the caller's
  -- transaction, which a direct connection may have opened long before.
  call_time timestamptz := pg_catalog.clock_timestamp();
begin
  if p_session_id is null then
    raise exception 'invalid session id: expected a uuid, got NULL'
      using errcode = '22023';
  end if;
  if p_claimant is null or p_claimant = '' then
    raise exception 'invalid claimant %: expected a non-empty text that '
      'names the caller', pg_catalog.quote_nullable(p_claimant)
      using errcode = '22023';
  end if;
  -- NaN and infinity compare greater than any number, so the upper bound
  -- rejects them too. A lease of more than a year is a unit mistake.
  if p_lease_seconds is null
     or not (p_lease_seconds > 0 and p_lease_seconds <= 31536000) then
    raise exception 'invalid lease of % seconds: expected a number greater '
      'than 0 and at most 31536000 (one year)',
      coalesce(p_lease_seconds::text, 'NULL')
      using errcode = '22023';
  end if;
  if p_force is null then
    raise exception 'invalid p_force NULL: expected true or false'
      using errcode = '22023';
  end if;

  select *
  into stored
  from public.salesai_analysis_results as result
  where result.session_id = p_session_id;

  -- A NULL fingerprint, stored or given, makes the comparison NULL: such an
  -- analysis is never fresh.
  is_fresh := coalesce(
    stored.transcript_hash = p_transcript_hash
      and stored.analysis_version = p_analysis_version,
    false
  );

  if not is_fresh or p_force then
    -- An unknown session fails here with SQLSTATE 23503 (the foreign key).
    insert into public.salesai_analysis_claims as claim
      (session_id, claimant, claimed_at, expires_at)
    values (
      p_session_id,
      p_claimant,
      call_time,
      call_time + pg_catalog.make_interval(secs => p_lease_seconds)
    )
    on conflict on constraint salesai_analysis_claims_pkey do update
      set claimant = excluded.claimant,
          -- A renewal keeps the time the claimant first took the claim.
          claimed_at = case
            when claim.claimant = excluded.claimant then claim.claimed_at
            else excluded.claimed_at
          end,
          expires_at = excluded.expires_at
      where claim.expires_at <= call_time
         or claim.claimant = excluded.claimant
    returning claim.expires_at into lease_end;
    is_claimed := found;
  end if;

  if is_claimed and not p_force then
    -- A worker that saved between the read above and the insert has
    -- released its claim too, so the insert met no conflict. Read again,
    -- now that this statement's snapshot includes that save, so that its
    -- analysis is not computed a second time.
    select *
    into stored
    from public.salesai_analysis_results as result
    where result.session_id = p_session_id;

    is_fresh := coalesce(
      stored.transcript_hash = p_transcript_hash
        and stored.analysis_version = p_analysis_version,
      false
    );

    if is_fresh then
      delete from public.salesai_analysis_claims as claim
      where claim.session_id = p_session_id
        and claim.claimant = p_claimant;
      is_claimed := false;
    end if;
  end if;

  if not is_claimed then
    -- Another worker's claim, if any: a waiter learns how long it may last.
    select claim.expires_at
    into lease_end
    from public.salesai_analysis_claims as claim
    where claim.session_id = p_session_id;
  end if;

  return query select
    stored.session_id,
    stored.analysis,
    stored.model,
    stored.prompt_tokens,
    stored.completion_tokens,
    stored.total_tokens,
    stored.transcript_hash,
    stored.analysis_version,
    stored.created_at,
    stored.updated_at,
    extract(epoch from call_time - stored.updated_at)::double precision,
    is_fresh,
    is_claimed,
    lease_end;
end;
$$;

-- The save upserts the analysis and releases the claimant's claim in one
-- transaction, so a waiter never sees the claim gone before the analysis.
-- It writes even when the claim has expired or another worker holds it: the
-- analysis is paid for and valid for its fingerprints. A NULL p_claimant
-- releases nothing, for a caller that saves without having claimed.
create or replace function public.salesai_save_analysis(
  p_session_id uuid,
  p_analysis jsonb,
  p_model text,
  p_prompt_tokens integer,
  p_completion_tokens integer,
  p_total_tokens integer,
  p_transcript_hash text,
  p_analysis_version text,
  p_claimant text
)
returns setof public.salesai_analysis_results
language plpgsql
volatile
security invoker
set search_path = ''
as $$
begin
  -- An unknown session fails here with SQLSTATE 23503 (the foreign key).
  return query
  insert into public.salesai_analysis_results as result (
    session_id, analysis, model, prompt_tokens, completion_tokens,
    total_tokens, transcript_hash, analysis_version
  )
  values (
    p_session_id, p_analysis, p_model, p_prompt_tokens, p_completion_tokens,
    p_total_tokens, p_transcript_hash, p_analysis_version
  )
  on conflict on constraint salesai_analysis_results_session_id_key do update
    set analysis = excluded.analysis,
        model = excluded.model,
        prompt_tokens = excluded.prompt_tokens,
        completion_tokens = excluded.completion_tokens,
        total_tokens = excluded.total_tokens,
        transcript_hash = excluded.transcript_hash,
        analysis_version = excluded.analysis_version,
        updated_at = pg_catalog.now()
  returning result.*;

  delete from public.salesai_analysis_claims as claim
  where claim.session_id = p_session_id
    and claim.claimant = p_claimant;
end;
$$;

-- Supabase's default privileges grant EXECUTE on every new function in public
-- to anon, and PostgreSQL grants it to PUBLIC: both are revoked after the
-- create. "create or replace" keeps these privileges on a later run.
revoke execute on function public.salesai_lookup_analysis(
  uuid, text, text, text, double precision, boolean
) from public, anon;
grant execute on function public.salesai_lookup_analysis(
  uuid, text, text, text, double precision, boolean
) to authenticated, service_role;

revoke execute on function public.salesai_save_analysis(
  uuid, jsonb, text, integer, integer, integer, text, text, text
) from public, anon;
grant execute on function public.salesai_save_analysis(
  uuid, jsonb, text, integer, integer, integer, text, text, text
) to authenticated, service_role;

-- 4.
comment on column public.salesai_analysis_results.transcript_hash is
  'SHA-256 of the normalised transcript the analysis was made from; NULL for '
  'analyses stored before migration 002, which count as stale.';
comment on column public.salesai_analysis_results.analysis_version is
  'Model, prompt and output schema of the analysis, as <model>:<digest>; '
  'NULL for analyses stored before migration 002, which count as stale.';
comment on table public.salesai_analysis_claims is
  'Which worker is computing the analysis of a session, until when: a lease '
  'that another worker may take over once it expires.';
comment on column public.salesai_analysis_claims.claimant is
  'The worker that holds the claim, as the library names it (host, process '
  'and a random part).';
comment on column public.salesai_analysis_claims.expires_at is
  'End of the lease; after it, the next lookup may take the claim over.';
comment on function public.salesai_lookup_analysis(
  uuid, text, text, text, double precision, boolean
) is
  'Returns the stored analysis of a session with whether it is fresh, and '
  'takes the compute claim when it is not.';
comment on function public.salesai_save_analysis(
  uuid, jsonb, text, integer, integer, integer, text, text, text
) is
  'Upserts the analysis of a session and releases the caller''s claim.';

commit;
