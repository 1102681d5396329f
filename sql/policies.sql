-- Row-level security of salesai-cache's tables.
--
-- Purpose: decides who may read and write sessions, analyses and compute
--   claims and the cache's counters through Supabase's API (PostgREST), once
--   setup.sql (or every migration) has created the tables. It fails on a
--   database without public.salesai_analysis_claims or
--   public.salesai_cache_stats: apply migrations 002 and 003 first.
-- Objects touched: enables row-level security on public.salesai_sessions,
--   public.salesai_analysis_results, public.salesai_analysis_claims and
--   public.salesai_cache_stats, and
--   (re)creates these policies, one per role and operation:
--   public.salesai_sessions
--     "Users can read their own sessions"           select  authenticated
--     "Users can create their own sessions"         insert  authenticated
--     "Users can update their own sessions"         update  authenticated
--     "Users can delete their own sessions"         delete  authenticated
--     "Service role can read all sessions"          select  service_role
--     "Service role can create sessions"            insert  service_role
--     "Service role can update sessions"            update  service_role
--     "Service role can delete sessions"            delete  service_role
--   public.salesai_analysis_results
--     "Users can read analyses of their own sessions" select authenticated
--     "Service role can read all analyses"          select  service_role
--     "Service role can create analyses"            insert  service_role
--     "Service role can update analyses"            update  service_role
--     "Service role can delete analyses"            delete  service_role
--   public.salesai_analysis_claims (migration 002 and setup.sql create the
--   same policies, so that the table is never open to the API roles)
--     "Service role can read claims"                select  service_role
--     "Service role can create claims"              insert  service_role
--     "Service role can update claims"              update  service_role
--     "Service role can delete claims"              delete  service_role
--   public.salesai_cache_stats (migration 003 and setup.sql create the same
--   policies)
--     "Users can read their own cache stats"        select  authenticated
--     "Users can record their own cache stats"      insert  authenticated
--     "Service role can read cache stats"           select  service_role
--     "Service role can record cache stats"         insert  service_role
--     "Service role can update cache stats"         update  service_role
--     "Service role can delete cache stats"         delete  service_role
-- Who can do what:
--   * anon (requests with the anon key and no signed-in user) matches no
--     policy, so it reads no row and writes none: its selects return nothing,
--     its updates and deletes change nothing, its inserts fail with SQLSTATE
--     42501 (new row violates row-level security policy).
--   * authenticated (a signed-in user) reads, creates, updates and deletes
--     only sessions whose user_id is their own, and reads the analyses of
--     those sessions. Users write no analyses: the library writes them with
--     the service-role key, from a server, so a user cannot plant a fake
--     analysis or erase the record of tokens spent. Their inserts of analyses
--     fail with 42501; updates and deletes change nothing. Deleting a session
--     still removes its analysis: the cascade of the foreign key is not
--     subject to row-level security.
--   * anon and authenticated match no policy of the claims table: they see
--     no claim, and their attempts to take one (through
--     salesai_lookup_analysis) fail with 42501. anon may not even execute the
--     functions; that is a grant of migration 002, not a policy.
--   * authenticated may record cache counters under their own user_id (the
--     default, auth.uid()) and read those rows, for a cache that runs with a
--     user's key. anon can do nothing with counters. Only the service role
--     may execute the summary functions of migration 003 (a grant, not a
--     policy). A user can thus add made-up counters under their own id: the
--     summary sums them with the rest.
--   * service_role (the library, with the service-role key) does everything.
--     On Supabase it has BYPASSRLS, so its policies are never consulted
--     there. They are written anyway, one per operation, so that the library
--     still works where the role lacks BYPASSRLS (some self-hosted setups,
--     or a role created to stand in for it that is granted service_role):
--     the cache's upserts (insert ... on conflict do update), of analyses
--     and of claims, need select, insert and update, and releasing a claim
--     or cleaning up needs delete.
-- Grants: none granted, none revoked. Supabase already grants the API roles
--   every privilege on tables in public; row-level security is the guard.
-- auth.uid() is written (select auth.uid()) so PostgreSQL evaluates it once
--   per statement rather than once per row.
-- Re-runnable: yes. Each policy is dropped if it exists and created again,
--   inside one transaction, so no request ever sees the table without it.
-- Rollback: none as a file. Dropping the policies without disabling
--   row-level security locks users and anon out; "alter table ... disable row
--   level security" instead opens the table to the anon key. Keep it on.
-- Tested: on PostgreSQL 15 and 18, as each role the way PostgREST runs a
--   request (set local role, request.jwt.claims), and twice in a row
--   (tests/test_sql_policies.py).

begin;

alter table public.salesai_sessions enable row level security;
alter table public.salesai_analysis_results enable row level security;
alter table public.salesai_analysis_claims enable row level security;
alter table public.salesai_cache_stats enable row level security;

-- Sessions: each user their own.

drop policy if exists "Users can read their own sessions"
  on public.salesai_sessions;
create policy "Users can read their own sessions"
  on public.salesai_sessions
  for select
  to authenticated
  using (user_id = (select auth.uid()));

drop policy if exists "Users can create their own sessions"
  on public.salesai_sessions;
create policy "Users can create their own sessions"
  on public.salesai_sessions
  for insert
  to authenticated
  with check (user_id = (select auth.uid()));

drop policy if exists "Users can update their own sessions"
  on public.salesai_sessions;
create policy "Users can update their own sessions"
  on public.salesai_sessions
  for update
  to authenticated
  using (user_id = (select auth.uid()))
  with check (user_id = (select auth.uid()));

drop policy if exists "Users can delete their own sessions"
  on public.salesai_sessions;
create policy "Users can delete their own sessions"
  on public.salesai_sessions
  for delete
  to authenticated
  using (user_id = (select auth.uid()));

-- Sessions: the library's server-side key.

drop policy if exists "Service role can read all sessions"
  on public.salesai_sessions;
create policy "Service role can read all sessions"
  on public.salesai_sessions
  for select
  to service_role
  using (true);

drop policy if exists "Service role can create sessions"
  on public.salesai_sessions;
create policy "Service role can create sessions"
  on public.salesai_sessions
  for insert
  to service_role
  with check (true);

drop policy if exists "Service role can update sessions"
  on public.salesai_sessions;
create policy "Service role can update sessions"
  on public.salesai_sessions
  for update
  to service_role
  using (true)
  with check (true);

drop policy if exists "Service role can delete sessions"
  on public.salesai_sessions;
create policy "Service role can delete sessions"
  on public.salesai_sessions
  for delete
  to service_role
  using (true);

-- Analyses: users read those of their own sessions and write none.

drop policy if exists "Users can read analyses of their own sessions"
  on public.salesai_analysis_results;
create policy "Users can read analyses of their own sessions"
  on public.salesai_analysis_results
  for select
  to authenticated
  using (
    exists (
      select
      from public.salesai_sessions as parent
      where parent.id = salesai_analysis_results.session_id
        and parent.user_id = (select auth.uid())
    )
  );

-- Analyses: the library's server-side key.

drop policy if exists "Service role can read all analyses"
  on public.salesai_analysis_results;
create policy "Service role can read all analyses"
  on public.salesai_analysis_results
  for select
  to service_role
  using (true);

drop policy if exists "Service role can create analyses"
  on public.salesai_analysis_results;
create policy "Service role can create analyses"
  on public.salesai_analysis_results
  for insert
  to service_role
  with check (true);

drop policy if exists "Service role can update analyses"
  on public.salesai_analysis_results;
create policy "Service role can update analyses"
  on public.salesai_analysis_results
  for update
  to service_role
  using (true)
  with check (true);

drop policy if exists "Service role can delete analyses"
  on public.salesai_analysis_results;
create policy "Service role can delete analyses"
  on public.salesai_analysis_results
  for delete
  to service_role
  using (true);

-- Claims: only the library's server-side key takes and releases them.

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

-- Cache counters: users record and read their own; the server-side key all.

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

commit;
