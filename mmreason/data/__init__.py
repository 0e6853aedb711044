"""Records to samples: reading data files (`records`), the seeded training mixture (`stream`), the `Sample`
contract a task produces (`sample`), and the seeded synthetic dataset makers (`synthetic`).

Next stop of a sample: `mmreason.rollout` (GRPO) or `mmreason.train.sft` (cold start).
"""
