"""TopCAT's "download ready" email (`sendDownloadReadyEmail`, wire reference §2.7).

Every mail is recorded in `fac.mail_outbox` (so tests and `/sim/mail` can see it) and, when the
scenario configures `topcat.mail.smtp.host`, also handed to that SMTP server with `smtplib`.

Choices (inferred):
- the email address check is a plain `local@domain.tld` pattern (TopCAT uses a validator of
  that strength);
- `${size}` is Java's SI `humanReadableByteCount` form, e.g. `1.1 MB`, `512 B`;
- templates are rendered with Apache Commons `StringSubstitutor` semantics
  (`simfacility.substitutor`): a placeholder with no value (e.g. `${customValue}` outside the
  customValue path) is left as written, `${x:-default}`, `$${x}` escapes, recursive
  substitution of values, and `SubstitutionCycle` on a cycle;
- an SMTP failure is logged and recorded on the outbox entry (`smtp_error`), never raised:
  TopCAT logs mail errors and carries on, and `isEmailSent` stays true.
"""

from __future__ import annotations

import logging
import re
import smtplib
import time
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from simfacility.substitutor import substitute

if TYPE_CHECKING:
    from simfacility.facility import SimFacility

log = logging.getLogger("simfacility.topcat.mail")

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
SMTP_TIMEOUT_S = 10.0


def valid_email(address: str | None) -> bool:
    return bool(address) and _EMAIL.match(address or "") is not None


def human_size(n: int) -> str:
    """Java's `humanReadableByteCount(bytes, si=true)`."""
    if n < 1000:
        return f"{n} B"
    units = "kMGTPE"
    exp = 0
    value = float(n)
    while value >= 1000 and exp < len(units):
        value /= 1000
        exp += 1
    return f"{value:.1f} {units[exp - 1]}B"


def render(template: str, values: dict[str, str]) -> str:
    """`StringSubstitutor.replace`; raises `SubstitutionCycle` as TopCAT would throw."""
    return substitute(template, dict(values))


def check_renders(fac: SimFacility, values: dict[str, Any], transport: str) -> None:
    """Render subject and body without sending: raises `SubstitutionCycle` as TopCAT would
    (so a caller can fail before it changes anything)."""
    cfg = fac.config.topcat
    str_values = {k: str(v) for k, v in values.items() if v is not None}
    render(cfg.mail_subject, str_values)
    render(cfg.mail_bodies.get(transport, ""), str_values)


def send_download_ready(fac: SimFacility, values: dict[str, Any], to: str | None,
                        download_id: int, transport: str) -> dict[str, Any] | None:
    """Send (record, and deliver over SMTP if configured) one "download ready" mail.

    Returns the outbox entry, or None when mail is disabled or the address is invalid.
    """
    cfg = fac.config.topcat
    if not cfg.mail_enable or not valid_email(to):
        return None
    str_values = {k: str(v) for k, v in values.items() if v is not None}
    template = cfg.mail_bodies.get(transport,
                                   f"mail.body.{transport} not set in topcat.properties")
    entry: dict[str, Any] = {
        "to": to, "from": cfg.mail_from, "subject": render(cfg.mail_subject, str_values),
        "body": render(template, str_values), "download_id": download_id,
        "transport": transport, "sent_at": time.time(),
    }
    fac.mail_outbox.append(entry)
    if cfg.smtp_host:
        entry["smtp_error"] = _deliver(cfg.smtp_host, cfg.smtp_port, entry)
    return entry


def _deliver(host: str, port: int, entry: dict[str, Any]) -> str | None:
    msg = EmailMessage()
    msg["From"] = entry["from"]
    msg["To"] = entry["to"]
    msg["Subject"] = entry["subject"]
    msg.set_content(entry["body"])
    try:
        with smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT_S) as smtp:
            smtp.send_message(msg)
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("could not send mail for download %s: %s", entry["download_id"], exc)
        return str(exc)
    return None
