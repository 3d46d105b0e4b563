"""A LangGraph checkpointer on its own Redis Functions library (pyhistory_checkpoint).

Needs the ``checkpoint`` extra (``pip install "pyhistory[checkpoint]"``, which brings
``langgraph-checkpoint``). ``import pyhistory`` never imports this package.

    from pyhistory.checkpoint import RedisSaver

    saver = RedisSaver("redis://localhost:6379/0", ttl=86400)
    graph = builder.compile(checkpointer=saver)
"""

from pyhistory.checkpoint._calls import LIBRARY, acl_rule
from pyhistory.checkpoint.saver import (
    RedisSaver,
    aload_checkpoint_functions,
    load_checkpoint_functions,
)

__all__ = [
    "LIBRARY",
    "RedisSaver",
    "acl_rule",
    "aload_checkpoint_functions",
    "load_checkpoint_functions",
]
