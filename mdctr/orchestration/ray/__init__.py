"""Running mdctr on Ray: a local head node (:mod:`.cluster`), job submission (:mod:`.submit`),
Ray Train (:mod:`.train`).

``import ray`` happens inside functions only, so importing these modules stays cheap.
"""
