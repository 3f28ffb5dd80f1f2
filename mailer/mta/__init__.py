"""Readers for the bounce layouts of particular MTA families that do not follow RFC 3464."""
