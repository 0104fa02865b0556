"""The quality loop at run time: the judge job beside (or apart from) a live controller.

It sits above the controller: :mod:`~sprout.quality_loop.job` runs judge batches at
low-carbon hours (:mod:`~sprout.quality_loop.evaluate` answers and judges one request,
:mod:`~sprout.quality_loop.run` reports a run), and :mod:`~sprout.quality_loop.live` applies
the refreshed estimates to a controller. The pure parts it runs on (judge protocol, quality
estimates, timing rule, sampler) are in :mod:`sprout.judge`; :func:`sprout.factory.build_judge_job`
wires a job from settings.
"""
