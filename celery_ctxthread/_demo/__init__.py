"""``python -m celery_ctxthread demo`` (private: no API, no stubs).

- ``_cli``: the options, the checks, the worker and the run loop (the client);
- ``_display``: the bars and the summary the client prints;
- ``_app``: the app factory and the embedded broker and backend (client and worker);
- ``_tasks``: the module the worker imports (``-A``): its app and the task;
- ``_process``: subprocesses stopped within bounds, shared with the test suite.

Only ``_tasks`` does anything at import (it builds the worker's app), and only
the worker imports it.
"""
