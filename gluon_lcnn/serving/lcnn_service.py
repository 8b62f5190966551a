"""The MXNet Model Server handler module of a gluon-lcnn archive (``lcnn_service:handle``).

``python -m gluon_lcnn archive`` puts this file at the top of every .mar and the serving code
(``gluon_lcnn/serving/``) beside it as the package ``lcnn_serving``: the worker imports the
archive's own copy and needs no gluon_lcnn. Imported from a gluon_lcnn install instead, it
takes ``gluon_lcnn.serving``.
"""
try:
    from lcnn_serving.handler import handle   # inside an archive
except ModuleNotFoundError as err:
    if err.name != 'lcnn_serving':
        raise
    from gluon_lcnn.serving.handler import handle

__all__ = ['handle']
