-- Tables and functions of salesai-cache: sessions, their cached analyses,
-- the claims of analyses being computed and the cache's counters.
--
-- Purpose: creates the schema that the library reads and writes, in a new
--   database. It already includes every migration in migrations/, so a new
--   database needs this file and policies.sql, and no migration.
-- Objects touched:
--   public.salesai_sessions: one row per role-played conversation.
--   public.salesai_analysis_results: at most one cached analysis per session,
--   with the fingerprints transcript_hash and analysis_version that tell a
--   fresh analysis from a stale one.
--   public.salesai_analysis_claims: at most one claim per session, held by the
--   worker computing its analysis until a lease expires. Row-level security
--   is enabled here, with its four service_role policies (the same as
--   policies.sql creates), so that the table is never open to the API roles.
--   public.salesai_cache_stats: the counters that workers of the cache flush
--   (hits, misses, tokens saved), with row-level security and its policies
--   here too, and the functions public.salesai_cache_stats_summary(...) and
--   public.salesai_analysis_summary() that "salesai-cache stats" calls,
--   executable by service_role only.
--   Constraints salesai_sessions_transcript_array_check,
--   salesai_analysis_results_session_id_key, salesai_analysis_claims_pkey
--   and the token checks; indexes salesai_sessions_user_id_idx and
--   idx_salesai_sessions_conversation; function public.salesai_set_updated_at()
--   and its trigger on each table; the functions
--   public.salesai_lookup_analysis(...) and public.salesai_save_analysis(...)
--   that the library calls, executable by authenticated and service_role but
--   not by anon or PUBLIC; the comments on the tables, on their less obvious
--   columns and on the functions.
-- Needs: Supabase's auth.users (for user_id), its roles anon, authenticated
--   and service_role, and PostgreSQL 13 or later (for the built-in
--   gen_random_uuid()).
-- Re-runnable: yes. Running it again, or after migrations 001 to 003 on an
--   older database, changes nothing and raises nothing. Tables, columns and
--   indexes use "if not exists". Constraints and triggers are added in do
--   blocks that check pg_constraint and pg_trigger first, because PostgreSQL
--   has no "add constraint if not exists". Functions use "create or
--   replace", which keeps their privileges, and policies are dropped and
--   created again. It still takes an ACCESS EXCLUSIVE lock on the tables for
--   a moment (lock_timeout 5 s).
-- Older databases: run the files of migrations/ in order instead. Migration
--   001 removes duplicate analyses and fills NULL timestamps first; this file
--   would stop on them (SQLSTATE 23505 or 23502) and change nothing.
-- Rollback: none; drop the four tables (data lost: all sessions, analyses,
--   claims and counters) and the functions. To return an older database to an earlier
--   schema, use the _rollback.sql files of migrations/, newest first.
-- Next: policies.sql, which enables row-level security on the other tables.
-- Tested: on PostgreSQL 15 and 18, on an empty database, twice in a row, and
--   after the legacy schema plus migrations 001 to 003, whose catalog it
--   matches column for column (tests/test_sql_setup.py).

begin;

set local lock_timeout = '5s';

create table if not exists public.salesai_sessions (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null,
  transcript jsonb not null default '[]'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  -- Last, where migration 001 adds it to older tables.
  conversation_id text,
  constraint salesai_sessions_user_id_fkey
    foreign key (user_id) references auth.users (id) on delete cascade,
  constraint salesai_sessions_transcript_array_check
    check (jsonb_typeof(transcript) = 'array')
);

alter table public.salesai_sessions
  add column if not exists conversation_id text;

create index if not exists salesai_sessions_user_id_idx
  on public.salesai_sessions (user_id);

create index if not exists idx_salesai_sessions_conversation
  on public.salesai_sessions (conversation_id);

create table if not exists public.salesai_analysis_results (
  id uuid primary key default gen_random_uuid(),
  session_id uuid not null,
  analysis jsonb not null,
  model text not null,
  prompt_tokens integer not null default 0,
  completion_tokens integer not null default 0,
  total_tokens integer not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  -- Last, where migration 002 adds them to older tables.
  transcript_hash text,
  analysis_version text,
  constraint salesai_analysis_results_session_id_fkey
    foreign key (session_id) references public.salesai_sessions (id)
    on delete cascade,
  constraint salesai_analysis_results_prompt_tokens_check
    check (prompt_tokens >= 0),
  constraint salesai_analysis_results_completion_tokens_check
    check (completion_tokens >= 0),
  constraint salesai_analysis_results_total_tokens_check
    check (total_tokens >= 0),
  constraint salesai_analysis_results_session_id_key unique (session_id)
);

-- For a table created before these columns and constraints existed.
alter table public.salesai_analysis_results
  add column if not exists transcript_hash text,
  add column if not exists analysis_version text,
  alter column created_at set not null,
  alter column updated_at set not null;

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

-- An update that leaves updated_at unchanged gets the current time. An update
-- that sets it explicitly keeps its value.
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

comment on table public.salesai_sessions is
  'Role-played sales conversations, one row per practice session.';
comment on column public.salesai_sessions.transcript is
  'The conversation as a JSON array of turns {"speaker": ..., "text": ...}.';
comment on column public.salesai_sessions.conversation_id is
  'Identifier of the conversation in the app that recorded it, such as a '
  'call id; not unique. NULL when the app gave none.';

comment on table public.salesai_analysis_results is
  'Cached model analyses of sessions: at most one per session.';
comment on column public.salesai_analysis_results.session_id is
  'The session analysed. Unique: the cache upserts on it.';
comment on column public.salesai_analysis_results.analysis is
  'The analysis as a JSON object; readers validate it against their output model.';
comment on column public.salesai_analysis_results.model is
  'The model that produced the analysis, as its provider names it.';
comment on column public.salesai_analysis_results.total_tokens is
  'Tokens the provider counted for the call that produced the analysis; '
  'each cache hit saves as many.';
comment on column public.salesai_analysis_results.updated_at is
  'Set to the current time by a trigger on every update that does not set '
  'it; the most recent analysis wins a lookup by conversation id.';

comment on function public.salesai_set_updated_at() is
  'Trigger function: keeps updated_at current on update.';

-- Claims. The primary key is named explicitly because the lookup function
-- names it in "on conflict on constraint". It is also the only index the
-- table needs: every query and the cascade from salesai_sessions find claims
-- by session_id.
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

-- The lookup reads the stored analysis. When it is not fresh, or p_force
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

-- Cache counters (migration 003).
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

-- Supabase grants every API role all privileges on new tables in public, so
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

-- The sums that salesai-cache stats prints, as a function so that a direct
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
