"""What a run leaves behind and how to look at it: the live `Run` state and its folder (`run`), the rollout store
(`store`), inspection helpers (`inspection`) and the HTML report (`report`); who may write a run folder (`lock`),
which run its files belong to (`folder`) and durable writes (`files`).
"""
