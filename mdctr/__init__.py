"""mdctr: multi-domain CTR and cross-domain transfer on TorchRec.

Packages, in import order (each imports only the ones before it):
``mdctr.domains`` (data) <- ``mdctr.platform`` (backbone) <- ``mdctr.adapters`` (MLoRA)
<- ``mdctr.orchestration`` (stages, cadence, tuning) <- ``mdctr.cli``.
"""

__version__ = "0.1.0"
