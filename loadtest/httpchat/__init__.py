"""A real chat backend under load: ``make loadtest-http`` (``python loadtest/httpchat/run.py``).

- ``model``: an offline fake chat model with a configurable latency and token streaming;
- ``backends``: the switchable history backends (pyhistory, langchain_community as its docs use
  it, the hand-written pipeline, an in-process dict as the floor);
- ``app``: the asyncio HTTP chat service (FastAPI, run by uvicorn with several workers);
- ``locustfile``: locust ``HttpUser``s holding multi-turn conversations with think time;
- ``run``: starts Redis, uvicorn and locust, runs every backend side by side, then the faults
  (the Redis server restarted, then paused, mid-run); ``report``: the summary and the plots.
"""
