"""The web page and its JSON API, served beside /healthz and /metrics.

- app: routes a request (page, login, retry forms, /api/) to its answer; the only part with I/O
- auth: the token, the session cookie derived from it, the Host and Origin checks
- limiter: failed logins per client address
- page: the HTML, rendered on the server from the `status` document, with inline CSS
"""

from mh_watchd.web.app import WebApp

__all__ = ["WebApp"]
