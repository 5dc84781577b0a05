"""Turning pipeline outputs into Dagster metadata a person wants to see."""
from __future__ import annotations

import base64
from typing import Any

import dagster as dg


def png_markdown(png: bytes, alt: str = "preview") -> dg.MetadataValue:
    """Embed a PNG in markdown metadata (keep it small: metadata lives in the event log)."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def table(rows: list[dict[str, Any]]) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.md("_none_")
    columns = list(rows[0])
    schema = dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns])
    return dg.MetadataValue.table([dg.TableRecord({c: str(r.get(c, "")) for c in columns}) for r in rows], schema=schema)
