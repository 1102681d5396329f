-- Local stand-in for what a Supabase project provides before any user SQL runs.
--
-- Purpose: lets sql/setup.sql, sql/policies.sql and the migrations run on a
--   plain PostgreSQL (the embedded server of the demo and the tests, or any
--   local server) exactly as they run on Supabase. Never paste this file into
--   a Supabase project: the project already has all of it, and more.
-- Objects touched:
--   roles anon, authenticated, service_role, authenticator (cluster-wide);
--   schema auth with table auth.users and functions auth.uid(), auth.role(),
--   auth.email(), auth.jwt(); usage grants on schemas public and auth;
--   default privileges in schema public for the role that runs this file.
-- What it emulates, as Supabase's own initial schema does:
--   * anon and authenticated are NOLOGIN NOINHERIT; service_role is NOLOGIN
--     NOINHERIT BYPASSRLS; authenticator (the role PostgREST logs in as) is
--     LOGIN NOINHERIT and a member of the three, so it can SET ROLE to them.
--   * The API roles get every privilege on tables, sequences and functions in
--     schema public, so row-level security is the only guard. A test that
--     passes here therefore fails for the same reason it would on Supabase.
--   * auth.uid(), auth.role() and auth.email() read the claim that PostgREST
--     puts in request.jwt.claim.<name> (older PostgREST) or in the JSON of
--     request.jwt.claims (PostgREST 9 and later); an empty setting is NULL.
-- Not emulated: the rest of the auth schema (sessions, identities, ...), the
--   extensions schema, storage, realtime, per-role statement timeouts.
-- Re-runnable: yes. Roles are created only when missing, functions are
--   replaced in place, grants are repeated without effect.
-- Rollback: none; drop the database. The roles stay in the cluster, which is
--   harmless: they own nothing.
-- Tested by tests/test_local_database.py and by every SQL test, which run it
--   on a fresh database (twice in a row in one test).

begin;

do $$
begin
  if not exists (select from pg_catalog.pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
end
$$;

-- Granting a membership again raises a notice, so grant only the missing
-- ones.
do $$
declare
  api_role text;
begin
  foreach api_role in array array['anon', 'authenticated', 'service_role'] loop
    if not exists (
      select
      from pg_catalog.pg_auth_members as m
      where m.roleid = api_role::regrole
        and m.member = 'authenticator'::regrole
    ) then
      execute format('grant %I to authenticator', api_role);
    end if;
  end loop;
end
$$;

create schema if not exists auth;

create table if not exists auth.users (
  id uuid primary key default gen_random_uuid(),
  email text,
  created_at timestamptz default now()
);

comment on table auth.users is
  'Local stand-in for Supabase''s auth.users: only the columns the tests use.';

create or replace function auth.jwt()
returns jsonb
language sql
stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

create or replace function auth.uid()
returns uuid
language sql
stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
  )::uuid
$$;

create or replace function auth.role()
returns text
language sql
stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'
  )::text
$$;

create or replace function auth.email()
returns text
language sql
stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.email', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email'
  )::text
$$;

grant usage on schema public to anon, authenticated, service_role;
grant usage on schema auth to anon, authenticated, service_role;

grant execute on function auth.jwt(), auth.uid(), auth.role(), auth.email()
  to anon, authenticated, service_role;

-- Objects that the role running this file creates later (setup.sql) get the
-- same privileges as on Supabase; objects that already exist get them now.
alter default privileges in schema public
  grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public
  grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public
  grant all on functions to anon, authenticated, service_role;

grant all on all tables in schema public to anon, authenticated, service_role;
grant all on all sequences in schema public to anon, authenticated, service_role;
grant all on all functions in schema public to anon, authenticated, service_role;

commit;
