"""mailer: an asyncio email deliverability and nurture-sending engine."""

__version__ = "0.1.0"
