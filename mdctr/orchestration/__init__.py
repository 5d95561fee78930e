"""Stages as plain job entrypoints: the E-CDCTR tiers (TPM, CPM, A-CTR) with versions and
lineage (:mod:`.stages`), and the calendar replay (:mod:`.replay`)."""
