"""``pgwake bench``: workloads that measure what users care about, each in databases of
its own so that it never touches real jobs.

Modules: ``command`` (the CLI command), ``common`` (databases, worker processes,
percentiles, medians), ``throughput`` (drain, scale, ceiling), ``latency``,
``fairness``, ``enqueue``, ``claims`` (claim cost, retention, claims beside finished
history), ``recovery``, ``summary`` (the targets), ``handlers`` (the job kinds only the
benchmarks use).
"""
