"""Who may read a subject's records: principals, credentials, Cedar policies, tickets, decisions.

- :mod:`~domicile.access.principals`: the principals file (token hashes only);
- :mod:`~domicile.access.tokens`: bearer tokens and signed JWTs to a :class:`Principal`;
- :mod:`~domicile.access.policy`: ``policies.cedar`` beside the map, validated, evaluated;
- :mod:`~domicile.access.tickets`: time-limited exception tickets held server-side;
- :mod:`~domicile.access.decisions`: every decision appended to the audit log;
- :mod:`~domicile.access.subjects`: where a subject's data lives, and reading it at home;
- :mod:`~domicile.access.gateway`: all of it behind one object the service and CLI use;
- :mod:`~domicile.access.cli`: ``domicile principals`` and ``domicile access``.

Importing this package is cheap (the command line does): nothing here is
imported until used.
"""

from __future__ import annotations
