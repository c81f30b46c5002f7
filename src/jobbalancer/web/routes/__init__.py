"""The pages: one module per page, each with a ``router``; all are included by
:func:`jobbalancer.web.install`."""
