"""Operator e-mail through the facility's own SMTP server, usable by Prefect automations.

Prefect 3.9 has no SMTP notification block (prefect-email's `EmailServerCredentials` is not a
`NotificationBlock`, so an automation's "send a notification" action refuses it). This one is:
the server loads it through pollcat's `prefect.collections` entry point and calls `notify`,
so alerts go out even when every worker is down.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from enum import StrEnum

from prefect.blocks.abstract import NotificationBlock
from pydantic import Field, SecretStr

DOCS = "https://github.com/pollcat/pollcat#operate"


class SmtpSecurity(StrEnum):
    """How the connection to the SMTP server is protected."""

    STARTTLS = "starttls"
    SSL = "ssl"
    NONE = "none"


class OperatorEmail(NotificationBlock):
    """Sends Prefect automation alerts to the operators by e-mail.

    Give its name to `python -m deployments.bootstrap --notify pollcat-operator-email/NAME`;
    the automations bootstrap creates then e-mail `recipients` through `smtp_host`.
    """

    _block_type_name = "pollcat Operator E-mail"
    _block_type_slug = "pollcat-operator-email"
    _description = "E-mails pollcat's alerts to the operators through an SMTP server."
    _documentation_url = DOCS
    _code_example = """
```python
from pollcat.blocks import OperatorEmail

OperatorEmail(smtp_host="smtp.example.org", sender="pollcat@example.org",
              recipients=["data-ops@example.org"]).save("ops-mail")

mail = OperatorEmail.load("BLOCK_NAME")
mail.send("The body.", subject="a test from pollcat")
```"""

    smtp_host: str = Field(description="SMTP server host name.")
    smtp_port: int = Field(default=587, ge=1, le=65535, description="SMTP server port.")
    security: SmtpSecurity = Field(
        default=SmtpSecurity.STARTTLS,
        description="starttls (port 587), ssl (port 465) or none (a local relay).")
    username: str | None = Field(default=None, description="SMTP login, if the server needs one.")
    password: SecretStr | None = Field(default=None, description="SMTP password (stored "
                                       "encrypted, shown masked).")
    sender: str = Field(description="The From address.")
    recipients: list[str] = Field(min_length=1, description="Where the alerts go.")
    subject_prefix: str = Field(default="[pollcat] ",
                                description="Put before every subject, for mail filters.")
    timeout_seconds: float = Field(default=30.0, gt=0,
                                   description="Connect and send timeout, in seconds.")

    async def notify(self, body: str, subject: str | None = None) -> None:
        await asyncio.to_thread(self.send, body, subject)

    def send(self, body: str, subject: str | None = None) -> None:
        """Send one message (blocking)."""
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Subject"] = self.subject_prefix + (subject or "Prefect notification")
        msg.set_content(body)
        context = ssl.create_default_context()
        smtp_cls = smtplib.SMTP_SSL if self.security is SmtpSecurity.SSL else smtplib.SMTP
        kwargs = {"context": context} if self.security is SmtpSecurity.SSL else {}
        with smtp_cls(self.smtp_host, self.smtp_port, timeout=self.timeout_seconds,
                      **kwargs) as smtp:
            if self.security is SmtpSecurity.STARTTLS:
                smtp.starttls(context=context)
            if self.username:
                smtp.login(self.username,
                           self.password.get_secret_value() if self.password else "")
            smtp.send_message(msg)
