"""The operator console and HTTP control API (``selfheal web``, DESIGN section 6, seed user story 3).

Starlette on uvicorn, over the same `celery_selfheal.api` functions as the CLI. Modules: `auth`
(tokens, session cookie, CSRF), `app` (the route table and middleware), `routes_api` (JSON),
`routes_pages` (HTML), `sse` (one store poller per followed job, fanned out to its SSE clients),
`files` (attempt log tail, artifacts confined to the job's folder), `server` (``selfheal web``).
"""
