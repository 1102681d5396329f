-- The salesai tables as they were before migration 001, for the migration tests.
--
-- Purpose: recreate the schema that databases deployed before migration 001
--   have, so the tests can load legacy rows into it and migrate them.
-- Objects touched: creates public.salesai_sessions and
--   public.salesai_analysis_results. Compared with setup.sql there is no
--   conversation_id column, no index on it, no unique constraint on
--   salesai_analysis_results.session_id (so a session can have several
--   analyses), no updated_at trigger, and created_at/updated_at of analysis
--   results are nullable (legacy rows can hold NULL there).
-- Re-runnable: no; it is only ever loaded into a fresh database.
-- Needs: auth.users, from salesai_cache/_local/supabase_bootstrap.sql.
-- Rollback: none; the tests drop the database.

begin;

create table public.salesai_sessions (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null,
  transcript jsonb not null default '[]'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint salesai_sessions_user_id_fkey
    foreign key (user_id) references auth.users (id) on delete cascade,
  constraint salesai_sessions_transcript_array_check
    check (jsonb_typeof(transcript) = 'array')
);

create index salesai_sessions_user_id_idx on public.salesai_sessions (user_id);

comment on table public.salesai_sessions is
  'Role-played sales conversations, one row per practice session.';
comment on column public.salesai_sessions.transcript is
  'The conversation as a JSON array of turns {"speaker": ..., "text": ...}.';

create table public.salesai_analysis_results (
  id uuid primary key default gen_random_uuid(),
  session_id uuid not null,
  analysis jsonb not null,
  model text not null,
  prompt_tokens integer not null default 0,
  completion_tokens integer not null default 0,
  total_tokens integer not null default 0,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  constraint salesai_analysis_results_session_id_fkey
    foreign key (session_id) references public.salesai_sessions (id)
    on delete cascade,
  constraint salesai_analysis_results_prompt_tokens_check
    check (prompt_tokens >= 0),
  constraint salesai_analysis_results_completion_tokens_check
    check (completion_tokens >= 0),
  constraint salesai_analysis_results_total_tokens_check
    check (total_tokens >= 0)
);

comment on table public.salesai_analysis_results is
  'Model analyses of sessions.';
comment on column public.salesai_analysis_results.analysis is
  'The analysis as a JSON object; readers validate it against their output model.';
comment on column public.salesai_analysis_results.model is
  'The model that produced the analysis, as its provider names it.';
comment on column public.salesai_analysis_results.total_tokens is
  'Tokens the provider counted for the call that produced the analysis; '
  'each cache hit saves as many.';

commit;
