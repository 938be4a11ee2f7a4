"""The leader loops that keep the queue healthy beside the claim path: promotion of due
jobs (:mod:`.promoter`), recovery of lost workers' jobs (:mod:`.recovery`), retention of
finished jobs (:mod:`.retention`) and schedules (:mod:`.schedules`), each a round run by
:func:`.rounds.run_rounds` or its own timer, safe to run on every worker at once.
"""
