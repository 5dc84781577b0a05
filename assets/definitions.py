"""The Dagster code location: one asset graph per modality, asset checks, and the jobs CI and people run."""
from __future__ import annotations

import dagster as dg

from assets.data import build_data_assets

MODALITIES = ("image", "speech", "text")

_built = {m: build_data_assets(m) for m in MODALITIES}
ASSETS = [a for assets, _ in _built.values() for a in assets]
CHECKS = [c for _, checks in _built.values() for c in checks]

# Jobs select asset objects, never selection strings (shared/reference/ecosystem-notes.md §0).
JOBS = [
    dg.define_asset_job(f"{m}_pipeline", selection=dg.AssetSelection.assets(*_built[m][0]),
                        description=f"Everything for {m}: embedded data -> shards -> ...")
    for m in MODALITIES
] + [
    dg.define_asset_job("demo", selection=dg.AssetSelection.assets(*ASSETS),
                        description="The whole pipeline on the embedded default data with the tiny presets."),
]

defs = dg.Definitions(assets=ASSETS, asset_checks=CHECKS, jobs=JOBS)
