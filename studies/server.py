"""Is the tracking store's server there? Checked before Ray starts (studies/preflight.py), so that a study
whose MLflow server (or database server) cannot be reached is refused at once, naming it, instead of after
Ray started and MLflow's client spent minutes retrying. An outage after the start is waited out by those
retries, and one that outlasts them stops the study resumably (studies/faults.py). Standard library only."""
from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT_S = 10.0
DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}  # default ports of the database URIs MLflow takes


def shown(uri: str) -> str:
    """`uri` without a password, for messages."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def unreachable(uri: str, timeout: float = TIMEOUT_S) -> str | None:
    """Why the server behind `uri` cannot be reached, or None (also for stores that are files). An HTTP
    server is asked for MLflow's /health through the proxies MLflow's client would use: any answer, even an
    error status or a certificate this check cannot verify, shows it is there. A database server is reached
    on its port."""
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    try:
        if scheme in ("http", "https"):
            netloc = parts.netloc.rsplit("@", 1)[-1]  # credentials go in headers, not in the probe's URL
            probe = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
            with urllib.request.urlopen(probe, timeout=timeout):
                return None
        if scheme in DB_PORTS and parts.hostname:
            with socket.create_connection((parts.hostname, parts.port or DB_PORTS[scheme]), timeout=timeout):
                return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as err:
        if isinstance(err.reason, ssl.SSLError):
            return None
        return str(err.reason)
    except (OSError, ValueError) as err:
        return str(err) or type(err).__name__
    return None
