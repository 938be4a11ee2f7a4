"""The leader loops that keep the queue healthy beside the claim path: promotion of due
jobs (:mod:`.promoter`), recovery of lost workers' jobs (:mod:`.recovery`), retention of
finished jobs (:mod:`.retention`), schedules (:mod:`.schedules`) and the metrics
leader's sampling (:mod:`.sampler`), each a round run by :func:`.rounds.run_rounds` (every
interval) or :func:`.rounds.run_paced_rounds` (each round says when the next one is),
safe to run on every worker at once.
"""
