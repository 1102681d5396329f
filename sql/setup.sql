-- Tables of salesai-cache: sessions and their cached analyses.
--
-- Purpose: creates the schema that the library reads and writes, in a new
--   database. It already includes every migration in migrations/, so a new
--   database needs this file and policies.sql, and no migration.
-- Objects touched:
--   public.salesai_sessions: one row per role-played conversation.
--   public.salesai_analysis_results: at most one cached analysis per session.
--   Constraints salesai_sessions_transcript_array_check,
--   salesai_analysis_results_session_id_key and the token checks; indexes
--   salesai_sessions_user_id_idx and idx_salesai_sessions_conversation;
--   function public.salesai_set_updated_at() and its trigger on each table;
--   the comments on the tables and on their less obvious columns.
-- Needs: Supabase's auth.users (for user_id) and PostgreSQL 13 or later (for
--   the built-in gen_random_uuid()).
-- Re-runnable: yes. Running it again, or after migration 001 on an older
--   database, changes nothing and raises nothing: tables, columns and indexes
--   use "if not exists", constraints and triggers are added in do blocks that
--   check pg_constraint and pg_trigger first, since PostgreSQL has no
--   "add constraint if not exists". It still takes an ACCESS EXCLUSIVE lock on
--   both tables for a moment (lock_timeout 5 s).
-- Older databases: run migrations/001_add_conversation_id_and_caching.sql
--   instead. It removes duplicate analyses and fills NULL timestamps first;
--   this file would stop on them (SQLSTATE 23505 or 23502) and change nothing.
-- Rollback: none; drop the two tables (data lost: all sessions and analyses).
--   To return an older database to its state before migration 001, use
--   migrations/001_add_conversation_id_and_caching_rollback.sql.
-- Next: policies.sql, which enables row-level security.
-- Tested: on PostgreSQL 15 and 18, on an empty database, twice in a row, and
--   after the legacy schema plus migration 001, whose catalog it matches
--   column for column (tests/test_sql_setup.py).

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

-- For a table created before these constraints existed.
alter table public.salesai_analysis_results
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

commit;
