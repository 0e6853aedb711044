"""Sampling G completions per prompt and scoring them: the `Rollout` type and its engines (`engine`: shared-prefix
sampler and HF generate; `multiturn` + `tools`: tool-calling trajectories; `vllm`: the optional vLLM engine),
the shared prefix maths (`prefix`), the rewards applied to completions (`scoring`) and some groups of several
rollouts taken as one (`groups`).

Next stop: `mmreason.train.grpo` turns scored rollouts into advantages and a policy update.
"""
