"""The real-data study behind docs/RESULTS.md (``make results``, ``tools/results.py``).

``plan``: what is trained and compressed, as data; ``runner``: runs the jobs two at a time,
resumably; ``measure``: MACs and latency of every finished model against its dense twin;
``report``: docs/RESULTS.md and one accuracy-vs-speed-up plot per family.
"""
