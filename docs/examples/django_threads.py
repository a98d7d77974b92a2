"""Django: a thread closes its database connection when its work is done."""

import functools

from celery import Celery
from django.db import close_old_connections, connections

import celery_ctxthread as cct

app = Celery('proj')


def closing_db(fn):
    """``fn``, closing this thread's connections when it returns or raises."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()  # the thread ends: whatever CONN_MAX_AGE says

    return run


def count_rows(table):
    with connections['default'].cursor() as cursor:
        cursor.execute('SELECT COUNT(*) FROM %s' % table)  # the table name is ours
        return cursor.fetchone()[0]


@app.task
def count_all(tables):
    counts = {}

    def count_into(table):
        counts[table] = count_rows(table)

    threads = [cct.TaskThread(target=closing_db(count_into), args=(table,)) for table in tables]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts


pool = cct.TaskThreadPoolExecutor(max_workers=4)


def count_rows_in_pool(table):
    try:
        return count_rows(table)
    finally:
        close_old_connections()  # a pool thread lives on: as Django does after a request


@app.task
def count_all_in_pool(tables):
    return list(pool.map(count_rows_in_pool, tables))
