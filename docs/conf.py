"""Sphinx configuration: build with ``sphinx-build -W --keep-going -b html docs docs/_build/html``.

``pip install -r docs/requirements.txt`` is all the build needs, and it needs
no network: autodoc imports the package from this checkout, and intersphinx
reads the Python and Celery inventories committed under ``docs/_inventories/``
(see the README there), so a missing network cannot turn into a warning, and
``-W`` into a failed build.
"""

import io
import os
import re
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(DOCS)
sys.path.insert(0, REPO)  # autodoc imports the package from this checkout

import celery_ctxthread  # noqa: E402

project = 'celery-ctxthread'
author = 'the celery-ctxthread authors'
copyright = '2026, ' + author
version = release = celery_ctxthread.__version__

extensions = ['sphinx.ext.autodoc', 'sphinx.ext.intersphinx']
exclude_patterns = ['_build', 'examples']
root_doc = master_doc = 'index'
pygments_style = 'sphinx'

autodoc_member_order = 'bysource'
autodoc_typehints = 'none'  # the stubs are for type checkers; the prose says it
add_module_names = False

html_theme = 'alabaster'
html_theme_options = {
    'description': "Celery's task context in the threads your tasks start",
    'fixed_sidebar': True,
}
html_static_path = []

# -- intersphinx --------------------------------------------------------------
# Local inventories only: the links point at the published docs, the objects
# they name are read from files in this repository (docs/_inventories/README).
INVENTORIES = os.path.join(DOCS, '_inventories')
intersphinx_mapping = {
    'python': ('https://docs.python.org/3/', os.path.join(INVENTORIES, 'python.inv')),
    'celery': ('https://docs.celeryq.dev/en/stable/', os.path.join(INVENTORIES, 'celery.inv')),
}

# -- :test:`name` ------------------------------------------------------------
# Names a test under tests/ (any subfolder) that produces what the page claims.  The build
# fails (-W) when no test of that name exists, so a renamed test cannot leave
# a page pointing at nothing.  A name in PENDING_TESTS is a test still to be
# written: it renders with "(to be written)" and must be taken out of the set
# once the test exists.
PENDING_TESTS = set()


def _test_files():
    """(path under tests/, text) of every test module, in tests/unit/, tests/integration/..."""
    tests = os.path.join(REPO, 'tests')
    for directory, subdirs, names in os.walk(tests):
        subdirs.sort()
        for name in sorted(names):
            if name.startswith('test_') and name.endswith('.py'):
                path = os.path.join(directory, name)
                with io.open(path, encoding='utf-8') as handle:
                    yield os.path.relpath(path, tests).replace(os.sep, '/'), handle.read()


def _where(test_name):
    pattern = re.compile(r'^\s*def %s\(' % re.escape(test_name), re.M)
    for name, text in _test_files():
        if pattern.search(text):
            return name
    return None


def test_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    from docutils import nodes

    test_name = text.strip()
    where = _where(test_name)
    if test_name in PENDING_TESTS:
        if where is not None:
            message = inliner.reporter.warning(
                'test %r exists now: remove it from PENDING_TESTS in conf.py' % test_name,
                line=lineno,
            )
            return [nodes.literal(rawtext, test_name)], [message]
        return [nodes.literal(rawtext, test_name), nodes.Text(' (to be written)')], []
    if where is None:
        message = inliner.reporter.warning('no test named %r under tests/' % test_name, line=lineno)
        return [nodes.literal(rawtext, test_name)], [message]
    return [nodes.literal(rawtext, 'tests/%s::%s' % (where, test_name))], []


def setup(app):
    app.add_role('test', test_role)
    # Celery documents its settings and signals as these object types:
    # :setting:`result_extended` and :signal:`task_postrun` resolve through
    # the Celery inventory.
    app.add_crossref_type('setting', 'setting', indextemplate='pair: %s; setting')
    app.add_crossref_type('signal', 'signal', indextemplate='pair: %s; signal')
